-- recipes/bench_optim.lua: optimizer step time of tern against the memory-bandwidth floor and
-- PyTorch 1.13.
--
--   luajit recipes/bench_optim.lua [--threads=1,2] [--repeat=15] [--peer=torch|none]
--                                  [--cases=adam,adamw,sgd,adam_f16] [--numel=10000000]
--                                  [--tensors=100]
--
-- The model: --numel parameters (default 10 M, f32) spread over --tensors tensors (default
-- 100) of an nn module, so they live in one flat buffer; gradients are random and fixed.
-- Cases (one JSON line per implementation, then a "compare" line):
--   adam      tn.optim.Adam(model):step()             vs torch.optim.Adam(foreach=True) and the
--                                                      default single-tensor loop (foreach=False)
--   adamw     tn.optim.AdamW (weight_decay 1e-2)       vs torch.optim.AdamW(foreach=True)
--   sgd       tn.optim.SGD (momentum 0.9, nesterov)    vs torch.optim.SGD(foreach=True)
--   adam_f16  tn.optim.Adam on the f16 model (FP32 masters, f16 grads, write-back); no peer
-- The bandwidth floor of an Adam step is one pass over memory that reads params, grads,
-- exp_avg, exp_avg_sq and writes params, exp_avg, exp_avg_sq (28 bytes per parameter), measured
-- in the same run three ways, the fastest taken:
--   loop      a LuaJIT loop p += g; m += g; v += g over the same four arrays (one thread)
--   memcpy    libc memcpy of 40 MB, scaled to 28 bytes per parameter (one thread)
--   tn_copy   tern's parallel f32 copy of the 10 M elements (threads as the case), scaled
--   add_      p += g, m += g, v += g as three in-place tern adds (vectorised, threads), scaled
-- (SGD with momentum moves 20 bytes per parameter: p, g, buf read, p, buf written.)
-- Compare lines: tern_over_floor (target <= 1.5 for adam), torch_over_tern (speedup; target
-- >= 2 vs foreach), c_direct_over_tern (the FFI call alone: the Lua overhead of step()).
-- Medians over --repeat timed steps after warm-up; load1 and a note when the machine is busy.
-- Threads: one child process per thread count (lib/bench.lua), the peer with the same
-- environment.

local script = arg and arg[0] or "recipes/bench_optim.lua"
local here = script:match("^(.*)/[^/]*$") or "."
package.path = here .. "/lib/?.lua;" .. package.path
local lib = require "bench"
lib.use_tree(here)

local json, emit_line, load1, full_gc = lib.json, lib.emit_line, lib.load1, lib.full_gc

local opts, passthrough = lib.parse_args("bench_optim",
  { threads = "1,2", ["repeat"] = "15", peer = "torch", cases = "adam,adamw,sgd,adam_f16",
    numel = "10000000", tensors = "100", child = "0" },
  "usage: luajit recipes/bench_optim.lua [--threads=1,2] [--repeat=15] [--peer=torch|none]"
  .. " [--cases=adam,adamw,sgd,adam_f16] [--numel=10000000] [--tensors=100]\n")
local REPEAT = math.max(5, tonumber(opts["repeat"]) or 15)
local THREADS = lib.numbers(opts.threads, "--threads")
local NUMEL = assert(tonumber(opts.numel), "--numel")
local NT = assert(tonumber(opts.tensors), "--tensors")
lib.check_peer("bench_optim", opts)
local CASES = lib.choices("bench_optim", "case", opts.cases, { "adam", "adamw", "sgd", "adam_f16" })

if opts.child ~= "1" then lib.reexec("bench_optim", script, THREADS, passthrough) end

local TH = THREADS[1]
local ffi = require "ffi"
local tn = require "tern"
local C = tn.C
pcall(ffi.cdef, "void *memcpy(void *dst, const void *src, size_t n);")

local PER = math.floor(NUMEL / NT) -- elements per tensor
local N = PER * NT
local SHAPE = string.format("%dx%d", NT, PER)

local function bench(fn, prep)
  local xs, cs = lib.timed(fn, { warmup = 3, rep = REPEAT, prep = prep })
  return lib.median(xs), lib.min(xs), lib.median(cs)
end

local function emit(f)
  local ld = load1()
  f[#f + 1] = { "load1", ld }
  lib.add_load_note(f, ld)
  emit_line(json(f))
end

-- the model ---------------------------------------------------------------------------------

local Bare = tn.nn.Module:extend("BenchParams")
local function model(dtype)
  tn.manual_seed(0)
  local m = Bare()
  for i = 1, NT do m:register_parameter("p" .. i, tn.randn(PER) * 0.1) end
  if dtype then m:to(dtype) end
  local fb = m:flat_buffers()[1]
  tn.no_grad(function() fb.grad:copy_(tn.randn(N) * 0.01) end)
  return m, fb
end

-- the bandwidth floor: 28 bytes per parameter (Adam) or 20 (SGD momentum) -----------------

local floor_cache
local function floors()
  if floor_cache then return floor_cache end
  local a = { tn.randn(N), tn.randn(N) * 1e-3, tn.randn(N), tn.rand(N) }
  local p, g, m, v = a[1]:data_ptr(), a[2]:data_ptr(), a[3]:data_ptr(), a[4]:data_ptr()
  p, g, m, v = ffi.cast("float *", p), ffi.cast("float *", g), ffi.cast("float *", m), ffi.cast("float *", v)
  local loop_ms = bench(function()
    for i = 0, N - 1 do
      local gi = g[i]
      p[i] = p[i] + gi
      m[i] = m[i] + gi
      v[i] = v[i] + gi
    end
  end)
  local bytes = 4 * N
  local memcpy_ms = bench(function() ffi.C.memcpy(m, p, bytes) end)
  local copy_ms = bench(function() C.tn_copy(a[3]._c, a[1]._c) end)
  -- p += g; m += g; v += g as three in-place tern adds (vectorised, threaded): 36 bytes each
  local box = ffi.new("tn_tensor *[1]")
  local function add_(x, y) box[0] = x._c; C.tn_binary(box, x._c, y._c, 0) end
  local add_ms = bench(function() add_(a[1], a[2]); add_(a[3], a[2]); add_(a[4], a[2]) end)
  -- per byte moved: loop 28 N, memcpy and tn_copy 8 N, the adds 36 N
  local per_byte = math.min(loop_ms / (28 * N), memcpy_ms / (8 * N), copy_ms / (8 * N), add_ms / (36 * N))
  floor_cache = { per_byte = per_byte, loop_GBps = 28 * N / loop_ms * 1e-6,
    memcpy_GBps = 8 * N / memcpy_ms * 1e-6, copy_GBps = 8 * N / copy_ms * 1e-6, add_GBps = 36 * N / add_ms * 1e-6 }
  emit({ { "op", "floor" }, { "impl", "c_direct" }, { "shape", SHAPE }, { "threads", TH },
    { "loop_GBps", floor_cache.loop_GBps }, { "memcpy_GBps", floor_cache.memcpy_GBps },
    { "tn_copy_GBps", floor_cache.copy_GBps }, { "add_inplace_GBps", floor_cache.add_GBps },
    { "floor_GBps", 1e-6 / per_byte },
    { "note", "the fastest of: LuaJIT loop p+=g; m+=g; v+=g (1 thread), memcpy (1 thread), tn_copy and "
      .. "3 in-place tn_binary adds (threads)" } })
  a = nil
  full_gc()
  return floor_cache
end

-- tern cases -------------------------------------------------------------------------------------

local SPEC = {
  adam = { cls = "Adam", opts = { lr = 1e-3 }, bytes = 28, kernel = "tn_optim_adam" },
  adamw = { cls = "AdamW", opts = { lr = 1e-3 }, bytes = 28, kernel = "tn_optim_adam" },
  sgd = { cls = "SGD", opts = { lr = 1e-3, momentum = 0.9, nesterov = true }, bytes = 20, kernel = "tn_optim_sgd" },
  adam_f16 = { cls = "Adam", opts = { lr = 1e-3 }, dtype = "f16", bytes = 28 + 6, kernel = "tn_optim_adam" },
}

local function run_tern(case)
  local s = SPEC[case]
  local m = model(s.dtype)
  local opt = tn.optim[s.cls](m, s.opts)
  local b = opt._buckets[1]
  assert(b.seg.w.n == 1, "the flat buffer should be one segment")
  full_gc()
  tn.reset_peak_memory()
  local base = tn.memory_stats().current
  local med, mn, cpu = bench(function() opt:step() end)
  local peak = tn.memory_stats().peak - base
  emit({ { "op", case }, { "impl", "tern" }, { "shape", SHAPE }, { "dtype", s.dtype or "f32" }, { "device", "cpu" },
    { "threads", TH }, { "median_ms", med }, { "min_ms", mn }, { "cpu_ms", cpu }, { "peak_bytes", peak },
    { "GBps", s.bytes * N / med * 1e-6 }, { "repeats", REPEAT } })
  -- the same C call straight through the FFI (no Lua bookkeeping)
  local lists = b.seg
  local h = opt:_hparams(opt.param_groups[1], b, 1, false)
  local kern = C[s.kernel]
  local cmed
  if s.kernel == "tn_optim_adam" then
    local model_arr = b.half and lists.model.arr or nil
    local grads = lists.g.arr
    cmed = bench(function()
      h.step = h.step + 1
      kern(lists.w.n, lists.w.arr, grads, lists.exp_avg.arr, lists.exp_avg_sq.arr, model_arr, h)
    end)
  else
    cmed = bench(function()
      h.step = h.step + 1
      kern(lists.w.n, lists.w.arr, lists.g.arr, lists.momentum_buffer.arr, nil, h)
    end)
  end
  emit({ { "op", case }, { "impl", "c_direct" }, { "shape", SHAPE }, { "dtype", s.dtype or "f32" },
    { "threads", TH }, { "median_ms", cmed }, { "note", s.kernel .. " through the FFI with the cached lists" } })
  opt = nil -- luacheck: ignore
  m = nil -- luacheck: ignore
  jit.flush()
  full_gc()
  return med, cmed
end

-- peer --------------------------------------------------------------------------------------------

local function run_peer(case)
  if opts.peer ~= "torch" or case == "adam_f16" then return {} end
  local cmd = string.format(
    "%s %s %s/bench_optim_torch.py --threads=%d --repeat=%d --numel=%d --tensors=%d --cases=%s 2>&1",
    lib.thread_env(TH), lib.PYTHON, here, TH, REPEAT, N, NT, case)
  local got = {}
  lib.echo_peer(cmd, TH, function(line)
    local impl, ms = lib.field(line, "impl"), lib.field(line, "median_ms")
    if impl and ms then got[impl] = ms end
  end)
  return got
end

-- main ----------------------------------------------------------------------------------------------

tn.set_num_threads(TH)
local fl = floors()
for _, case in ipairs(CASES) do
  local ok, t, tc = pcall(run_tern, case)
  if not ok then
    emit_line(json({ { "op", case }, { "impl", "tern" }, { "threads", TH }, { "error", tostring(t) } }))
  else
    local peer = run_peer(case)
    local floor_ms = SPEC[case].bytes * N * fl.per_byte
    local f = { { "compare", case .. "_" .. SHAPE }, { "threads", TH }, { "tern_ms", t }, { "c_direct_ms", tc },
      { "floor_ms", floor_ms }, { "tern_over_floor", lib.ratio(t, floor_ms) },
      { "c_direct_over_tern", lib.ratio(tc, t) },
      { "torch_foreach_ms", peer.torch_foreach }, { "torch_single_ms", peer.torch_single },
      { "torch_foreach_over_tern", lib.ratio(peer.torch_foreach, t) },
      { "torch_single_over_tern", lib.ratio(peer.torch_single, t) } }
    if case == "adam" then
      f[#f + 1] = { "targets", "tern_over_floor <= 1.5; torch_foreach_over_tern >= 2" }
    end
    emit(f)
  end
end
