-- tern.cuda: CUDA devices, streams and the caching allocator's figures (cuda/device.cu).
--
--   local tn = require "tern"
--   if tn.cuda.is_available() then
--     tn.cuda.set_device(0)
--     local s = tn.cuda.Stream()
--     tn.cuda.set_stream(s)           -- this thread's work and allocations go to s
--     ...
--     s:synchronize()
--     tn.cuda.set_stream(nil)         -- back to the default stream
--     print(tn.cuda.memory_stats().peak)
--   end
--
-- Device indices are 0-based (they are values, as CUDA_VISIBLE_DEVICES and nvidia-smi number
-- them). On a build without CUDA or a machine without a GPU, is_available() is false,
-- device_count() is 0 and the other functions raise an error that says which.
local lib = require "tern.lib"

local ffi, C, check = lib.ffi, lib.C, lib.check

local M = {}

function M.is_available() return C.tn_cuda_device_count() > 0 end
function M.device_count() return C.tn_cuda_device_count() end

function M.set_device(index)
  if type(index) ~= "number" or index % 1 ~= 0 then
    error("tn.cuda.set_device: index must be an integer (0-based), got " .. tostring(index), 2)
  end
  check(C.tn_cuda_set_device(index), 2)
end

function M.current_device()
  local out = ffi.new("int32_t[1]")
  check(C.tn_cuda_get_device(out), 2)
  return out[0]
end

function M.synchronize() check(C.tn_cuda_synchronize(), 2) end

-- TF32 tensor cores for f32 matmul / bmm / mm on CUDA (default true): inputs rounded to a
-- 10-bit mantissa, f32 accumulation; false computes in full f32. Process-wide; a setting, so it
-- also works without a GPU (f16 / bf16 always use tensor cores, f64 never uses TF32).
function M.set_tf32(on)
  if type(on) ~= "boolean" then
    error("tn.cuda.set_tf32: expected a boolean, got " .. type(on), 2)
  end
  check(C.tn_cuda_set_tf32(on and 1 or 0), 2)
end

function M.get_tf32() return C.tn_cuda_get_tf32() ~= 0 end

-- Index range checks of gather / scatter_add / index_select / index_add / embedding on the GPU.
-- false (the default): checked on the device without waiting; an out-of-range index makes the op
-- write nothing and its error is raised by the next synchronize(), Stream:synchronize() or copy to
-- the host (item, tolist, cpu). true (debugging): each call waits and fails itself, as on the CPU.
-- The default is true when the environment variable TERN_CUDA_SYNC_CHECKS is set (not "0").
-- Process-wide; a setting, so it also works without a GPU.
function M.set_sync_checks(on)
  if type(on) ~= "boolean" then
    error("tn.cuda.set_sync_checks: expected a boolean, got " .. type(on), 2)
  end
  check(C.tn_cuda_set_sync_checks(on and 1 or 0), 2)
end

function M.get_sync_checks() return C.tn_cuda_get_sync_checks() ~= 0 end

-- Streams ----------------------------------------------------------------------------------------

local Stream = {}
Stream.__index = Stream

local function free_stream(p) C.tn_cuda_stream_free(p) end

-- tn.cuda.Stream(): a new non-blocking stream on the current device.
function M.Stream()
  local out = ffi.new("tn_cuda_stream_t *[1]")
  check(C.tn_cuda_stream_new(out), 2)
  return setmetatable({ _c = ffi.gc(out[0], free_stream) }, Stream)
end

local function is_stream(s) return getmetatable(s) == Stream end

-- Waits for the stream's work.
function Stream:synchronize() check(C.tn_cuda_stream_synchronize(self._c), 2) end

-- Waits for the stream's work and releases it now (the finalizer would otherwise).
function Stream:free()
  if self._c ~= nil then
    C.tn_cuda_stream_free(ffi.gc(self._c, nil))
    self._c = nil
  end
end

Stream.__tostring = function(s) return s._c ~= nil and "tn.cuda.Stream" or "tn.cuda.Stream (freed)" end

local current -- the Stream object set last on this (the only Lua) thread

-- The calling thread's current stream: nil = the default stream.
function M.set_stream(s)
  if s ~= nil and not is_stream(s) then
    error("tn.cuda.set_stream: expected a tn.cuda.Stream or nil, got " .. type(s), 2)
  end
  if s ~= nil and s._c == nil then error("tn.cuda.set_stream: the stream was freed", 2) end
  check(C.tn_cuda_set_stream(s and s._c or nil), 2)
  current = s
end

function M.current_stream() return current end

-- Marks t's memory as also used on stream s (nil: the default stream), so that freeing t
-- does not hand its block to other work before s has passed this point.
function M.record_stream(t, s)
  if type(t) ~= "table" or t._c == nil then error("tn.cuda.record_stream: t must be a tensor", 2) end
  if s ~= nil and not is_stream(s) then
    error("tn.cuda.record_stream: expected a tn.cuda.Stream or nil, got " .. type(s), 2)
  end
  check(C.tn_cuda_record_stream(t._c, s and s._c or nil), 2)
end

-- Memory -----------------------------------------------------------------------------------------

local function device_arg(fname, device)
  if device == nil then return -1 end
  if type(device) ~= "number" or device % 1 ~= 0 or device < 0 then
    error(fname .. ": device must be a 0-based device index, got " .. tostring(device), 3)
  end
  return device
end

-- The caching allocator's figures for a device (default: the current one), in bytes:
-- in_use (live tensors), peak, reserved (held from the driver), cached (free blocks kept for
-- reuse), pending (freed blocks still used by other streams) and the counters allocs, frees,
-- hits (served from the cache) and raw_allocs (cudaMalloc calls).
function M.memory_stats(device)
  local st = ffi.new("tn_pool_stats")
  check(C.tn_cuda_memory_stats(st, device_arg("tn.cuda.memory_stats", device)), 2)
  local r = {}
  for _, k in ipairs({ "in_use", "peak", "reserved", "cached", "pending", "allocs", "frees", "hits",
    "raw_allocs" }) do
    r[k] = tonumber(st[k])
  end
  return r
end

function M.reset_peak_memory(device)
  check(C.tn_cuda_memory_reset_peak(device_arg("tn.cuda.reset_peak_memory", device)), 2)
end

-- Returns every cached block of every device (and the pinned host buffers) to the driver.
function M.empty_cache() C.tn_memory_empty_cache(1) end

-- Bounds the cached bytes of each device's pool (0: free every block at once).
function M.set_cache_limit(bytes)
  if type(bytes) ~= "number" or bytes < 0 then
    error("tn.cuda.set_cache_limit: bytes must be a non-negative number", 2)
  end
  C.tn_memory_set_cache_limit(1, bytes)
end

return M
