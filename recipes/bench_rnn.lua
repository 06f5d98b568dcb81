-- recipes/bench_rnn.lua: recurrent-layer benchmarks of tern (nn.LSTM, nn.SRU) on the CPU or one
-- GPU, side by side with PyTorch nn.LSTM (cuDNN on the GPU) and the `sru` package
-- (recipes/bench_rnn_torch.py).
--
--   luajit recipes/bench_rnn.lua [--device=cpu|cuda] [--threads=1,2] [--repeat=7]
--                                [--peer=torch|none] [--cases=lstm,sru,fwd,fwdbwd,32x256,128x512]
--                                [--layers=1,2]
--
-- --device=cuda: model and input on the current GPU (cuda/sru.cu, cuda/lstm.cu); each timed
-- call ends with tn.cuda.synchronize() (the peer with torch.cuda.synchronize()), peak_bytes is
-- the CUDA pool's peak, --threads is ignored (one process, one host thread), the f32 GEMMs use
-- TF32 as torch's cuDNN LSTM does by default. Without a GPU it prints why on stderr and exits 1.
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
package.path = here .. "/lib/?.lua;" .. package.path
local lib = require "bench"
lib.use_tree(here)

local json, emit_line, load1, full_gc = lib.json, lib.emit_line, lib.load1, lib.full_gc

-- options ------------------------------------------------------------------------------------

local opts, passthrough = lib.parse_args("bench_rnn",
  { threads = "1,2", ["repeat"] = "7", peer = "torch", cases = "all", layers = "1,2", child = "0",
    device = "cpu" },
  "usage: luajit recipes/bench_rnn.lua [--device=cpu|cuda] [--threads=1,2] [--repeat=7] [--peer=torch|none]"
  .. " [--cases=lstm,sru,fwd,fwdbwd,32x256,128x512] [--layers=1,2]\n")
local REPEAT = math.max(5, tonumber(opts["repeat"]) or 7)
local DEVICE = opts.device
if DEVICE ~= "cpu" and DEVICE ~= "cuda" then
  io.stderr:write("bench_rnn: --device must be cpu or cuda, got " .. tostring(DEVICE) .. "\n")
  os.exit(2)
end
local CUDA = DEVICE == "cuda"
local THREADS = CUDA and { 1 } or lib.numbers(opts.threads, "--threads")
local LAYERS = lib.numbers(opts.layers, "--layers")
lib.check_peer("bench_rnn", opts)

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
-- (on the GPU the thread count does not matter: the case runs in this process)
if opts.child ~= "1" and not CUDA then lib.reexec("bench_rnn", script, THREADS, passthrough) end

local TH = THREADS[1]
local tn = require "tern"
if CUDA and not tn.cuda.is_available() then
  io.stderr:write("bench_rnn: --device=cuda needs a GPU, but no CUDA device is available here "
    .. "(tn.cuda.is_available() is false: a CPU-only build of libtern, no driver or no visible GPU)\n")
  os.exit(1)
end
local function sync() if CUDA then tn.cuda.synchronize() end end

-- timing ---------------------------------------------------------------------------------------

-- returns median ms, min ms, median process-CPU ms of single calls of fn; prep() untimed before each
local function bench(fn, prep)
  local xs, cs = lib.timed(fn, { warmup = 2, rep = REPEAT, prep = prep })
  return lib.median(xs), lib.min(xs), lib.median(cs)
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
  if CUDA then
    m:to("cuda")
    x = x:cuda()
  end
  local fn, prep
  if mode == "fwd" then
    m:eval()
    fn = function() tn.no_grad(function() local y = m(x); return y end); sync() end
    prep = function() full_gc(); sync() end
  else
    m:train()
    fn = function()
      local y = m(x)
      y:sum():backward()
      sync()
    end
    prep = function() m:zero_grad(); full_gc(); sync() end
  end
  full_gc()
  sync()
  tn.reset_peak_memory(DEVICE)
  local med, mn, cpu = bench(fn, prep)
  local peak = tn.memory_stats(DEVICE).peak
  local ld = load1()
  local f = {
    { "op", op }, { "impl", "tern" }, { "mode", mode }, { "L", L }, { "B", B }, { "d", d },
    { "layers", layers }, { "threads", TH }, { "median_ms", med }, { "min_ms", mn },
    { "cpu_ms", cpu }, { "repeats", REPEAT }, { "peak_bytes", peak }, { "dtype", "f32" },
    { "device", DEVICE }, { "load1", ld },
  }
  lib.add_load_note(f, ld)
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
    "%s %s %s/bench_rnn_torch.py"
    .. " --threads=%d --repeat=%d --shapes=%dx%d --layers=%d --batch=%d --modes=%s --ops=lstm,sru_pkg"
    .. " --device=%s 2>&1",
    lib.thread_env(TH), lib.PYTHON, here, TH, REPEAT, L, d, layers, B, mode, DEVICE)
  local got = {}
  lib.echo_peer(cmd, TH, function(line)
    local op = lib.field(line, "op")
    local ms = lib.field(line, "median_ms")
    if op and ms then got[op] = ms end
  end)
  return got
end

-- main -------------------------------------------------------------------------------------------

tn.set_num_threads(TH)
local sp = lib.ratio -- sp(a, b): speedup of the tern time b over the reference time a

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
                  { "d", s.d }, { "layers", layers }, { "threads", TH }, { "device", DEVICE },
                  { "error", tostring(res) } }))
              end
            end
          end
          local peer = run_peer(mode, s.L, s.d, layers)
          local ld = load1()
          local f = {
            { "compare", string.format("%s_L%d_d%d_l%d", mode, s.L, s.d, layers) }, { "threads", TH },
            { "device", DEVICE },
            { "tern_sru_ms", t.sru }, { "tern_lstm_ms", t.lstm }, { "torch_lstm_ms", peer.lstm },
            { "sru_pkg_ms", peer.sru_pkg },
            { "sru_tern_vs_lstm_torch", sp(peer.lstm, t.sru) },
            { "lstm_tern_vs_lstm_torch", sp(peer.lstm, t.lstm) },
            { "sru_tern_vs_sru_pkg", sp(peer.sru_pkg, t.sru) },
            { "sru_tern_vs_lstm_tern", sp(t.lstm, t.sru) },
            { "targets", "sru_tern_vs_lstm_torch >= 5; lstm_tern_vs_lstm_torch >= 1; sru_tern_vs_sru_pkg >= 3" },
            { "load1", ld },
          }
          lib.add_load_note(f, ld)
          emit_line(json(f))
        end
      end
    end
  end
end
