-- Specs of native memory accounting and release: long loops keep tern's native bytes
-- (tn.memory_stats().current) and the resident set (/proc/self/statm) flat with no manual
-- collectgarbage(), because tern nudges the Lua GC as native memory grows and backward()
-- frees saved tensors. Each loop is measured after a warm-up; the whole file runs in a few
-- seconds, so it is not tagged #slow.
local h = require "helpers.init"
local tn = h.tn

local MB = 1024 * 1024
-- Under AddressSanitizer freed memory sits in a quarantine (256 MB by default), so the
-- resident set grows by design; only tern's own accounting is checked then.
local ASAN = h.asan
local function rss_ok(cond) return ASAN or cond end
local function current() return tn.memory_stats().current end

-- Run step(i) for i = 1..warm + n; return the largest current() and rss() seen over the
-- first and second half of the measured part, and the rss after warm-up.
local function measure(warm, n, every, step)
  for i = 1, warm do step(i) end
  local rss0 = h.rss()
  local cur_max, rss_max = { 0, 0 }, { 0, 0 }
  for i = 1, n do
    step(warm + i)
    if i % every == 0 then
      local half = i <= n / 2 and 1 or 2
      cur_max[half] = math.max(cur_max[half], current())
      rss_max[half] = math.max(rss_max[half], h.rss())
    end
  end
  return cur_max, rss_max, rss0
end

local function report(cur, rss, rss0)
  return string.format("current max %.1f / %.1f MB, rss max %.1f / %.1f MB (%.1f MB after warm-up)",
    cur[1] / MB, cur[2] / MB, rss[1] / MB, rss[2] / MB, rss0 / MB)
end

describe("tern memory", function()
  describe("a loop of 100,000 small ops", function()
    it("keeps native memory and resident memory flat", function()
      local a, b = tn.randn(16), tn.randn(16)
      local cur, rss, rss0 = measure(10000, 100000, 1000, function()
        local c = (a + b) * 2 - a
        c = c:exp():sum()
        return c
      end)
      local msg = report(cur, rss, rss0)
      -- 400,000 leaked 64-byte tensors would be 25 MB native and far more in Lua objects
      assert.is_true(cur[2] < 8 * MB, msg)
      assert.is_true(cur[2] <= 2 * cur[1] + MB, msg)
      assert.is_true(rss_ok(rss[2] - rss0 < 24 * MB), msg)
      assert.is_true(rss_ok(rss[2] <= rss[1] + 8 * MB), msg)
    end)
  end)

  describe("a loop of 1,000 autograd steps", function()
    it("keeps native memory and resident memory flat", function()
      tn.manual_seed(1)
      local x = tn.randn(128, 128):requires_grad(true) -- 64 KiB per tensor
      local w = tn.randn(128, 128)
      local cur, rss, rss0 = measure(100, 1000, 20, function()
        local loss = (x:matmul(w):tanh() * x):softmax(2):logsumexp() * 1e-3
        loss:backward()
        tn.no_grad(function() x:sub_(x.grad * 0.01) end)
        x:zero_grad()
      end)
      local msg = report(cur, rss, rss0)
      -- a step saves about 6 tensors of 64 KiB: a leak would be about 400 MB
      assert.is_true(cur[2] < 160 * MB, msg)
      assert.is_true(cur[2] <= cur[1] + 32 * MB, msg)
      assert.is_true(rss_ok(rss[2] - rss0 < 200 * MB), msg)
      assert.is_true(rss_ok(rss[2] <= rss[1] + 64 * MB), msg)
    end)
  end)

  describe("a loop over large tensors", function()
    it("runs the Lua GC as native memory grows", function()
      -- 2 GiB allocated in total; the Lua side of each tensor is a few hundred bytes, so only
      -- tern's native-memory nudge makes the GC collect them in time
      local cur, rss, rss0 = measure(100, 2000, 10, function()
        local big = tn.empty(256 * 1024) -- 1 MiB
        big:fill_(1)
      end)
      local msg = report(cur, rss, rss0)
      assert.is_true(cur[2] < 200 * MB, msg)
      assert.is_true(rss_ok(rss[2] - rss0 < 300 * MB), msg)
    end)
  end)

  describe("tn.memory_stats", function()
    it("counts the bytes of live storages and releases them with the tensor", function()
      collectgarbage()
      collectgarbage()
      local before = tn.memory_stats()
      local t = tn.empty(1000, { dtype = "f64" })
      local during = tn.memory_stats()
      assert.is_true(during.current - before.current >= 8000)
      assert.is_true(during.current - before.current <= 8000 + 4096)
      assert.are.equal(before.live + 1, during.live)
      assert.is_true(during.peak >= during.current)
      local v = t:view(10, 100) -- a view adds no storage
      assert.are.equal(during.current, tn.memory_stats().current)
      t, v = nil, nil
      collectgarbage()
      collectgarbage()
      assert.are.equal(before.current, tn.memory_stats().current)
      assert.are.equal(before.live, tn.memory_stats().live)
    end)

    it("free releases a tensor's memory at once", function()
      if not tn.Tensor.free then return pending("t:free() is not available") end
      collectgarbage()
      local before = current()
      local t = tn.empty(1048576)
      assert.is_true(current() - before >= 4 * MB)
      t:free()
      assert.are.equal(before, current())
    end)
  end)
end)
