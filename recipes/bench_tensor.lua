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
--
-- --device=cuda (needs a GPU; exits 2 with a message without one): one run, --threads does not
-- apply, every line says "device":"cuda" and "threads":null; CUDA is asynchronous, so each timed
-- batch of calls sits between two tn.cuda.synchronize() calls (host clock), after warm-up, and
-- median_ms is per call. Progress goes to stderr. Its case groups:
--   overhead     add_16, muladdsum_16 on CUDA tensors: per call, launch included, one sync per batch
--   elementwise  add/mul/exp of 256M f32, add of 256M f16, each with a device-to-device copy
--                baseline of its dtype (o:copy_(a), and cudaMemcpyAsync through the FFI) measured
--                in the same run; GBps counts bytes read + written; copy of a transposed 8192²
--   matmul       8192³ f32 with TF32 on and off, f16, bf16: a:matmul(b), tn_gemm into a preallocated
--                output, and cublasGemmEx called directly through the FFI on the same buffers
--                (libcublas as libtern loaded it); TFLOPs
--   reduce       sum over each dim of 8192², softmax over the rows of 8192²
-- peak_bytes there is tn.cuda.memory_stats().peak. The torch peer runs with python3 (TERN_PYTHON
-- overrides) and torch.cuda.synchronize() around its timed batches; compare lines give ratios.

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
  "usage: luajit recipes/bench_tensor.lua [--device=cpu|cuda] [--threads=1,2] [--repeat=7]"
  .. " [--peer=torch|none] [--cases=overhead,elementwise,matmul,reduce|<case>,...]\n")
if opts.device ~= "cpu" and opts.device ~= "cuda" then
  io.stderr:write("bench_tensor: --device must be cpu or cuda\n")
  os.exit(2)
end
if opts.peer ~= "torch" and opts.peer ~= "none" and opts.device == "cuda" then
  io.stderr:write("bench_tensor: --peer must be torch or none\n")
  os.exit(2)
end

-- The cases --cases names (names or group names, comma separated; "all"), in ALL's order.
local function select_cases(groups, ALL)
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
  return selected, wanted
end

-- The fields every result line starts with, either device, in this order; cpu_ms falls back to
-- last_cpu (that of the bench() behind r). The caller appends its FLOP rate and the note.
local function result_fields(r, device, dtype, threads, last_cpu)
  local f = {
    { "op", r.op }, { "shape", r.shape }, { "device", device }, { "dtype", dtype },
    { "impl", r.impl }, { "median_ms", r.ms }, { "peak_bytes", r.peak }, { "threads", threads },
    { "cpu_ms", r.cpu or last_cpu },
  }
  if r.us_per_call then f[#f + 1] = { "us_per_call", r.us_per_call } end
  if r.bytes then
    f[#f + 1] = { "bytes_moved", r.bytes }
    f[#f + 1] = { "GBps", r.bytes / (r.ms * 1e-3) / 1e9 }
  end
  return f
end

-- The torch peer's output lines: its result lines by "case" (echoed after tern's own lines of
-- the case), its other JSON lines (notes) echoed now, anything else as a note tagged with tag
-- ({ "device", ... } or { "threads", ... }). Returns by_case and whether any result line came.
local function sort_peer_lines(lines, tag)
  local by_case, peer_ok = {}, false
  for _, line in ipairs(lines) do
    local c = line:match('"case"%s*:%s*"([^"]*)"')
    if line:sub(1, 1) == "{" and c then
      by_case[c] = by_case[c] or {}
      table.insert(by_case[c], line)
      peer_ok = true
    elseif line:sub(1, 1) == "{" then
      emit_line(line) -- a note from the peer (e.g. torch not importable)
    elseif line ~= "" then
      emit_line(json({ { "impl", "torch" }, tag, { "note", "peer output: " .. line } }))
    end
  end
  return by_case, peer_ok
end

-- Echoes a case's peer lines (nil: none) and hands each whole result to add(r) for the compare
-- lines.
local function echo_peer_results(lines, add)
  for _, line in ipairs(lines or {}) do
    emit_line(line)
    local r = { op = field(line, "op"), shape = field(line, "shape"), impl = field(line, "impl"),
      ms = field(line, "median_ms"), bytes = field(line, "bytes_moved") }
    if r.op and r.shape and r.impl and r.ms then add(r) end
  end
end

-- CUDA mode ----------------------------------------------------------------------------------
-- --device=cuda: one run (threads do not apply), its own case list (see the header), every JSON
-- line "device":"cuda". CUDA is asynchronous: each timed batch of calls sits between two
-- tn.cuda.synchronize() calls (host clock), after warm-up; medians over --repeat batches.
-- Progress goes to stderr. Returns the exit status.
-- The per-call overhead cases of one device, into cases: add of two 16-element tensors from
-- Lua, the C entry point alone (allocating and freeing its output, then into a preallocated
-- one), and the chain (a*b + a):sum(). d = {bench, peak_reset, peak, emit(fields, th), topts
-- (tensor options: the device), n (calls per timing), note_add (nil or the note of the Lua
-- add), note_chain}.
local function overhead_cases(cases, d)
  local bench, peak_reset, peak, emit, topts, N = d.bench, d.peak_reset, d.peak, d.emit, d.topts, d.n
  cases.add_16 = function(th)
    local a, b = tn.rand(16, topts), tn.rand(16, topts)
    peak_reset()
    local ms = bench(function(n)
      local c
      for _ = 1, n do c = a + b end
      return c
    end, N)
    emit({ op = "add", shape = "16", impl = "tern", ms = ms, us_per_call = ms * 1e3, peak = peak(),
      note = d.note_add }, th)
    -- the C entry point alone, allocating its output and freeing it
    local ca, cb = a._c, b._c
    local binary, free = C.tn_binary, C.tn_tensor_free
    local OUTP = ffi.new("tn_tensor *[1]")
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
    local o = tn.zeros(16, topts)
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
  -- a small chain: three ops and a 0-d result
  cases.muladdsum_16 = function(th)
    local a, b = tn.rand(16, topts), tn.rand(16, topts)
    peak_reset()
    local ms = bench(function(n)
      local r
      for _ = 1, n do r = (a * b + a):sum() end
      return r
    end, N / 2)
    emit({ op = "muladdsum", shape = "16", impl = "tern", ms = ms, us_per_call = ms * 1e3, peak = peak(),
      note = d.note_chain }, th)
  end
end

local function run_cuda()
  if not tn.cuda.is_available() then
    io.stderr:write("bench_tensor: --device=cuda needs a GPU (tn.cuda.is_available() is false)\n")
    return 2
  end
  local T0 = lib.now_ms()
  local function progress(msg)
    io.stderr:write(string.format("bench_tensor: [%.1f s] %s\n", (lib.now_ms() - T0) * 1e-3, msg))
    io.stderr:flush()
  end
  local REPEAT = math.max(5, tonumber(opts["repeat"]) or 7)
  local sync = tn.cuda.synchronize
  local CU = { device = "cuda" }
  local function cu(dtype) return { device = "cuda", dtype = dtype } end

  local groups = {
    overhead = { "add_16", "muladdsum_16" },
    elementwise = { "add_256M", "mul_256M", "exp_256M", "add_f16_256M", "copyT_8192" },
    matmul = { "matmul_8192" },
    reduce = { "sum_8192", "softmax_8192" },
  }
  local ALL = { "add_16", "muladdsum_16", "add_256M", "mul_256M", "exp_256M", "add_f16_256M",
    "copyT_8192", "matmul_8192", "sum_8192", "softmax_8192" }
  local selected, wanted = select_cases(groups, ALL)
  for c in pairs(wanted) do
    local known = false
    for _, x in ipairs(ALL) do if x == c then known = true end end
    if not known then
      io.stderr:write("bench_tensor: unknown --device=cuda case " .. c .. " (" .. table.concat(ALL, ", ")
        .. ", or the groups overhead, elementwise, matmul, reduce)\n")
      return 2
    end
  end

  -- libcublas and libcudart: the very objects libtern loaded (their paths from /proc/self/maps),
  -- else by name
  pcall(ffi.cdef, [[
int cublasCreate_v2(void **handle);
int cublasDestroy_v2(void *handle);
int cublasSetMathMode(void *handle, int mode);
int cublasSetStream_v2(void *handle, void *stream);
int cublasGemmEx(void *handle, int transa, int transb, int m, int n, int k, const void *alpha,
                 const void *A, int Atype, int lda, const void *B, int Btype, int ldb,
                 const void *beta, void *C, int Ctype, int ldc, int computeType, int algo);
int cudaMemcpyAsync(void *dst, const void *src, size_t count, int kind, void *stream);
]])
  local function load_lib(stem, names)
    local f = io.open("/proc/self/maps")
    if f then
      for line in f:lines() do
        local p = line:match("(/%S*/lib" .. stem .. "%.so[%.%d]*)$")
        if p then
          f:close()
          local ok, l = pcall(ffi.load, p)
          if ok then return l, p end
          break
        end
      end
      if io.type(f) == "file" then f:close() end
    end
    local errs = {}
    for _, n in ipairs(names) do
      local ok, l = pcall(ffi.load, n)
      if ok then return l, n end
      errs[#errs + 1] = tostring(l)
    end
    return nil, table.concat(errs, "; ")
  end
  local cublas, cublas_where = load_lib("cublas", { "cublas", "libcublas.so.13", "libcublas.so.12" })
  local cudart, cudart_where = load_lib("cudart", { "cudart", "libcudart.so.13", "libcudart.so.12" })
  progress("libcublas: " .. tostring(cublas_where) .. "; libcudart: " .. tostring(cudart_where))

  -- output
  local LAST_CPU
  local results = {} -- [op .. "|" .. shape .. "|" .. impl] = r
  local function emit(r)
    local f = result_fields(r, "cuda", r.dtype or "f32", nil, LAST_CPU)
    if r.flops then f[#f + 1] = { "TFLOPs", r.flops / (r.ms * 1e-3) / 1e12 } end
    if r.note then f[#f + 1] = { "note", r.note } end
    emit_line(json(f))
    results[r.op .. "|" .. r.shape .. "|" .. r.impl] = r
  end
  local function note(name, impl, msg)
    emit_line(json({ { "op", name }, { "device", "cuda" }, { "impl", impl }, { "note", msg } }))
  end

  -- fn(iters) queues iters calls; timed from a synchronised device to a synchronised device
  local function bench(fn, iters, warmup, prep)
    local xs, cs = lib.timed(function(n)
      local r = fn(n)
      sync()
      return r
    end, { iters = iters, warmup = warmup or 2, rep = REPEAT,
      prep = function() if prep then prep() end; sync() end })
    LAST_CPU = lib.median(cs)
    return lib.median(xs)
  end
  local function peak_reset()
    full_gc()
    sync()
    tn.cuda.reset_peak_memory()
  end
  local function peak() return tn.cuda.memory_stats().peak end
  local OUTP = ffi.new("tn_tensor *[1]")

  local cases = {}

  -- (1) per-call overhead of a small op from Lua, launch included: N calls, then one synchronize
  local NSMALL = 5000
  overhead_cases(cases, { bench = bench, peak_reset = peak_reset, peak = peak, emit = emit, topts = CU,
    n = NSMALL, note_add = "a + b on CUDA tensors, " .. NSMALL .. " calls then one tn.cuda.synchronize()",
    note_chain = "(a*b+a):sum() on CUDA, 3 ops per call, no host sync per call" })

  -- (2) large elementwise ops vs a device-to-device copy of the same dtype in the same run
  local M256 = 256 * 1024 * 1024
  local ESZ = { f32 = 4, f16 = 2 }
  local EW_ITERS = 10
  local big, copied = {}, {}
  local function big_inputs(dt)
    if not big[dt] then
      tn.manual_seed(0)
      local a, b = tn.rand(M256, cu(dt)), tn.rand(M256, cu(dt))
      local o = tn.zeros(M256, cu(dt))
      big[dt] = { a, b, o }
    end
    return big[dt][1], big[dt][2], big[dt][3]
  end
  local function copy_baseline(dt)
    if copied[dt] then return end
    copied[dt] = true
    local a, _, o = big_inputs(dt)
    local nbytes = ESZ[dt] * M256
    peak_reset()
    local ms = bench(function(k) for _ = 1, k do o:copy_(a) end end, EW_ITERS)
    emit({ op = "copy_" .. dt, shape = "256M", dtype = dt, impl = "tern", ms = ms, peak = peak(), bytes = 2 * nbytes,
      note = "o:copy_(a) device to device: the bandwidth baseline (bytes read + written)" })
    if cudart then
      local pa, po = a:data_ptr(), o:data_ptr()
      ms = bench(function(k)
        for _ = 1, k do
          local st = cudart.cudaMemcpyAsync(po, pa, nbytes, 3, nil)
          if st ~= 0 then error("cudaMemcpyAsync failed: cudaError " .. st) end
        end
      end, EW_ITERS)
      emit({ op = "copy_" .. dt, shape = "256M", dtype = dt, impl = "c_direct", ms = ms, peak = 0, bytes = 2 * nbytes,
        note = "cudaMemcpyAsync device to device through the FFI (libcudart), same buffers" })
    else
      note("copy_" .. dt, "c_direct", "libcudart not loadable: " .. tostring(cudart_where))
    end
  end

  local function ew_case(name, dt, streams, opfn, cop)
    return function()
      copy_baseline(dt)
      local a, b, o = big_inputs(dt)
      local bytes = streams * ESZ[dt] * M256
      peak_reset()
      local ms = bench(function(k)
        local c
        for _ = 1, k do c = opfn(a, b) end
        return c
      end, EW_ITERS, 2, full_gc)
      emit({ op = name, shape = "256M", dtype = dt, impl = "tern", ms = ms, peak = peak(), bytes = bytes,
        note = "out-of-place, output from the caching allocator each call (" .. EW_ITERS
          .. " calls per batch, garbage collected between batches)" })
      local ca, cb, co = a._c, b._c, o._c
      peak_reset()
      ms = bench(function(k)
        for _ = 1, k do
          OUTP[0] = co
          assert(cop(OUTP, ca, cb) == 0)
        end
      end, EW_ITERS)
      emit({ op = name .. "_out", shape = "256M", dtype = dt, impl = "c_direct", ms = ms, peak = peak(),
        bytes = bytes, note = "same C entry point into a preallocated output" })
    end
  end
  cases.add_256M = ew_case("add", "f32", 3, function(a, b) return a + b end,
    function(o, a, b) return C.tn_binary(o, a, b, 0) end)
  cases.mul_256M = ew_case("mul", "f32", 3, function(a, b) return a * b end,
    function(o, a, b) return C.tn_binary(o, a, b, 2) end)
  cases.exp_256M = ew_case("exp", "f32", 2, function(a) return a:exp() end,
    function(o, a) return C.tn_unary(o, a, 2) end)
  cases.add_f16_256M = ew_case("add_f16", "f16", 3, function(a, b) return a + b end,
    function(o, a, b) return C.tn_binary(o, a, b, 0) end)

  cases.copyT_8192 = function()
    copy_baseline("f32")
    tn.manual_seed(1)
    local x = tn.rand(8192, 8192, CU)
    local xt = x:t()
    local o = tn.zeros(8192, 8192, CU)
    local bytes = 2 * 4 * 8192 * 8192
    peak_reset()
    local ms = bench(function(k)
      local c
      for _ = 1, k do c = xt:contiguous() end
      return c
    end, EW_ITERS, 2, full_gc)
    emit({ op = "contiguous_T", shape = "8192x8192", impl = "tern", ms = ms, peak = peak(), bytes = bytes,
      note = "x:t():contiguous(), allocates its output" })
    peak_reset()
    ms = bench(function(k) for _ = 1, k do o:copy_(xt) end end, EW_ITERS)
    emit({ op = "copy_T", shape = "8192x8192", impl = "tern", ms = ms, peak = peak(), bytes = bytes,
      note = "o:copy_(x:t()) into a preallocated output" })
  end

  -- (3) GEMM 8192^3: tern (a:matmul(b), tn_gemm into a preallocated output) vs cublasGemmEx
  -- called directly on the same buffers, same operand layout, compute type and math mode
  local CUBLAS_TERN_MATH, CUBLAS_DEFAULT_MATH = 16, 0 -- DEFAULT | DISALLOW_REDUCED_PRECISION_REDUCTION
  local CUDA_TYPE = { f32 = 0, f16 = 2, bf16 = 14 }
  local COMPUTE_32F, COMPUTE_32F_FAST_TF32 = 68, 77
  local handles = {}
  local function cublas_handle(mode)
    if not handles[mode] then
      local h = ffi.new("void *[1]")
      local st = cublas.cublasCreate_v2(h)
      if st ~= 0 then error("cublasCreate_v2 failed: status " .. st) end
      st = cublas.cublasSetMathMode(h[0], mode)
      if st ~= 0 then error("cublasSetMathMode failed: status " .. st) end
      st = cublas.cublasSetStream_v2(h[0], nil) -- tern's default stream
      if st ~= 0 then error("cublasSetStream_v2 failed: status " .. st) end
      handles[mode] = h[0]
    end
    return handles[mode]
  end
  local ONE, ZERO = ffi.new("float[1]", 1), ffi.new("float[1]", 0)

  local N8 = 8192
  local MM = {
    { name = "tf32", dtype = "f32", tf32 = true, iters = 10 },
    { name = "f32", dtype = "f32", tf32 = false, iters = 3 },
    { name = "f16", dtype = "f16", iters = 20 },
    { name = "bf16", dtype = "bf16", iters = 20 },
  }
  cases.matmul_8192 = function()
    local shape = N8 .. "x" .. N8 .. "x" .. N8
    local flops = 2 * N8 * N8 * N8
    local tf32_was = tn.cuda.get_tf32()
    local ok, err = pcall(function()
      local ins = {}
      for _, v in ipairs(MM) do
        progress("matmul_8192 " .. v.name)
        if not ins[v.dtype] then
          ins = {} -- one dtype's inputs at a time
          full_gc()
          tn.manual_seed(2)
          local a, b = tn.randn(N8, N8, cu(v.dtype)), tn.randn(N8, N8, cu(v.dtype))
          ins[v.dtype] = { a, b, tn.zeros(N8, N8, cu(v.dtype)) }
        end
        local a, b, o = ins[v.dtype][1], ins[v.dtype][2], ins[v.dtype][3]
        if v.dtype == "f32" then tn.cuda.set_tf32(v.tf32) end
        local op = "matmul_" .. v.name
        local mode = v.tf32 == nil and "" or (v.tf32 and ", TF32 on (tn.cuda.set_tf32(true))" or ", TF32 off")
        peak_reset()
        local ms = bench(function(k)
          local c
          for _ = 1, k do c = a:matmul(b) end
          return c
        end, v.iters, 2, full_gc)
        emit({ op = op, shape = shape, dtype = v.dtype, impl = "tern", ms = ms, peak = peak(), flops = flops,
          note = "a:matmul(b), output from the caching allocator" .. mode })
        local ca, cb, co = a._c, b._c, o._c
        ms = bench(function(k)
          for _ = 1, k do assert(C.tn_gemm(co, ca, cb, 0, 0, 1, 0) == 0) end
        end, v.iters)
        emit({ op = op .. "_out", shape = shape, dtype = v.dtype, impl = "c_direct", ms = ms, peak = 0, flops = flops,
          note = "tn_gemm into a preallocated output" .. mode })
        if cublas then
          local t = CUDA_TYPE[v.dtype]
          local compute = v.tf32 and COMPUTE_32F_FAST_TF32 or COMPUTE_32F
          local pa, pb, po = a:data_ptr(), b:data_ptr(), o:data_ptr()
          local function direct(math_mode)
            local h = cublas_handle(math_mode)
            return bench(function(k)
              for _ = 1, k do
                -- row-major C = A B as column-major C^T = B^T A^T (as cuda/linalg.cu does)
                local st = cublas.cublasGemmEx(h, 0, 0, N8, N8, N8, ONE, pb, t, N8, pa, t, N8, ZERO, po, t, N8,
                  compute, -1)
                if st ~= 0 then error("cublasGemmEx failed: status " .. st) end
              end
            end, v.iters)
          end
          -- a cuBLAS failure here is reported and the other variants go on
          local dok, derr = pcall(function()
            ms = direct(CUBLAS_TERN_MATH)
            emit({ op = op, shape = shape, dtype = v.dtype, impl = "cublas", ms = ms, peak = 0, flops = flops,
              note = "cublasGemmEx through the FFI on the same buffers, compute type "
                .. (v.tf32 and "32F_FAST_TF32" or "32F") .. ", math mode as tern's (DISALLOW_REDUCED_PRECISION_REDUCTION)" })
            if v.dtype ~= "f32" then
              ms = direct(CUBLAS_DEFAULT_MATH)
              emit({ op = op, shape = shape, dtype = v.dtype, impl = "cublas_default_math", ms = ms, peak = 0,
                flops = flops, note = "cublasGemmEx, CUBLAS_DEFAULT_MATH (reduced-precision reductions allowed, as torch's default)" })
            end
          end)
          if not dok then
            emit_line(json({ { "op", op }, { "shape", shape }, { "device", "cuda" }, { "dtype", v.dtype },
              { "impl", "cublas" }, { "error", tostring(derr) } }))
          end
        elseif v.name == "tf32" then
          note("matmul", "cublas", "libcublas not loadable: " .. tostring(cublas_where))
        end
      end
    end)
    tn.cuda.set_tf32(tf32_was)
    if not ok then error(err, 0) end
  end

  -- (4) reductions and softmax
  cases.sum_8192 = function()
    tn.manual_seed(3)
    local x = tn.rand(8192, 8192, CU)
    for dim = 1, 2 do
      peak_reset()
      local ms = bench(function(k)
        local s
        for _ = 1, k do s = x:sum(dim) end
        return s
      end, 50)
      emit({ op = "sum_dim" .. dim, shape = "8192x8192", impl = "tern", ms = ms, peak = peak(),
        bytes = 4 * 8192 * 8192, note = "x:sum(" .. dim .. ") (torch: x.sum(" .. (dim - 1) .. ")), bytes read" })
    end
  end
  cases.softmax_8192 = function()
    tn.manual_seed(4)
    local x = tn.randn(8192, 8192, CU)
    peak_reset()
    local ms = bench(function(k)
      local s
      for _ = 1, k do s = x:softmax(2) end
      return s
    end, 20, 2, full_gc)
    emit({ op = "softmax_rows", shape = "8192x8192", impl = "tern", ms = ms, peak = peak(),
      bytes = 2 * 4 * 8192 * 8192, note = "x:softmax(2) (torch: x.softmax(1))" })
  end

  -- comparisons (ratios; each names its target from issue 7)
  local ratio = lib.ratio
  local function get(op, shape, impl) return results[op .. "|" .. shape .. "|" .. impl] end
  local function gbps(r) return r and r.bytes and r.bytes / (r.ms * 1e-3) / 1e9 end
  local function tflops(r) return r and r.flops and r.flops / (r.ms * 1e-3) / 1e12 end
  local function ms(r) return r and r.ms end
  local compare = {}
  local function overhead_compare(name, op)
    return function()
      local t, tc, tco = get(op, "16", "tern"), get(op, "16", "c_direct"), get("add_out", "16", "c_direct")
      local to, too = get(op, "16", "torch"), get(op .. "_out", "16", "torch")
      local f = { { "compare", name .. "_overhead" }, { "device", "cuda" },
        { "tern_us", t and t.ms * 1e3 }, { "torch_us", to and to.ms * 1e3 } }
      if op == "add" then
        f[#f + 1] = { "c_direct_us", tc and tc.ms * 1e3 }
        f[#f + 1] = { "c_direct_out_us", tco and tco.ms * 1e3 }
        f[#f + 1] = { "torch_out_us", too and too.ms * 1e3 }
      end
      f[#f + 1] = { "tern_over_torch", ratio(ms(t), ms(to)) }
      f[#f + 1] = { "target", op == "add" and "tern_us <= 10 and tern_over_torch <= 1" or "tern_over_torch <= 1" }
      return f
    end
  end
  compare.add_16 = overhead_compare("add_16", "add")
  compare.muladdsum_16 = overhead_compare("muladdsum_16", "muladdsum")
  local function ew_compare(name, dt)
    return function()
      local t, tk = get(name, "256M", "tern"), get(name .. "_out", "256M", "c_direct")
      local cp, cpd = get("copy_" .. dt, "256M", "tern"), get("copy_" .. dt, "256M", "c_direct")
      local to, tko, cpo = get(name, "256M", "torch"), get(name .. "_out", "256M", "torch"),
        get("copy_" .. dt, "256M", "torch")
      return { { "compare", name .. "_256M_bandwidth" }, { "device", "cuda" }, { "dtype", dt },
        { "tern_GBps", gbps(t) }, { "tern_out_GBps", gbps(tk) }, { "copy_GBps", gbps(cp) },
        { "memcpy_GBps", gbps(cpd) }, { "torch_GBps", gbps(to) }, { "torch_copy_GBps", gbps(cpo) },
        { "tern_frac_of_copy_bw", ratio(gbps(t), gbps(cp)) },
        { "tern_out_frac_of_copy_bw", ratio(gbps(tk), gbps(cp)) },
        { "torch_frac_of_torch_copy_bw", ratio(gbps(to), gbps(cpo)) },
        { "tern_over_torch", ratio(ms(t), ms(to)) },
        { "tern_out_over_torch_out", ratio(ms(tk), ms(tko)) },
        { "target", "tern_frac_of_copy_bw >= 0.8; tern_over_torch <= 1.1" } }
    end
  end
  compare.add_256M = ew_compare("add", "f32")
  compare.mul_256M = ew_compare("mul", "f32")
  compare.exp_256M = ew_compare("exp", "f32")
  compare.add_f16_256M = ew_compare("add_f16", "f16")
  compare.copyT_8192 = function()
    local t, tc = get("contiguous_T", "8192x8192", "tern"), get("copy_T", "8192x8192", "tern")
    local cp = get("copy_f32", "256M", "tern")
    local to, tco = get("contiguous_T", "8192x8192", "torch"), get("copy_T", "8192x8192", "torch")
    return { { "compare", "contiguous_T_8192" }, { "device", "cuda" },
      { "tern_frac_of_copy_bw", ratio(gbps(t), gbps(cp)) }, { "copy_out_frac_of_copy_bw", ratio(gbps(tc), gbps(cp)) },
      { "tern_over_torch", ratio(ms(t), ms(to)) }, { "copy_out_over_torch", ratio(ms(tc), ms(tco)) } }
  end
  compare.matmul_8192 = function()
    local shape = N8 .. "x" .. N8 .. "x" .. N8
    local out = {}
    for _, v in ipairs(MM) do
      local op = "matmul_" .. v.name
      local t, tg = get(op, shape, "tern"), get(op .. "_out", shape, "c_direct")
      local cb, cbd, to = get(op, shape, "cublas"), get(op, shape, "cublas_default_math"), get(op, shape, "torch")
      out[#out + 1] = json({ { "compare", op .. "_8192" }, { "device", "cuda" }, { "dtype", v.dtype },
        { "tern_TFLOPs", tflops(t) }, { "tn_gemm_TFLOPs", tflops(tg) }, { "cublas_TFLOPs", tflops(cb) },
        { "cublas_default_math_TFLOPs", tflops(cbd) }, { "torch_TFLOPs", tflops(to) },
        { "tern_frac_of_cublas", ratio(ms(cb), ms(t)) }, { "tn_gemm_frac_of_cublas", ratio(ms(cb), ms(tg)) },
        { "tern_over_torch", ratio(ms(t), ms(to)) },
        { "target", (v.dtype ~= "f32" and "tern_frac_of_cublas >= 0.9; " or "") .. "tern_over_torch <= 1.1" } })
    end
    return out
  end
  compare.sum_8192 = function()
    local f = { { "compare", "sum_dim_8192" }, { "device", "cuda" } }
    for d = 1, 2 do
      local t, to = get("sum_dim" .. d, "8192x8192", "tern"), get("sum_dim" .. d, "8192x8192", "torch")
      f[#f + 1] = { "dim" .. d .. "_tern_GBps", gbps(t) }
      f[#f + 1] = { "dim" .. d .. "_tern_over_torch", ratio(ms(t), ms(to)) }
    end
    f[#f + 1] = { "target", "tern_over_torch <= 1.1" }
    return f
  end
  compare.softmax_8192 = function()
    local t, to = get("softmax_rows", "8192x8192", "tern"), get("softmax_rows", "8192x8192", "torch")
    return { { "compare", "softmax_rows_8192" }, { "device", "cuda" }, { "tern_GBps", gbps(t) },
      { "tern_over_torch", ratio(ms(t), ms(to)) }, { "target", "tern_over_torch <= 1.1" } }
  end

  -- the torch peer runs first, alone on the GPU (its process ends before tern's work starts).
  -- python3 on PATH (the GPU machine's holds torch; TERN_PYTHON overrides); its stderr (progress,
  -- a traceback) goes straight to ours.
  local by_case = {}
  if opts.peer == "torch" then
    local py = os.getenv("TERN_PYTHON") or "python3"
    progress("torch peer (" .. py .. ")")
    local cmd = string.format("%s %s/bench_tensor_torch.py --device=cuda --repeat=%d --cases=%s",
      py, here, REPEAT, table.concat(selected, ","))
    local lines = lib.peer_lines(cmd) or {}
    local peer_ok
    by_case, peer_ok = sort_peer_lines(lines, { "device", "cuda" })
    if not peer_ok then
      emit_line(json({ { "impl", "torch" }, { "device", "cuda" },
        { "note", "no torch results (" .. cmd .. "); ratios vs torch are null" } }))
    end
    progress("torch peer done")
  else
    emit_line(json({ { "impl", "torch" }, { "device", "cuda" }, { "note", "peer disabled (--peer=none)" } }))
  end

  tn.cuda.set_device(0)
  local rc = 0
  for _, name in ipairs(selected) do
    progress(name)
    local ok, err = pcall(cases[name])
    if not ok then
      rc = 1
      emit_line(json({ { "op", name }, { "device", "cuda" }, { "impl", "tern" }, { "error", tostring(err) } }))
    end
    echo_peer_results(by_case[name], function(r)
      if r.op:match("^matmul") then r.flops = 2 * N8 * N8 * N8 end
      results[r.op .. "|" .. r.shape .. "|" .. r.impl] = r
    end)
    if compare[name] then
      local c = compare[name]()
      if type(c[1]) == "string" then
        for _, l in ipairs(c) do emit_line(l) end
      else
        emit_line(json(c))
      end
    end
    -- the big inputs are shared by the elementwise cases: drop them after the last one
    local last_ew
    for _, c in ipairs(selected) do if c:match("_256M$") or c == "copyT_8192" then last_ew = c end end
    if name == last_ew then big = {} end
    jit.flush()
    full_gc()
  end
  for _, h in pairs(handles) do cublas.cublasDestroy_v2(h) end
  progress("done")
  return rc
end

if opts.device == "cuda" then os.exit(run_cuda()) end

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
local selected, wanted = select_cases(groups, ALL)

-- output ------------------------------------------------------------------------------------

local LAST_CPU
-- results[threads][op .. "|" .. shape .. "|" .. impl] = median_ms
local results = {}

local function emit(r, threads)
  local f = result_fields(r, "cpu", "f32", threads, LAST_CPU)
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

-- (1) per-op overhead: add of two 16-element tensors, called from Lua, and a small chain
overhead_cases(cases, { bench = bench, peak_reset = peak_reset, peak = peak, emit = emit, topts = {}, n = 20000,
  note_chain = "(a*b+a):sum(), 3 ops per call" })

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
  local by_case, peer_ok = sort_peer_lines(peer_lines, { "threads", th })
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
    echo_peer_results(by_case[name], function(r)
      results[th] = results[th] or {}
      results[th][r.op .. "|" .. r.shape .. "|" .. r.impl] = r
    end)
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
