-- Specs of tn.cuda (cuda/device.cu): devices, streams and the caching allocator. On a machine
-- without a GPU (or a build without CUDA) the first block checks that every entry point says
-- so clearly; the #gpu blocks need a GPU and run the allocator's behaviour through CUDA tensors:
-- in-use and peak bytes, reuse of freed blocks, empty_cache, cache limit, streams,
-- record_stream and the out-of-memory message. The pool's logic itself is checked without a
-- GPU on a mock device by spec/c/test_pool.c.
local h = require "helpers.init"
local tn = h.tn
local cuda = tn.cuda

local function contains(s, part)
  assert.truthy(s:find(part, 1, true), "'" .. s .. "' does not contain '" .. part .. "'")
end

local function error_of(fn)
  local ok, msg = pcall(fn)
  assert.is_false(ok, "expected an error")
  return tostring(msg)
end

-- a CUDA build without a GPU names the driver in its errors, a CPU-only build the toolkit
local built_with_cuda = (function()
  local ok, msg = pcall(cuda.synchronize)
  return ok or not tostring(msg):find("built without CUDA", 1, true)
end)()

describe("tn.cuda", function()
  describe("without a GPU", function()
    if cuda.is_available() then return end

    it("reports no device", function()
      assert.is_false(cuda.is_available())
      assert.are.same(0, cuda.device_count())
      assert.is_false(tn.has_cuda())
      assert.is_nil(cuda.current_stream())
    end)

    it("raises an error naming the call and why for every device operation", function()
      local why = built_with_cuda and "no CUDA device is available" or "tern was built without CUDA"
      for name, fn in pairs({
        cuda_synchronize = cuda.synchronize,
        cuda_get_device = cuda.current_device,
        cuda_stream_new = cuda.Stream,
        cuda_memory_stats = cuda.memory_stats,
        cuda_memory_reset_peak = cuda.reset_peak_memory,
      }) do
        local msg = error_of(function() local r = fn() return r end) -- not a tail call: a caller line
        contains(msg, why)
        contains(msg, "cuda_spec.lua:") -- raised at the caller's line
        if not built_with_cuda then contains(msg, name) end
      end
      contains(error_of(function() cuda.set_device(0) end), built_with_cuda and "device 0 does not exist" or why)
      contains(error_of(function() return tn.empty(2, 3, { device = "cuda" }) end), why)
      contains(error_of(function() return tn.ones(2):cuda() end), why)
    end)

    it("keeps the CPU working: set_stream(nil), empty_cache and the cache figures", function()
      cuda.set_stream(nil)
      assert.is_nil(cuda.current_stream())
      cuda.empty_cache()
      cuda.set_cache_limit(0)
      assert.are.same(0, tn.memory_stats("cuda").cached)
      assert.are.same(0, tn.memory_stats("cuda").current)
    end)
  end)

  it("checks its arguments", function()
    contains(error_of(function() cuda.set_device("0") end), "index must be an integer")
    contains(error_of(function() cuda.set_device(0.5) end), "index must be an integer")
    contains(error_of(function() cuda.set_stream(3) end), "expected a tn.cuda.Stream or nil")
    contains(error_of(function() cuda.record_stream(3) end), "t must be a tensor")
    contains(error_of(function() cuda.memory_stats(-1) end), "0-based device index")
    contains(error_of(function() cuda.set_cache_limit(-1) end), "non-negative")
  end)

  describe("caching allocator #gpu", function()
    local MiB = 1024 * 1024

    before_each(function()
      collectgarbage()
      collectgarbage()
      cuda.synchronize()
      cuda.set_cache_limit(2 ^ 62)
      cuda.empty_cache()
    end)

    it("counts the bytes in use and the peak", function()
      local s0 = cuda.memory_stats()
      local t = tn.empty(MiB, { device = "cuda" }) -- 4 MiB of f32
      local s1 = cuda.memory_stats()
      assert.are.same(s0.in_use + 4 * MiB, s1.in_use)
      assert.is_true(s1.peak >= s1.in_use)
      assert.is_true(s1.reserved >= s1.in_use)
      assert.are.same(4 * MiB, tn.memory_stats("cuda").current - (s0.in_use))
      t = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      local s2 = cuda.memory_stats()
      assert.are.same(s0.in_use, s2.in_use)
      assert.is_true(s2.cached >= 4 * MiB)
      cuda.reset_peak_memory()
      assert.are.same(s2.in_use, cuda.memory_stats().peak)
    end)

    it("reuses a freed block of the same size class without a cudaMalloc", function()
      local t = tn.empty(3 * MiB, { device = "cuda" })
      local raw = cuda.memory_stats().raw_allocs
      t = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      local u = tn.empty(3 * MiB - 100, { device = "cuda" }) -- same class
      local s = cuda.memory_stats()
      assert.are.same(raw, s.raw_allocs)
      assert.is_true(s.hits >= 1)
      u = nil -- luacheck: ignore
    end)

    it("returns cached blocks to the driver with empty_cache and bounds them with a limit", function()
      local t = tn.empty(8 * MiB, { device = "cuda" })
      t = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      local before = cuda.memory_stats()
      assert.is_true(before.cached >= 32 * MiB)
      cuda.empty_cache()
      local after = cuda.memory_stats()
      assert.are.same(0, after.cached)
      assert.are.same(before.reserved - before.cached, after.reserved)
      cuda.set_cache_limit(0)
      local u = tn.empty(MiB, { device = "cuda" })
      u = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      assert.are.same(0, cuda.memory_stats().cached)
    end)

    it("hands the cuBLAS workspaces back with empty_cache and with the stream they belong to", function()
      local s0 = cuda.memory_stats() -- before_each emptied the cache, workspaces included
      local a = tn.randn(64, 64, { device = "cuda" })
      local c = a:matmul(a) -- makes the default stream's workspace (8 or 32 MiB)
      cuda.synchronize()
      a, c = nil, nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      local s1 = cuda.memory_stats()
      assert.is_true(s1.in_use >= s0.in_use + 8 * MiB, "no workspace in use after a matmul")
      cuda.empty_cache()
      local s2 = cuda.memory_stats()
      assert.are.same(s0.in_use, s2.in_use)
      assert.are.same(0, s2.cached)

      local st = cuda.Stream()
      cuda.set_stream(st)
      local b = tn.randn(64, 64, { device = "cuda" })
      local d = b:matmul(b) -- a workspace for st
      cuda.set_stream(nil)
      st:synchronize()
      b, d = nil, nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      assert.is_true(cuda.memory_stats().in_use >= s0.in_use + 8 * MiB)
      st:free() -- its workspace goes back to the pool
      assert.are.same(s0.in_use, cuda.memory_stats().in_use)
      -- and products still work afterwards, on a fresh workspace
      local e = tn.ones(8, 8, { device = "cuda" })
      assert.are.same(8, e:matmul(e):sum():item() / 64)
    end)

    it("says how much it asked for and what it holds when the device is out of memory", function()
      local msg = error_of(function() return tn.empty(2 ^ 45, { device = "cuda" }) end) -- 128 TiB of f32
      contains(msg, "out of memory allocating 128.00 TiB")
      contains(msg, "cuda:0")
      contains(msg, "in use by tensors")
      contains(msg, "GiB free of")
      -- and it still works afterwards
      local t = tn.zeros(4, { device = "cuda" })
      assert.are.same("cuda", t:device())
    end)

    it("refuses a device that does not exist", function()
      contains(error_of(function() cuda.set_device(cuda.device_count()) end), "does not exist")
      cuda.set_device(0)
      assert.are.same(0, cuda.current_device())
    end)
  end)

  describe("streams #gpu", function()
    it("makes, selects, synchronizes and frees streams", function()
      local s = cuda.Stream()
      assert.is_nil(cuda.current_stream())
      cuda.set_stream(s)
      assert.are.equal(s, cuda.current_stream())
      local t = tn.empty(1024, { device = "cuda" }) -- allocated on s
      s:synchronize()
      cuda.set_stream(nil)
      assert.is_nil(cuda.current_stream())
      cuda.record_stream(t, s)
      cuda.record_stream(t, nil)
      t = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      cuda.synchronize()
      s:free()
      assert.are.same("tn.cuda.Stream (freed)", tostring(s))
      contains(error_of(function() cuda.set_stream(s) end), "the stream was freed")
      s:free() -- twice is fine
    end)

    it("refuses record_stream on a CPU tensor", function()
      local s = cuda.Stream()
      contains(error_of(function() cuda.record_stream(tn.ones(2), s) end), "not a CUDA one")
      s:free()
    end)
  end)
end)
