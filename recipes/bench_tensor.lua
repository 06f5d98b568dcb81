-- recipes/bench_tensor.lua: tensor-core benchmarks of tern, side by side with PyTorch.
--
--   luajit recipes/bench_tensor.lua [--device=cpu] [--threads=1,2] [--repeat=7]
--                                   [--peer=torch|none] [--cases=overhead,elementwise,...]
--
-- Prints one JSON line per (case, implementation, thread count):
--   {"op":..., "shape":..., "device":"cpu", "dtype":"f32", "impl":"tern"|"torch"|"c_direct"|...,
--    "median_ms":..., "peak_bytes":..., "threads":N, ...}
-- followed, per case, by a comparison line with the ratios, e.g.
--   {"compare":"add_16_overhead","threads":1,"tern_over_torch":0.31,...}
-- Ratios are time ratios (or seconds-per-byte ratios for bandwidth): < 1 means tern is faster.
--
-- Implementations:
--   tern      the Lua API as a user calls it (allocation, wrapping, GC nudge included)
--   c_direct  the same C entry point (or OpenBLAS / libc) called straight through the FFI
--   luajit_loop  a plain element loop compiled by LuaJIT over the same buffers (a "plain loop")
--   torch     recipes/bench_tensor_torch.py run with /usr/bin/python3, same threads and cases
--
-- Case groups for --cases (names or groups, comma separated):
--   overhead     add_16, muladdsum_16       per-call cost of small ops (median_ms is per call)
--   elementwise  add/mul/exp of 16M f32, memcpy and loop baselines, copy of a transposed 4096²
--   matmul       f32 1024³ through tern vs cblas_sgemm on the same buffers; 256³
--   reduce       sum over each dim of 4096², softmax over the rows of 4096²
-- Medians are over --repeat timed batches after warm-up; peak_bytes is tern's native peak
-- (tn.memory_stats().peak) over the case, reset before it; torch reports null.

-- package.path from this file's location, so the script runs from anywhere in the tree
local script = arg and arg[0] or "recipes/bench_tensor.lua"
local here = script:match("^(.*)/[^/]*$") or "."
package.path = here .. "/lib/?.lua;" .. package.path
local lib = require "bench"
lib.use_tree(here)

local ffi = require "ffi"
local tn = require "tern"
local C = tn.C

local json, emit_line, field, full_gc = lib.json, lib.emit_line, lib.field, lib.full_gc

-- libc: memcpy, malloc and cblas (pcall: another module may have declared them already)
pcall(ffi.cdef, "void *memcpy(void *dst, const void *src, size_t n);")
pcall(ffi.cdef, [[
void cblas_sgemm(int order, int transa, int transb, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
]])

pcall(ffi.cdef, "void *malloc(size_t n); void free(void *p);")

-- options ------------------------------------------------------------------------------------

local opts = lib.parse_args("bench_tensor",
  { device = "cpu", threads = "1,2", ["repeat"] = "7", peer = "torch", cases = "all" },
  "usage: luajit recipes/bench_tensor.lua [--device=cpu] [--threads=1,2] [--repeat=7]"
  .. " [--peer=torch|none] [--cases=overhead,elementwise,matmul,reduce|<case>,...]\n")
if opts.device ~= "cpu" then
  io.stderr:write("bench_tensor: only --device=cpu is implemented\n")
  os.exit(2)
end
local REPEAT = math.max(5, tonumber(opts["repeat"]) or 7)
local THREADS = lib.numbers(opts.threads, "--threads")

local groups = {
  overhead = { "add_16", "muladdsum_16" },
  elementwise = { "add_16M", "mul_16M", "exp_16M", "copyT_4096" },
  matmul = { "matmul_1024", "matmul_256" },
  reduce = { "sum_4096", "softmax_4096" },
}
local ALL = { "add_16", "muladdsum_16", "add_16M", "mul_16M", "exp_16M", "copyT_4096",
  "matmul_1024", "matmul_256", "sum_4096", "softmax_4096" }
local wanted = {}
if opts.cases == "all" then
  for _, c in ipairs(ALL) do wanted[c] = true end
else
  for c in opts.cases:gmatch("[^,]+") do
    if groups[c] then for _, x in ipairs(groups[c]) do wanted[x] = true end
    else wanted[c] = true end
  end
end
local selected = {}
for _, c in ipairs(ALL) do if wanted[c] then selected[#selected + 1] = c end end

-- output ------------------------------------------------------------------------------------

local LAST_CPU
-- results[threads][op .. "|" .. shape .. "|" .. impl] = median_ms
local results = {}

local function emit(r, threads)
  local f = {
    { "op", r.op }, { "shape", r.shape }, { "device", "cpu" }, { "dtype", "f32" },
    { "impl", r.impl }, { "median_ms", r.ms }, { "peak_bytes", r.peak }, { "threads", threads },
    { "cpu_ms", r.cpu or LAST_CPU },
  }
  if r.us_per_call then f[#f + 1] = { "us_per_call", r.us_per_call } end
  if r.bytes then
    f[#f + 1] = { "bytes_moved", r.bytes }
    f[#f + 1] = { "GBps", r.bytes / (r.ms * 1e-3) / 1e9 }
  end
  if r.gflops then f[#f + 1] = { "GFLOPs", r.gflops } end
  if r.note then f[#f + 1] = { "note", r.note } end
  emit_line(json(f))
  results[threads] = results[threads] or {}
  results[threads][r.op .. "|" .. r.shape .. "|" .. r.impl] = r
end

-- timing -----------------------------------------------------------------------------------

-- fn(iters) runs the op iters times; returns the median per-call ms over REPEAT batches.
-- prep() (untimed) runs before each batch: used to collect garbage of big outputs so each
-- timed call starts from the same memory state, as PyTorch's refcounting gives it.
-- LAST_CPU: the median process CPU ms per call of the last bench() (emit() reports it).
local function bench(fn, iters, warmup, prep)
  local xs, cs = lib.timed(fn, { iters = iters, warmup = warmup or 2, rep = REPEAT, prep = prep })
  LAST_CPU = lib.median(cs)
  return lib.median(xs)
end

local function peak_reset()
  full_gc()
  tn.reset_peak_memory()
end
local function peak() return tn.memory_stats().peak end

local OUTP = ffi.new("tn_tensor *[1]")

-- cases --------------------------------------------------------------------------------------

local cases = {}

-- (1) per-op overhead: add of two 16-element tensors, called from Lua
cases.add_16 = function(th)
  local a, b = tn.rand(16), tn.rand(16)
  local N = 20000
  peak_reset()
  local ms = bench(function(n)
    local c
    for _ = 1, n do c = a + b end
    return c
  end, N)
  emit({ op = "add", shape = "16", impl = "tern", ms = ms, us_per_call = ms * 1e3, peak = peak() }, th)
  -- the C entry point alone, allocating its output and freeing it
  local ca, cb = a._c, b._c
  local binary, free = C.tn_binary, C.tn_tensor_free
  peak_reset()
  ms = bench(function(n)
    for _ = 1, n do
      OUTP[0] = nil
      binary(OUTP, ca, cb, 0)
      free(OUTP[0])
    end
  end, N)
  emit({ op = "add", shape = "16", impl = "c_direct", ms = ms, us_per_call = ms * 1e3, peak = peak(),
    note = "tn_binary + tn_tensor_free through the FFI, no Lua wrapping" }, th)
  -- the C entry point into a preallocated output (no allocation at all)
  local o = tn.empty(16)
  local co = o._c
  peak_reset()
  ms = bench(function(n)
    for _ = 1, n do
      OUTP[0] = co
      binary(OUTP, ca, cb, 0)
    end
  end, N)
  emit({ op = "add_out", shape = "16", impl = "c_direct", ms = ms, us_per_call = ms * 1e3, peak = peak(),
    note = "tn_binary into a preallocated out" }, th)
end

-- a small chain: (a*b + a):sum() — three ops and a 0-d result
cases.muladdsum_16 = function(th)
  local a, b = tn.rand(16), tn.rand(16)
  local N = 10000
  peak_reset()
  local ms = bench(function(n)
    local s
    for _ = 1, n do s = (a * b + a):sum() end
    return s
  end, N)
  emit({ op = "muladdsum", shape = "16", impl = "tern", ms = ms, us_per_call = ms * 1e3, peak = peak(),
    note = "(a*b+a):sum(), 3 ops per call" }, th)
end

-- (2) large elementwise ops vs memcpy and a plain loop
local M16 = 16 * 1024 * 1024
local big = {}
local function big_inputs()
  if not big.a then
    tn.manual_seed(0)
    big.a, big.b = tn.rand(M16), tn.rand(M16)
    big.o = tn.empty(M16)
    big.o:fill_(0)
  end
  return big.a, big.b, big.o
end

local function elementwise_case(name, opfn, cop, streams)
  return function(th)
    local a, b, o = big_inputs()
    local bytes = streams * 4 * M16
    local ms
    peak_reset()
    ms = bench(function() local c = opfn(a, b); return c end, 1, 2, full_gc)
    emit({ op = name, shape = "16M", impl = "tern", ms = ms, peak = peak(), bytes = bytes,
      note = "out-of-place: allocates a fresh 64 MiB output each call" }, th)
    -- into a preallocated (already faulted-in) output: the kernel alone
    local ca, cb, co = a._c, b._c, o._c
    peak_reset()
    ms = bench(function()
      OUTP[0] = co
      assert(cop(OUTP, ca, cb) == 0)
    end, 1, 2)
    emit({ op = name .. "_out", shape = "16M", impl = "c_direct", ms = ms, peak = peak(), bytes = bytes,
      note = "same C entry point into a preallocated output" }, th)
  end
end

cases.add_16M = function(th)
  elementwise_case("add", function(a, b) return a + b end,
    function(o, a, b) return C.tn_binary(o, a, b, 0) end, 3)(th)
  -- memcpy of the same bytes (2 streams) and a LuaJIT loop c[i] = a[i] + b[i] (3 streams)
  local a, b, o = big_inputs()
  local pa, pb, po = ffi.cast("float *", a:data_ptr()), ffi.cast("float *", b:data_ptr()),
    ffi.cast("float *", o:data_ptr())
  local nbytes = 4 * M16
  local ms = bench(function() ffi.C.memcpy(po, pa, nbytes) end, 1, 2)
  emit({ op = "memcpy", shape = "16M", impl = "c_direct", ms = ms, peak = 0, bytes = 2 * nbytes,
    note = "libc memcpy of 64 MiB, single thread, warm destination" }, th)
  ms = bench(function()
    local d = ffi.C.malloc(nbytes)
    ffi.C.memcpy(d, pa, nbytes)
    ffi.C.free(d)
  end, 1, 2)
  emit({ op = "memcpy_fresh", shape = "16M", impl = "c_direct", ms = ms, peak = 0, bytes = 2 * nbytes,
    note = "malloc + memcpy + free of 64 MiB: the destination is fresh (page faults), as for an out-of-place op" }, th)
  ms = bench(function()
    for i = 0, M16 - 1 do po[i] = pa[i] + pb[i] end
  end, 1, 2)
  emit({ op = "add_loop", shape = "16M", impl = "luajit_loop", ms = ms, peak = 0, bytes = 3 * nbytes,
    note = "plain loop c[i]=a[i]+b[i] compiled by LuaJIT, single thread" }, th)
end
cases.mul_16M = elementwise_case("mul", function(a, b) return a * b end,
  function(o, a, b) return C.tn_binary(o, a, b, 2) end, 3)
cases.exp_16M = elementwise_case("exp", function(a) return a:exp() end,
  function(o, a) return C.tn_unary(o, a, 2) end, 2)

-- copy of a transposed 4096x4096 into contiguous memory
cases.copyT_4096 = function(th)
  tn.manual_seed(1)
  local x = tn.rand(4096, 4096)
  local xt = x:t()
  local o = tn.empty(4096, 4096)
  o:fill_(0)
  local bytes = 2 * 4 * 4096 * 4096
  peak_reset()
  local ms = bench(function() local c = xt:contiguous(); return c end, 1, 2, full_gc)
  emit({ op = "contiguous_T", shape = "4096x4096", impl = "tern", ms = ms, peak = peak(), bytes = bytes,
    note = "x:t():contiguous(), allocates its output" }, th)
  peak_reset()
  ms = bench(function() o:copy_(xt) end, 1, 2)
  emit({ op = "copy_T", shape = "4096x4096", impl = "tern", ms = ms, peak = peak(), bytes = bytes,
    note = "o:copy_(x:t()) into a preallocated output" }, th)
  local px, po = ffi.cast("float *", x:data_ptr()), ffi.cast("float *", o:data_ptr())
  ms = bench(function() ffi.C.memcpy(po, px, bytes / 2) end, 1, 2)
  emit({ op = "memcpy", shape = "4096x4096", impl = "c_direct", ms = ms, peak = 0, bytes = bytes,
    note = "libc memcpy of the same 64 MiB, single thread" }, th)
end

-- (3) matmul through tern vs cblas_sgemm on the same buffers
local blas_ok, blas = pcall(ffi.load, "openblas")
if not blas_ok then blas_ok, blas = pcall(ffi.load, "libopenblas.so.0") end

local function matmul_case(n)
  return function(th)
    tn.manual_seed(2)
    local a, b = tn.randn(n, n), tn.randn(n, n)
    local o = tn.empty(n, n)
    o:fill_(0)
    local flops = 2 * n * n * n
    local iters = n >= 1024 and 1 or 20
    peak_reset()
    local ms = bench(function(k)
      local c
      for _ = 1, k do c = a:matmul(b) end
      return c
    end, iters, 2)
    emit({ op = "matmul", shape = n .. "x" .. n .. "x" .. n, impl = "tern", ms = ms, peak = peak(),
      gflops = flops / (ms * 1e-3) / 1e9, note = "a:matmul(b) in a loop; outputs freed when the GC runs" }, th)
    -- the same with a GC cycle before each call (untimed): the freed output is recycled by
    -- malloc instead of fresh pages being faulted in, as PyTorch's refcounting gets it
    peak_reset()
    ms = bench(function() local c = a:matmul(b); return c end, 1, 2, full_gc)
    emit({ op = "matmul_gc", shape = n .. "x" .. n .. "x" .. n, impl = "tern", ms = ms, peak = peak(),
      gflops = flops / (ms * 1e-3) / 1e9, note = "a:matmul(b), collectgarbage() before each call (untimed)" }, th)
    -- tn_gemm into a preallocated output
    local ca, cb, co = a._c, b._c, o._c
    ms = bench(function(k)
      for _ = 1, k do assert(C.tn_gemm(co, ca, cb, 0, 0, 1, 0) == 0) end
    end, iters, 2)
    emit({ op = "gemm_out", shape = n .. "x" .. n .. "x" .. n, impl = "c_direct", ms = ms, peak = 0,
      gflops = flops / (ms * 1e-3) / 1e9, note = "tn_gemm into a preallocated output" }, th)
    if blas_ok then
      local pa, pb, po = ffi.cast("float *", a:data_ptr()), ffi.cast("float *", b:data_ptr()),
        ffi.cast("float *", o:data_ptr())
      ms = bench(function(k)
        for _ = 1, k do blas.cblas_sgemm(101, 111, 111, n, n, n, 1, pa, n, pb, n, 0, po, n) end
      end, iters, 2)
      emit({ op = "matmul", shape = n .. "x" .. n .. "x" .. n, impl = "c_direct", ms = ms, peak = 0,
        gflops = flops / (ms * 1e-3) / 1e9,
        note = "cblas_sgemm from libopenblas via the FFI, same buffers" }, th)
    else
      emit_line(json({ { "op", "matmul" }, { "impl", "c_direct" },
        { "note", "libopenblas not loadable: " .. tostring(blas) } }))
    end
  end
end
cases.matmul_1024 = matmul_case(1024)
cases.matmul_256 = matmul_case(256)

-- (4) reductions and softmax
cases.sum_4096 = function(th)
  tn.manual_seed(3)
  local x = tn.rand(4096, 4096)
  for dim = 1, 2 do
    peak_reset()
    local ms = bench(function(k)
      local s
      for _ = 1, k do s = x:sum(dim) end
      return s
    end, 3, 2)
    emit({ op = "sum_dim" .. dim, shape = "4096x4096", impl = "tern", ms = ms, peak = peak(),
      bytes = 4 * 4096 * 4096, note = "x:sum(" .. dim .. ") (torch: x.sum(" .. (dim - 1) .. "))" }, th)
  end
end

cases.softmax_4096 = function(th)
  tn.manual_seed(4)
  local x = tn.randn(4096, 4096)
  peak_reset()
  local ms = bench(function() local s = x:softmax(2); return s end, 1, 2, full_gc)
  emit({ op = "softmax_rows", shape = "4096x4096", impl = "tern", ms = ms, peak = peak(),
    bytes = 2 * 4 * 4096 * 4096, note = "x:softmax(2) (torch: x.softmax(1))" }, th)
end

-- torch peer ------------------------------------------------------------------------------

local function run_peer(th)
  if opts.peer ~= "torch" then return {}, "peer disabled (--peer=none)" end
  local cmd = string.format("%s %s/bench_tensor_torch.py --threads=%d --repeat=%d --cases=%s 2>&1",
    lib.PYTHON, here, th, REPEAT, table.concat(selected, ","))
  local lines, note = lib.peer_lines(cmd)
  if not lines then return {}, note end
  return lines
end

-- comparisons: per case, which lines to put side by side
local function get(th, op, shape, impl)
  local r = results[th] and results[th][op .. "|" .. shape .. "|" .. impl]
  return r
end

local ratio = lib.ratio

-- seconds per byte ratio (bandwidth ratio: other's GB/s over this one's)
local function bw_ratio(r, base)
  if not r or not base then return nil end
  return (r.ms / r.bytes) / (base.ms / base.bytes)
end

local compare = {
  add_16 = function(th)
    local t, tc, to = get(th, "add", "16", "tern"), get(th, "add", "16", "c_direct"), get(th, "add", "16", "torch")
    return { { "compare", "add_16_overhead" }, { "threads", th },
      { "tern_us", t and t.ms * 1e3 }, { "torch_us", to and to.ms * 1e3 },
      { "c_direct_us", tc and tc.ms * 1e3 },
      { "tern_over_torch", ratio(t and t.ms, to and to.ms) }, { "target", "<= 0.5" } }
  end,
  muladdsum_16 = function(th)
    local t, to = get(th, "muladdsum", "16", "tern"), get(th, "muladdsum", "16", "torch")
    return { { "compare", "muladdsum_16_overhead" }, { "threads", th },
      { "tern_us", t and t.ms * 1e3 }, { "torch_us", to and to.ms * 1e3 },
      { "tern_over_torch", ratio(t and t.ms, to and to.ms) }, { "target", "<= 0.5" } }
  end,
  copyT_4096 = function(th)
    local t, tc = get(th, "contiguous_T", "4096x4096", "tern"), get(th, "copy_T", "4096x4096", "tern")
    local m = get(th, "memcpy", "4096x4096", "c_direct")
    local to = get(th, "contiguous_T", "4096x4096", "torch")
    return { { "compare", "contiguous_T_4096" }, { "threads", th },
      { "tern_over_memcpy_bw", bw_ratio(t, m) }, { "copy_out_over_memcpy_bw", bw_ratio(tc, m) },
      { "tern_over_torch", ratio(t and t.ms, to and to.ms) } }
  end,
  sum_4096 = function(th)
    local f = { { "compare", "sum_dim_4096" }, { "threads", th } }
    for d = 1, 2 do
      local t, to = get(th, "sum_dim" .. d, "4096x4096", "tern"), get(th, "sum_dim" .. d, "4096x4096", "torch")
      f[#f + 1] = { "dim" .. d .. "_tern_over_torch", ratio(t and t.ms, to and to.ms) }
    end
    return f
  end,
  softmax_4096 = function(th)
    local t, to = get(th, "softmax_rows", "4096x4096", "tern"), get(th, "softmax_rows", "4096x4096", "torch")
    return { { "compare", "softmax_rows_4096" }, { "threads", th },
      { "tern_over_torch", ratio(t and t.ms, to and to.ms) } }
  end,
}
local function ew_compare(name)
  return function(th)
    local t, tk = get(th, name, "16M", "tern"), get(th, name .. "_out", "16M", "c_direct")
    local m = get(th, "memcpy", "16M", "c_direct")
    local l = get(th, "add_loop", "16M", "luajit_loop")
    local to, tto = get(th, name, "16M", "torch"), get(th, name .. "_out", "16M", "torch")
    return { { "compare", name .. "_16M_bandwidth" }, { "threads", th },
      { "tern_GBps", t and t.bytes / t.ms * 1e-6 }, { "memcpy_GBps", m and m.bytes / m.ms * 1e-6 },
      { "tern_over_memcpy_bw", bw_ratio(t, m) }, { "tern_out_over_memcpy_bw", bw_ratio(tk, m) },
      { "tern_over_memcpy_fresh_bw", bw_ratio(t, get(th, "memcpy_fresh", "16M", "c_direct")) },
      { "tern_over_loop_bw", bw_ratio(t, l) }, { "tern_out_over_loop_bw", bw_ratio(tk, l) },
      { "tern_over_torch", ratio(t and t.ms, to and to.ms) },
      { "tern_out_over_torch_out", ratio(tk and tk.ms, tto and tto.ms) }, { "target", "<= 1.2 (bw)" } }
  end
end
compare.add_16M = ew_compare("add")
compare.mul_16M = ew_compare("mul")
compare.exp_16M = ew_compare("exp")
local function mm_compare(n)
  local shape = n .. "x" .. n .. "x" .. n
  return function(th)
    local t, tg = get(th, "matmul", shape, "tern"), get(th, "gemm_out", shape, "c_direct")
    local tgc = get(th, "matmul_gc", shape, "tern")
    local b, to = get(th, "matmul", shape, "c_direct"), get(th, "matmul", shape, "torch")
    return { { "compare", "matmul_" .. n }, { "threads", th },
      { "tern_over_cblas", ratio(t and t.ms, b and b.ms) },
      { "tern_gc_over_cblas", ratio(tgc and tgc.ms, b and b.ms) },
      { "tn_gemm_over_cblas", ratio(tg and tg.ms, b and b.ms) },
      { "tern_over_torch", ratio(t and t.ms, to and to.ms) },
      { "target", n == 1024 and "tern_over_cblas <= 1.05" or nil } }
  end
end
compare.matmul_1024 = mm_compare(1024)
compare.matmul_256 = mm_compare(256)

-- main ------------------------------------------------------------------------------------

for _, th in ipairs(THREADS) do
  -- the peer runs first (alone on the machine); its lines are echoed next to tern's
  local peer_lines, peer_note = run_peer(th)
  local by_case = {}
  local peer_ok = false
  for _, line in ipairs(peer_lines) do
    local c = line:match('"case"%s*:%s*"([^"]*)"')
    if line:sub(1, 1) == "{" and c then
      by_case[c] = by_case[c] or {}
      table.insert(by_case[c], line)
      peer_ok = true
    elseif line:sub(1, 1) == "{" then
      emit_line(line) -- a note from the peer (e.g. torch not importable)
    elseif line ~= "" then
      emit_line(json({ { "impl", "torch" }, { "threads", th }, { "note", "peer output: " .. line } }))
    end
  end
  if peer_note then emit_line(json({ { "impl", "torch" }, { "threads", th }, { "note", peer_note } })) end
  if opts.peer == "torch" and not peer_ok then
    emit_line(json({ { "impl", "torch" }, { "threads", th }, { "note", "no torch results; ratios vs torch are null" } }))
  end

  tn.set_num_threads(th)
  for _, name in ipairs(selected) do
    local ok, err = pcall(cases[name], th)
    if not ok then
      emit_line(json({ { "op", name }, { "impl", "tern" }, { "threads", th }, { "error", tostring(err) } }))
    end
    for _, line in ipairs(by_case[name] or {}) do
      emit_line(line)
      local r = { op = field(line, "op"), shape = field(line, "shape"), impl = field(line, "impl"),
        ms = field(line, "median_ms"), bytes = field(line, "bytes_moved") }
      if r.op and r.shape and r.impl and r.ms then
        results[th] = results[th] or {}
        results[th][r.op .. "|" .. r.shape .. "|" .. r.impl] = r
      end
    end
    if compare[name] then emit_line(json(compare[name](th))) end
    if name == "exp_16M" or name == "mul_16M" and not wanted.exp_16M
        or name == "add_16M" and not wanted.mul_16M and not wanted.exp_16M then
      big = {} -- the 16M inputs are shared by the elementwise cases; drop them after the last
    end
    -- compiled traces anchor the tensors they captured as constants: flush them so the
    -- case's tensors can be collected and the next case's peak_bytes starts clean
    jit.flush()
    full_gc()
  end
end
