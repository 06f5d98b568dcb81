-- tern.lib: the FFI binding of libtern — cdef, library load, status checks, dtype and device
-- tables, and the wrapping of owning tn_tensor pointers into Lua tensor objects.
--
-- The cdef is generated from core/tern.h at build time (lua/tern/cdef.lua); libtern.so is
-- loaded from the folder of this file (an absolute path), or from $TERN_LIB.
local ffi = require "ffi"

local M = {}

local function package_dir()
  local src = debug.getinfo(1, "S").source
  local dir = src:match("^@(.*)/[^/]*$") or "."
  if dir:sub(1, 1) ~= "/" then
    local pwd = os.getenv("PWD")
    if not pwd then
      local p = io.popen("pwd")
      pwd = p and p:read("*l") or "."
      if p then p:close() end
    end
    dir = pwd .. "/" .. (dir:gsub("^%./", ""))
  end
  return dir
end

M.dir = package_dir()

local ok_cdef, cdef = pcall(require, "tern.cdef")
if not ok_cdef then
  error("tern: lua/tern/cdef.lua is missing; build the library first "
    .. "(cmake -B build && cmake --build build), see README.md", 2)
end
ffi.cdef(cdef)

-- OpenMP threads wait passively (sleep) between parallel regions unless the user chose
-- otherwise: libgomp's default spinning makes every op 10-40x slower as soon as another
-- process (an OpenBLAS pool, a second rank, a data loader) shares the cores. libgomp reads
-- the variable when it is loaded, i.e. with libtern just below.
ffi.cdef("int setenv(const char *name, const char *value, int overwrite);")
ffi.C.setenv("OMP_WAIT_POLICY", "PASSIVE", 0)
-- OpenBLAS's own (pthread) workers busy-wait 2^28 cycles (~0.1 s) after every BLAS call by
-- default, so the OpenMP loop that follows a GEMM (a log-softmax over its output, a tanh
-- backward) runs against a spinning worker on the same core: on 2 cores the pruned RNN-T
-- step took 135 ms with that and 115 ms with 2^4 (recipes/bench_rnnt.lua). OpenBLAS reads
-- the variable when it is loaded, with libtern just below.
ffi.C.setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0)

local libpath = os.getenv("TERN_LIB") or (M.dir .. "/libtern.so")
local ok_load, C = pcall(ffi.load, libpath)
if not ok_load then
  error("tern: cannot load " .. libpath .. ": " .. tostring(C)
    .. " (build it with cmake, or point TERN_LIB at libtern.so)", 2)
end
-- Error messages name dims, positions, narrow's start, select's index and list positions the
-- way Lua users type them: 1-based (values read from index tensors stay 0-based).
C.tn_set_dim_base(1)
M.C = C
M.ffi = ffi

-- dtypes -------------------------------------------------------------------------------------

M.dtypes = { f32 = 0, f64 = 1, f16 = 2, bf16 = 3, i32 = 4, i64 = 5, u8 = 6 }
M.dtype_names = { [0] = "f32", "f64", "f16", "bf16", "i32", "i64", "u8" }
M.dtype_aliases = {
  f32 = 0, float32 = 0, float = 0,
  f64 = 1, float64 = 1, double = 1,
  f16 = 2, float16 = 2, half = 2,
  bf16 = 3, bfloat16 = 3,
  i32 = 4, int32 = 4, int = 4,
  i64 = 5, int64 = 5, long = 5,
  u8 = 6, uint8 = 6, byte = 6, bool = 6,
}
M.is_float = { [0] = true, true, true, true, false, false, false }
-- element pointer types for direct reads and writes
M.ptr_types = {
  [0] = ffi.typeof("float *"), ffi.typeof("double *"), ffi.typeof("uint16_t *"),
  ffi.typeof("uint16_t *"), ffi.typeof("int32_t *"), ffi.typeof("int64_t *"),
  ffi.typeof("uint8_t *"),
}
M.devices = { cpu = 0, cuda = 1 }
M.device_names = { [0] = "cpu", "cuda" }

-- Resolve a dtype given as a name (or the enum number); level names the caller for errors.
function M.dtype_of(d, argname, level)
  if type(d) == "number" and M.dtype_names[d] then return d end
  local v = type(d) == "string" and M.dtype_aliases[d]
  if not v then
    error(string.format("%s: unknown dtype %s (expected f32, f64, f16, bf16, i32, i64, u8)",
      argname or "dtype", tostring(d)), (level or 2) + 1)
  end
  return v
end

function M.device_of(d, argname, level)
  if d == nil then return 0 end
  if type(d) == "number" and M.device_names[d] then return d end
  local name = type(d) == "string" and d:match("^(%a+)")
  local v = name and M.devices[name]
  if not v then
    error(string.format("%s: unknown device %s (expected \"cpu\" or \"cuda\")",
      argname or "device", tostring(d)), (level or 2) + 1)
  end
  return v
end

-- Do two tn_tensor cdata have the same shape?
function M.same_shape(a, b)
  if a.ndim ~= b.ndim then return false end
  for i = 0, a.ndim - 1 do
    if a.shape[i] ~= b.shape[i] then return false end
  end
  return true
end

-- status checks ------------------------------------------------------------------------------

function M.last_error()
  return ffi.string(C.tn_last_error())
end

-- Raise the C error message at the given level (counted from the caller of check).
-- build wrapped so that the errors it raises come out at the wrapper's caller (the option
-- checks of constructors such as tn.optim.lr.* and tn.amp.*). Returns build's first result.
function M.at_caller(build)
  return function(o)
    local ok, r = pcall(build, o)
    if not ok then error(r, 2) end
    return r
  end
end

function M.check(status, level)
  if status ~= 0 then
    error(ffi.string(C.tn_last_error()), (level or 2) + 1)
  end
end

-- native memory and the Lua GC ----------------------------------------------------------------
-- Lua sees a tensor as a small table and cdata; its native bytes are invisible to the GC.
-- After each allocation we compare the bytes tern holds (CPU and CUDA storages together: a
-- dead CUDA tensor holds device memory until its finalizer runs) with a threshold and run a GC
-- cycle when they doubled since the last one, so loops need no manual collectgarbage().

local memory_current = C.tn_memory_current
local gc_floor = 64 * 1024 * 1024
local gc_threshold = gc_floor

local function held() return tonumber(memory_current(0)) + tonumber(memory_current(1)) end

local function nudge_gc()
  local cur = held()
  if cur > gc_threshold then
    collectgarbage("collect")
    gc_threshold = math.max(gc_floor, 2 * held())
  end
end
M.nudge_gc = nudge_gc

function M.set_gc_floor(bytes)
  gc_floor = bytes
  gc_threshold = math.max(gc_floor, 2 * held())
end

-- wrapping ---------------------------------------------------------------------------------

local tn_free = C.tn_tensor_free
local Tensor_mt -- set by tern.tensor

function M.set_tensor_mt(mt) Tensor_mt = mt end

-- Take ownership of a new tn_tensor* reference and return the Lua tensor.
local gc = ffi.gc
local setmetatable = setmetatable
function M.wrap(p)
  nudge_gc()
  return setmetatable({ _c = gc(p, tn_free) }, Tensor_mt)
end

-- One reusable out-pointer box: calls are not re-entrant from Lua, so one box suffices.
M.OUT = ffi.new("tn_tensor *[1]")
M.OUT2 = ffi.new("tn_tensor *[1]")

M.i64_buf = ffi.typeof("int64_t[?]")
M.i32_buf = ffi.typeof("int32_t[?]")

return M
