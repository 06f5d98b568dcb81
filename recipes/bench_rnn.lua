-- recipes/bench_rnn.lua: recurrent-layer benchmarks of tern (nn.LSTM, nn.SRU) on the CPU, side
-- by side with PyTorch nn.LSTM and the `sru` package (recipes/bench_rnn_torch.py).
--
--   luajit recipes/bench_rnn.lua [--threads=1,2] [--repeat=7] [--peer=torch|none]
--                                [--cases=lstm,sru,fwd,fwdbwd,32x256,128x512] [--layers=1,2]
--
-- Shapes are the SRU paper's (batch 32; length 32 with d 256, length 128 with d 512), f32,
-- input (L, B, d), zero initial state, no dropout, unidirectional:
--   lstm  tn.nn.LSTM(d, d, {num_layers=layers})       peer: torch.nn.LSTM(d, d, num_layers)
--   sru   tn.nn.SRU(d, d, {num_layers=layers})        peer: sru.SRU(d, d, num_layers)
-- Modes:
--   fwd     the forward inside tn.no_grad, module in eval()
--   fwdbwd  forward with autograd (train()), then output:sum():backward(); the input does not
--           require grad; parameter gradients are zeroed (untimed) before each call, as the
--           peer resets them to None.
-- Each case: 2 warm-up calls, then the median wall time (clock_gettime MONOTONIC) of --repeat
-- single calls (at least 5). A full collectgarbage() runs untimed before each call, so every
-- call starts from the same memory state (PyTorch frees by refcount inside its timed call).
--
-- --cases filters by op (lstm, sru), mode (fwd, fwdbwd) and shape (32x256, 128x512): a case runs
-- when it matches every category the list names (default: all).
--
-- Output, one JSON line per case and implementation:
--   {"op":"lstm"|"sru"|"sru_pkg","impl":"tern"|"torch"|"sru","mode":"fwd"|"fwdbwd","L":..,
--    "B":32,"d":..,"layers":..,"threads":N,"median_ms":..,"min_ms":..,"cpu_ms":..,
--    "peak_bytes":..,"load1":..[,"load_note":...]}
-- (peer lines are the peer's own, echoed; load1 = 1-minute load average after the case, and a
-- "load_note" when it is above 1.5: the machine was shared, the timing is noisy) and per case
-- one comparison line (speedups: > 1 means tern is faster):
--   {"compare":"<mode>_L<L>_d<d>_l<layers>","threads":N,
--    "sru_tern_vs_lstm_torch":..  (target >= 5), "lstm_tern_vs_lstm_torch":.. (>= 1),
--    "sru_tern_vs_sru_pkg":.. (>= 3), ...}
--
-- Interleaving: per case, tern's LSTM and SRU run, then the peer process runs the same case
-- (torch LSTM and sru package), so slow drift of a shared machine hits both alike.
-- Threads: for each thread count N the script re-runs itself as a child process with
-- OMP_WAIT_POLICY=PASSIVE, OPENBLAS_NUM_THREADS=N and OMP_NUM_THREADS=N in its environment
-- (read by libgomp/OpenBLAS when they load) and calls tn.set_num_threads(N); the peer gets the
-- same environment.

-- package.path from this file's location, so the script runs from anywhere in the tree
local script = arg and arg[0] or "recipes/bench_rnn.lua"
local here = script:match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path

local ffi = require "ffi"

-- options ------------------------------------------------------------------------------------

local opts = { threads = "1,2", ["repeat"] = "7", peer = "torch", cases = "all", layers = "1,2",
  child = "0" }
local passthrough = {}
for _, a in ipairs(arg or {}) do
  local k, v = a:match("^%-%-([%w_]+)=(.*)$")
  if not k then k = a:match("^%-%-([%w_]+)$"); v = "1" end
  if not k or opts[k] == nil then
    io.stderr:write("bench_rnn: unknown argument " .. a .. "\n"
      .. "usage: luajit recipes/bench_rnn.lua [--threads=1,2] [--repeat=7] [--peer=torch|none]"
      .. " [--cases=lstm,sru,fwd,fwdbwd,32x256,128x512] [--layers=1,2]\n")
    os.exit(2)
  end
  opts[k] = v
  if k ~= "threads" and k ~= "child" then passthrough[#passthrough + 1] = a end
end
local REPEAT = math.max(5, tonumber(opts["repeat"]) or 7)
local THREADS = {}
for n in opts.threads:gmatch("[^,]+") do THREADS[#THREADS + 1] = assert(tonumber(n), "--threads") end
local LAYERS = {}
for n in opts.layers:gmatch("[^,]+") do LAYERS[#LAYERS + 1] = assert(tonumber(n), "--layers") end
if opts.peer ~= "torch" and opts.peer ~= "none" then
  io.stderr:write("bench_rnn: --peer must be torch or none\n")
  os.exit(2)
end

-- case selection -----------------------------------------------------------------------------

local SHAPES = { { L = 32, d = 256 }, { L = 128, d = 512 } }
local OPS = { "lstm", "sru" }
local MODES = { "fwd", "fwdbwd" }
local B = 32
local filt = { op = {}, mode = {}, shape = {} }
if opts.cases ~= "all" then
  for c in opts.cases:gmatch("[^,]+") do
    if c == "lstm" or c == "sru" then filt.op[c] = true
    elseif c == "fwd" or c == "fwdbwd" then filt.mode[c] = true
    elseif c:match("^%d+x%d+$") then filt.shape[c] = true
    else
      io.stderr:write("bench_rnn: unknown case token " .. c .. " (lstm, sru, fwd, fwdbwd, LxD)\n")
      os.exit(2)
    end
  end
end
local function sel(cat, v) return next(filt[cat]) == nil or filt[cat][v] end

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
      .. " echo __bench_rnn_rc=$?",
      th, th, interp, script, th, table.concat(passthrough, " "))
    local p = assert(io.popen(cmd))
    for line in p:lines() do
      local crc = line:match("^__bench_rnn_rc=(%d+)$")
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

-- returns median ms, min ms, median process-CPU ms of single calls of fn; prep() untimed before each
local function bench(fn, prep)
  for _ = 1, 2 do
    if prep then prep() end
    fn()
  end
  local xs, cs = {}, {}
  for r = 1, REPEAT do
    if prep then prep() end
    local c0, t0 = cpu_ms(), now_ms()
    fn()
    local t1, c1 = now_ms(), cpu_ms()
    xs[r], cs[r] = t1 - t0, c1 - c0
  end
  local mn = math.huge
  for _, x in ipairs(xs) do mn = math.min(mn, x) end
  return median(xs), mn, median(cs)
end

-- tern cases -----------------------------------------------------------------------------------

local function make(op, d, layers)
  if op == "lstm" then return tn.nn.LSTM(d, d, { num_layers = layers }) end
  return tn.nn.SRU(d, d, { num_layers = layers })
end

local function run_tern(op, mode, L, d, layers)
  tn.manual_seed(0)
  local m = make(op, d, layers)
  local x = tn.randn(L, B, d)
  local fn, prep
  if mode == "fwd" then
    m:eval()
    fn = function() tn.no_grad(function() local y = m(x); return y end) end
    prep = full_gc
  else
    m:train()
    fn = function()
      local y = m(x)
      y:sum():backward()
    end
    prep = function() m:zero_grad(); full_gc() end
  end
  full_gc()
  tn.reset_peak_memory()
  local med, mn, cpu = bench(fn, prep)
  local peak = tn.memory_stats().peak
  local ld = load1()
  local f = {
    { "op", op }, { "impl", "tern" }, { "mode", mode }, { "L", L }, { "B", B }, { "d", d },
    { "layers", layers }, { "threads", TH }, { "median_ms", med }, { "min_ms", mn },
    { "cpu_ms", cpu }, { "repeats", REPEAT }, { "peak_bytes", peak }, { "dtype", "f32" },
    { "device", "cpu" }, { "load1", ld },
  }
  if ld and ld > LOAD_NOISY then
    f[#f + 1] = { "load_note", string.format("load1 %.2f > %.1f: shared machine, timing noisy", ld, LOAD_NOISY) }
  end
  emit_line(json(f))
  m = nil
  jit.flush()
  full_gc()
  return med
end

-- peer -------------------------------------------------------------------------------------------

local function run_peer(mode, L, d, layers)
  if opts.peer ~= "torch" then return {} end
  local cmd = string.format(
    "OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=%d OMP_NUM_THREADS=%d /usr/bin/python3 %s/bench_rnn_torch.py"
    .. " --threads=%d --repeat=%d --shapes=%dx%d --layers=%d --batch=%d --modes=%s --ops=lstm,sru_pkg 2>&1",
    TH, TH, here, TH, REPEAT, L, d, layers, B, mode)
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
      local ld = field(line, "load1")
      if ld and ld > LOAD_NOISY then
        line = line:sub(1, -2) .. string.format(',"load_note":"load1 %.2f > %.1f: shared machine, timing noisy"}', ld, LOAD_NOISY)
      end
      emit_line(line)
      if op and ms then got[op] = ms end
    elseif line ~= "" and not line:match("^No CUDA runtime") then
      emit_line(json({ { "impl", "torch" }, { "threads", TH }, { "note", "peer output: " .. line } }))
    end
  end
  p:close()
  return got
end

-- main -------------------------------------------------------------------------------------------

tn.set_num_threads(TH)
local function sp(a, b) -- speedup of the tern time b over the reference time a
  if not a or not b or b == 0 then return nil end
  return a / b
end

for _, s in ipairs(SHAPES) do
  if sel("shape", s.L .. "x" .. s.d) then
    for _, layers in ipairs(LAYERS) do
      for _, mode in ipairs(MODES) do
        if sel("mode", mode) then
          local t = {}
          for _, op in ipairs(OPS) do
            if sel("op", op) then
              local ok, res = pcall(run_tern, op, mode, s.L, s.d, layers)
              if ok then t[op] = res
              else
                emit_line(json({ { "op", op }, { "impl", "tern" }, { "mode", mode }, { "L", s.L },
                  { "d", s.d }, { "layers", layers }, { "threads", TH }, { "error", tostring(res) } }))
              end
            end
          end
          local peer = run_peer(mode, s.L, s.d, layers)
          local ld = load1()
          local f = {
            { "compare", string.format("%s_L%d_d%d_l%d", mode, s.L, s.d, layers) }, { "threads", TH },
            { "tern_sru_ms", t.sru }, { "tern_lstm_ms", t.lstm }, { "torch_lstm_ms", peer.lstm },
            { "sru_pkg_ms", peer.sru_pkg },
            { "sru_tern_vs_lstm_torch", sp(peer.lstm, t.sru) },
            { "lstm_tern_vs_lstm_torch", sp(peer.lstm, t.lstm) },
            { "sru_tern_vs_sru_pkg", sp(peer.sru_pkg, t.sru) },
            { "sru_tern_vs_lstm_tern", sp(t.lstm, t.sru) },
            { "targets", "sru_tern_vs_lstm_torch >= 5; lstm_tern_vs_lstm_torch >= 1; sru_tern_vs_sru_pkg >= 3" },
            { "load1", ld },
          }
          if ld and ld > LOAD_NOISY then
            f[#f + 1] = { "load_note", string.format("load1 %.2f > %.1f: shared machine, timing noisy", ld, LOAD_NOISY) }
          end
          emit_line(json(f))
        end
      end
    end
  end
end
