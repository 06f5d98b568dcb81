-- recipes/bench_rnnt.lua: the transducer-loss benchmark of fast_rnnt scaled to this CPU (issue 4):
-- tern's full RNN-T loss step and pruned RNN-T step side by side with torchaudio's rnnt_loss and a
-- pure-PyTorch reference of the pruned step (recipes/bench_rnnt_torch.py).
--
--   luajit recipes/bench_rnnt.lua [--threads=1,2] [--repeat=7] [--warmup=2] [--peer=torch|none]
--                                 [--cases=8x200x60,4x100x30] [--steps=full,full_ow,pruned]
--                                 [--s_range=5]
--
-- Setup (fast_rnnt's benchmark): encoder output enc (B, T, 512) and decoder output dec (B, S+1, 512),
-- both leaves with requires_grad, vocabulary V = 500, blank 0, f32, every utterance full length (T
-- frames, S symbols, symbols uniform in 1..V-1), reduction "sum". The joiner is add, tanh,
-- Linear(512, 500): tn.nn.Joiner(512, 512, 512, 500, {simple_proj = true}) called on the raw
-- (unprojected) enc/dec, i.e. output_linear(tanh(enc + dec)), exactly the peer's
-- joiner(torch.tanh(enc + dec)); its simple_am_proj / simple_lm_proj = Linear(512, 500) are the
-- peer's am_proj / lm_proj (icefall's simple projections).
-- Steps (cases are BxTxS):
--   full     logits = joiner(enc[:, :, None], dec[:, None]) (B, T, S+1, V); tn.rnnt.loss{logits,
--            symbols, termination_symbol = 0, reduction = "sum"}; loss:backward()
--   full_ow  the same with overwrite_logits = true (the logits' gradient is written into the logits)
--   pruned   am, lm = joiner:simple(enc, dec); simple, px_grad, py_grad = tn.rnnt.loss_simple{...,
--            return_grad = true}; ranges = get_prune_ranges{s_range}; enc_p, dec_p =
--            do_pruning{am = enc, lm = dec, ranges}; logits = joiner(enc_p, dec_p) (B, T, s_range, V);
--            pruned = loss_pruned{..., overwrite_logits = true}; (simple + pruned):backward()
--            (icefall backpropagates both losses; the peer's step is the same)
-- Before each call (untimed) the parameter gradients are zeroed, the gradients of enc and dec are
-- dropped (the peer sets them to None) and a full collectgarbage() runs.
-- Timing: `warmup` untimed calls, then the median wall time (clock_gettime MONOTONIC) of `repeat`
-- calls (at least 5). Memory: before each timed call tn.reset_peak_memory(); after it
-- tn.memory_stats().peak. peak_bytes = the max over calls of that peak (all live tensor storages:
-- inputs, parameters, their gradients, the step's intermediates); peak_extra_bytes = the max over
-- calls of (peak - memory_stats().current before the call), the memory the step itself needed,
-- which is what the peer measures (VmHWM after - VmRSS before).
--
-- Output, one JSON line per (case, impl, step):
--   {"op":"full"|"full_ow"|"pruned","impl":"tern","B":..,"T":..,"S":..,"V":500,"threads":N,
--    "median_ms":..,"min_ms":..,"cpu_ms":..,"repeats":..,"peak_bytes":..,"peak_extra_bytes":..,
--    "dtype":"f32","device":"cpu","load1":..[,"s_range":..][,"load_note":..]}
-- the peer's own lines echoed (op "full" impl "torchaudio", op "pruned" impl "torch_ref"), and per
-- case one compare line (ratios > 1 mean the first named is better):
--   {"compare":"B8_T200_S60","threads":N,
--    "full_tern_vs_torchaudio":..          time, torchaudio / tern full           (target >= 2)
--    "full_ow_tern_vs_torchaudio":..       time, torchaudio / tern full_ow        (target >= 2)
--    "pruned_vs_full_time":..              time, tern full / tern pruned          (target >= 10)
--    "pruned_vs_full_ow_time":..           time, tern full_ow / tern pruned
--    "pruned_vs_full_peak":..              peak_bytes, tern full / tern pruned    (target >= 10)
--    "pruned_vs_full_ow_peak":..           peak_bytes, tern full_ow / tern pruned
--    "pruned_tern_vs_torch_ref":..         time, torch_ref / tern pruned          (informational)
--    "full_peak_torchaudio_vs_tern":..     peer extra RSS / tern full peak_extra_bytes (informational)
--    ...}
-- load1 = the 1-minute load average after the case; "load_note" when it is above 1.5.
--
-- Interleaving: per case, tern's steps run, then the peer process runs the same case (full and
-- pruned), so slow drift of a shared machine hits both alike. Threads: for each thread count N the
-- script re-runs itself as a child with OMP_WAIT_POLICY=PASSIVE, OPENBLAS_NUM_THREADS=N and
-- OMP_NUM_THREADS=N (read when libgomp / OpenBLAS load) and calls tn.set_num_threads(N); the peer
-- gets the same environment.

-- package.path from this file's location, so the script runs from anywhere in the tree
local script = arg and arg[0] or "recipes/bench_rnnt.lua"
local here = script:match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path

local ffi = require "ffi"

-- options ------------------------------------------------------------------------------------

local USAGE = "usage: luajit recipes/bench_rnnt.lua [--threads=1,2] [--repeat=7] [--warmup=2]"
  .. " [--peer=torch|none] [--cases=8x200x60,4x100x30] [--steps=full,full_ow,pruned] [--s_range=5]\n"
local opts = { threads = "1,2", ["repeat"] = "7", warmup = "2", peer = "torch",
  cases = "8x200x60,4x100x30", steps = "full,full_ow,pruned", s_range = "5", child = "0" }
local passthrough = {}
for _, a in ipairs(arg or {}) do
  local k, v = a:match("^%-%-([%w_]+)=(.*)$")
  if not k then k = a:match("^%-%-([%w_]+)$"); v = "1" end
  if not k or opts[k] == nil then
    io.stderr:write("bench_rnnt: unknown argument " .. a .. "\n" .. USAGE)
    os.exit(2)
  end
  opts[k] = v
  if k ~= "threads" and k ~= "child" then passthrough[#passthrough + 1] = a end
end
local REPEAT = math.max(5, tonumber(opts["repeat"]) or 7)
local WARMUP = math.max(0, tonumber(opts.warmup) or 2)
local S_RANGE = assert(tonumber(opts.s_range), "--s_range")
local THREADS = {}
for n in opts.threads:gmatch("[^,]+") do THREADS[#THREADS + 1] = assert(tonumber(n), "--threads") end
local CASES = {}
for c in opts.cases:gmatch("[^,]+") do
  local b, t, s = c:match("^(%d+)x(%d+)x(%d+)$")
  if not b then
    io.stderr:write("bench_rnnt: bad case " .. c .. " (BxTxS)\n" .. USAGE)
    os.exit(2)
  end
  CASES[#CASES + 1] = { B = tonumber(b), T = tonumber(t), S = tonumber(s) }
end
local STEPS, STEP_SET = {}, {}
for s in opts.steps:gmatch("[^,]+") do
  if s ~= "full" and s ~= "full_ow" and s ~= "pruned" then
    io.stderr:write("bench_rnnt: unknown step " .. s .. " (full, full_ow, pruned)\n" .. USAGE)
    os.exit(2)
  end
  STEPS[#STEPS + 1] = s
  STEP_SET[s] = true
end
if opts.peer ~= "torch" and opts.peer ~= "none" then
  io.stderr:write("bench_rnnt: --peer must be torch or none\n")
  os.exit(2)
end
local D, V, BLANK = 512, 500, 0

-- driver: one child process per thread count, with the thread environment set before any
-- OpenMP / OpenBLAS library is loaded
if opts.child ~= "1" then
  local interp = "luajit"
  do -- the interpreter that runs this script (arg[-1], the lowest negative index)
    local i = -1
    while arg[i - 1] do i = i - 1 end
    if arg[i] then interp = arg[i] end
  end
  local rc = 0
  for _, th in ipairs(THREADS) do
    -- the child's exit status comes back as a last line (LuaJIT's popen close does not report it)
    local cmd = string.format(
      "OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=%d OMP_NUM_THREADS=%d %s %s --child=1 --threads=%d %s 2>&1;"
      .. " echo __bench_rnnt_rc=$?",
      th, th, interp, script, th, table.concat(passthrough, " "))
    local p = assert(io.popen(cmd))
    for line in p:lines() do
      local crc = line:match("^__bench_rnnt_rc=(%d+)$")
      if crc then
        if tonumber(crc) ~= 0 then rc = 1 end
      else
        io.write(line, "\n"); io.flush()
      end
    end
    p:close()
  end
  os.exit(rc)
end

local TH = THREADS[1]
local tn = require "tern"

pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } tern_bench_timespec;
int clock_gettime(int clk_id, tern_bench_timespec *tp);
]])
local CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID = 1, 2
local ts = ffi.new("tern_bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) * 1e-6
end
local function cpu_ms()
  ffi.C.clock_gettime(CLOCK_PROCESS_CPUTIME_ID, ts)
  return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) * 1e-6
end

local function load1()
  local f = io.open("/proc/loadavg")
  if not f then return nil end
  local s = f:read("*l")
  f:close()
  return tonumber(s:match("^(%S+)"))
end
local LOAD_NOISY = 1.5
local function load_note(ld)
  return string.format("load1 %.2f > %.1f: shared machine, timing noisy", ld, LOAD_NOISY)
end

-- output ---------------------------------------------------------------------------------------

local function jnum(x)
  if x == nil then return "null" end
  if x ~= x or x == math.huge or x == -math.huge then return "null" end
  if x == math.floor(x) and math.abs(x) < 2 ^ 53 then return string.format("%d", x) end
  return string.format("%.6g", x)
end
local function json(fields)
  local parts = {}
  for _, kv in ipairs(fields) do
    local k, v = kv[1], kv[2]
    local s
    if type(v) == "string" then s = string.format("%q", v)
    elseif type(v) == "boolean" then s = tostring(v)
    else s = jnum(v) end
    parts[#parts + 1] = string.format("%q:%s", k, s)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end
local function emit_line(s) io.write(s, "\n"); io.flush() end

local function field(line, k)
  local s = line:match('"' .. k .. '"%s*:%s*"([^"]*)"')
  if s then return s end
  local n = line:match('"' .. k .. '"%s*:%s*([-%d%.eE+]+)')
  return n and tonumber(n)
end

-- timing ---------------------------------------------------------------------------------------

local function median(xs)
  table.sort(xs)
  local n = #xs
  if n % 2 == 1 then return xs[(n + 1) / 2] end
  return 0.5 * (xs[n / 2] + xs[n / 2 + 1])
end
local function full_gc() collectgarbage("collect"); collectgarbage("collect") end

-- median ms, min ms, median process-CPU ms, max peak, max peak above the pre-call live bytes
local function bench(fn, prep)
  for _ = 1, WARMUP do
    prep()
    fn()
  end
  local xs, cs, peak, extra = {}, {}, 0, 0
  for r = 1, REPEAT do
    prep()
    local base = tn.memory_stats().current
    tn.reset_peak_memory()
    local c0, t0 = cpu_ms(), now_ms()
    fn()
    local t1, c1 = now_ms(), cpu_ms()
    local pk = tn.memory_stats().peak
    xs[r], cs[r] = t1 - t0, c1 - c0
    peak, extra = math.max(peak, pk), math.max(extra, pk - base)
  end
  local mn = math.huge
  for _, x in ipairs(xs) do mn = math.min(mn, x) end
  return median(xs), mn, median(cs), peak, extra
end

-- tern steps -------------------------------------------------------------------------------------

local function run_tern(step, c)
  local B, T, S = c.B, c.T, c.S
  tn.manual_seed(1000 * B + T + S)
  local enc = tn.randn(B, T, D):requires_grad(true)
  local dec = tn.randn(B, S + 1, D):requires_grad(true)
  local symbols = tn.randint(1, V, { B, S })
  local rows = {}
  for b = 1, B do rows[b] = { 0, 0, S, T } end
  local boundary = tn.tensor(rows, { dtype = "i64" })
  local joiner = tn.nn.Joiner(D, D, D, V, { simple_proj = true })
  local fn
  if step == "full" or step == "full_ow" then
    local ow = step == "full_ow"
    fn = function()
      local logits = joiner(enc:unsqueeze(3), dec:unsqueeze(2)) -- (B, T, S+1, V)
      local loss = tn.rnnt.loss{ logits = logits, symbols = symbols, termination_symbol = BLANK,
        boundary = boundary, reduction = "sum", overwrite_logits = ow }
      loss:backward()
    end
  else
    fn = function()
      local am, lm = joiner:simple(enc, dec)
      local simple, px_grad, py_grad = tn.rnnt.loss_simple{ lm = lm, am = am, symbols = symbols,
        termination_symbol = BLANK, boundary = boundary, reduction = "sum", return_grad = true }
      local ranges = tn.rnnt.get_prune_ranges{ px_grad = px_grad, py_grad = py_grad,
        boundary = boundary, s_range = S_RANGE }
      local enc_p, dec_p = tn.rnnt.do_pruning{ am = enc, lm = dec, ranges = ranges }
      local logits = joiner(enc_p, dec_p) -- (B, T, s_range, V)
      local pruned = tn.rnnt.loss_pruned{ logits = logits, symbols = symbols, ranges = ranges,
        termination_symbol = BLANK, boundary = boundary, reduction = "sum", overwrite_logits = true }
      ;(simple + pruned):backward()
    end
  end
  local function prep()
    joiner:zero_grad()
    rawset(enc, "grad", nil)
    rawset(dec, "grad", nil)
    full_gc()
  end
  prep()
  local med, mn, cpu, peak, extra = bench(fn, prep)
  local ld = load1()
  local f = {
    { "op", step }, { "impl", "tern" }, { "B", B }, { "T", T }, { "S", S }, { "V", V },
    { "threads", TH }, { "median_ms", med }, { "min_ms", mn }, { "cpu_ms", cpu },
    { "repeats", REPEAT }, { "peak_bytes", peak }, { "peak_extra_bytes", extra },
    { "dtype", "f32" }, { "device", "cpu" }, { "load1", ld },
  }
  if step == "pruned" then f[#f + 1] = { "s_range", S_RANGE } end
  if ld and ld > LOAD_NOISY then f[#f + 1] = { "load_note", load_note(ld) } end
  emit_line(json(f))
  joiner, enc, dec, fn = nil, nil, nil, nil
  jit.flush()
  full_gc()
  return { ms = med, peak = peak, extra = extra }
end

-- peer -------------------------------------------------------------------------------------------

local function run_peer(c)
  if opts.peer ~= "torch" then return {} end
  local ops = {}
  if STEP_SET.full or STEP_SET.full_ow then ops[#ops + 1] = "full" end
  if STEP_SET.pruned then ops[#ops + 1] = "pruned" end
  if #ops == 0 then return {} end
  local cmd = string.format(
    "OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=%d OMP_NUM_THREADS=%d /usr/bin/python3 %s/bench_rnnt_torch.py"
    .. " --threads=%d --repeat=%d --warmup=%d --cases=%dx%dx%d --ops=%s --s-range=%d 2>&1",
    TH, TH, here, TH, REPEAT, math.max(1, WARMUP), c.B, c.T, c.S, table.concat(ops, ","), S_RANGE)
  local p = io.popen(cmd)
  if not p then
    emit_line(json({ { "impl", "torch" }, { "threads", TH }, { "note", "cannot start /usr/bin/python3" } }))
    return {}
  end
  local got = {}
  for line in p:lines() do
    if line:sub(1, 1) == "{" then
      local op = field(line, "op")
      local ms = field(line, "median_ms")
      local pk = field(line, "peak_bytes")
      local ld = field(line, "load1")
      if ld and ld > LOAD_NOISY then
        line = line:sub(1, -2) .. string.format(',"load_note":"%s"}', load_note(ld))
      end
      emit_line(line)
      if op and ms then got[op] = { ms = ms, peak = pk } end
    elseif line ~= "" and not line:match("^No CUDA runtime") then
      emit_line(json({ { "impl", "torch" }, { "threads", TH }, { "note", "peer output: " .. line } }))
    end
  end
  p:close()
  return got
end

-- main -------------------------------------------------------------------------------------------

tn.set_num_threads(TH)
local function ratio(a, b) -- a / b, nil when either is missing
  if not a or not b or b == 0 then return nil end
  return a / b
end
local function g(t, k) return t and t[k] end

local rc = 0
for _, c in ipairs(CASES) do
  local t = {}
  for _, step in ipairs(STEPS) do
    local ok, res = pcall(run_tern, step, c)
    if ok then t[step] = res
    else
      rc = 1
      emit_line(json({ { "op", step }, { "impl", "tern" }, { "B", c.B }, { "T", c.T }, { "S", c.S },
        { "threads", TH }, { "error", tostring(res) } }))
      full_gc()
    end
  end
  local peer = run_peer(c)
  local ld = load1()
  local f = {
    { "compare", string.format("B%d_T%d_S%d", c.B, c.T, c.S) }, { "threads", TH },
    { "tern_full_ms", g(t.full, "ms") }, { "tern_full_ow_ms", g(t.full_ow, "ms") },
    { "tern_pruned_ms", g(t.pruned, "ms") }, { "torchaudio_full_ms", g(peer.full, "ms") },
    { "torch_ref_pruned_ms", g(peer.pruned, "ms") },
    { "tern_full_peak", g(t.full, "peak") }, { "tern_full_ow_peak", g(t.full_ow, "peak") },
    { "tern_pruned_peak", g(t.pruned, "peak") },
    { "torchaudio_full_peak_extra", g(peer.full, "peak") },
    { "torch_ref_pruned_peak_extra", g(peer.pruned, "peak") },
    { "full_tern_vs_torchaudio", ratio(g(peer.full, "ms"), g(t.full, "ms")) },
    { "full_ow_tern_vs_torchaudio", ratio(g(peer.full, "ms"), g(t.full_ow, "ms")) },
    { "pruned_vs_full_time", ratio(g(t.full, "ms"), g(t.pruned, "ms")) },
    { "pruned_vs_full_ow_time", ratio(g(t.full_ow, "ms"), g(t.pruned, "ms")) },
    { "pruned_vs_full_peak", ratio(g(t.full, "peak"), g(t.pruned, "peak")) },
    { "pruned_vs_full_ow_peak", ratio(g(t.full_ow, "peak"), g(t.pruned, "peak")) },
    { "pruned_vs_full_peak_extra", ratio(g(t.full, "extra"), g(t.pruned, "extra")) },
    { "pruned_tern_vs_torch_ref", ratio(g(peer.pruned, "ms"), g(t.pruned, "ms")) },
    { "full_peak_torchaudio_vs_tern", ratio(g(peer.full, "peak"), g(t.full, "extra")) },
    { "full_ow_peak_torchaudio_vs_tern", ratio(g(peer.full, "peak"), g(t.full_ow, "extra")) },
    { "targets", "full(_ow)_tern_vs_torchaudio >= 2; pruned_vs_full(_ow)_time >= 10; "
      .. "pruned_vs_full(_ow)_peak >= 10; pruned_tern_vs_torch_ref informational" },
    { "load1", ld },
  }
  if ld and ld > LOAD_NOISY then f[#f + 1] = { "load_note", load_note(ld) } end
  emit_line(json(f))
end
os.exit(rc)
