-- Specs of the CUDA backend of joining and indexing (cuda/index.cu behind core/index.c): gather,
-- scatter_add, index_select, index_add, embedding, cat and stack run on the CPU and on the GPU
-- from the same inputs and must agree: exactly for copies (every dtype) and for integer sums,
-- within the dtype's rounding for float sums that go through atomics (they add in any order),
-- and bit for bit for the short lists that core/index.c sums in the CPU's order. Every dtype;
-- dims first, middle, last and negative; non-contiguous views (made on each device from the
-- same contiguous base: a:cuda() of a view is contiguous); repeated and empty index lists; i64
-- and i32 indices; preallocated non-contiguous outputs through the C API; out-of-range indices
-- giving the CPU's error: at the call with synchronous checks (tn.cuda.set_sync_checks(true)),
-- else (the default) at the next synchronisation (cpu(), item(), tn.cuda.synchronize(),
-- s:synchronize()), once, the first bad call's, and the bad op writes nothing.
--
-- Every block but the last is #gpu: a machine without a GPU filters them out and counts them as
-- skipped. Nothing here touches the GPU outside an `it`, so the file loads and lists anywhere.
local h = require "helpers.init"
local tn = h.tn
local ffi = require "ffi"
local C = tn.C

local DTYPES = { "f32", "f64", "f16", "bf16", "i32", "i64", "u8" }
local FLOAT = { f32 = true, f64 = true, f16 = true, bf16 = true }
local ITYPES = { "i64", "i32" }
-- float sums of a few values of magnitude ~1 in another order: a few roundings apart
local SUM_TOL = {
  f32 = { atol = 1e-5, rtol = 1e-5 },
  f64 = { atol = 1e-12, rtol = 1e-12 },
  f16 = { atol = 2e-2, rtol = 1e-2 },
  bf16 = { atol = 1e-1, rtol = 5e-2 },
}
local DIMS = { 1, 2, 3, -1, -2 } -- first, middle, last, negative last and middle of a 3-d tensor

-- Views of a (4, 5, 6) base; each is made on the device of the base it gets.
local VIEWS = {
  { "contiguous", function(t) return t end },
  { "transposed", function(t) return t:transpose(1, 3) end },              -- (6, 5, 4)
  { "narrowed", function(t) return t:narrow(2, 2, 3) end },                -- (4, 3, 6)
  { "stepped", function(t) return t:transpose(1, 2):narrow(3, 2, 4) end }, -- (5, 4, 4)
  { "broadcast", function(t) return t:narrow(1, 2, 1):expand(4, 5, 6) end }, -- stride 0 in dim 1
}

-- A contiguous CPU tensor of shape with values every dtype holds exactly.
local function values(shape, dtype)
  if FLOAT[dtype] then return tn.randn(shape):to(dtype) end
  return tn.randint(0, 100, shape):to(dtype)
end

-- Index values in [0, size) of shape, as itype.
local function indices(shape, size, itype)
  return tn.randint(0, size, shape):to(itype or "i64")
end

local function copy3(s) return { s[1], s[2], s[3] } end
local function pos_dim(d, nd) return d > 0 and d or nd + d + 1 end

-- One `it` per view of VIEWS, titled title:format(dt, view name), that runs
-- body(view, base, s, d, dd) for every dim d of DIMS: base a (4, 5, 6) tensor of dtype dt, view
-- the function that makes the view of a base, s the view's shape, dd the positive d.
local function it_every_view_and_dim(title, dt, body)
  for _, v in ipairs(VIEWS) do
    it(title:format(dt, v[1]), function()
      local base = values({ 4, 5, 6 }, dt)
      local s = v[2](base):shape()
      for _, d in ipairs(DIMS) do body(v[2], base, s, d, pos_dim(d, 3)) end
    end)
  end
end

local gpu = require "helpers.gpu"
local to_gpu, run_both, strip = gpu.to_gpu, gpu.run_both, gpu.strip

-- fn() with the index checks synchronous (on) or not, the setting restored after.
local function with_sync_checks(on, fn, ...)
  local was = tn.cuda.get_sync_checks()
  tn.cuda.set_sync_checks(on)
  local r = { pcall(fn, ...) }
  tn.cuda.set_sync_checks(was)
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, table.maxn(r))
end

local function contains(msg, part)
  assert.truthy(strip(msg):find(part, 1, true), "'" .. strip(msg) .. "' does not contain '" .. part .. "'")
end

-- make fails on both devices with the same message (which contains part); on the GPU with
-- synchronous checks, at the call.
local function same_error(make, inputs, part)
  local g = to_gpu(inputs)
  local ok1, e1 = pcall(make, inputs)
  local ok2, e2 = with_sync_checks(true, pcall, make, g)
  assert.is_false(ok1, "the CPU call did not fail")
  assert.is_false(ok2, "the GPU call did not fail")
  assert.are.equal(strip(e1), strip(e2))
  if part then contains(e2, part) end
  return strip(e2)
end

local NOTE = " (reported at the next synchronisation: %s)"

-- With asynchronous checks (the default), make on GPU copies of inputs returns, and sync(result)
-- raises the error (which contains part and the note naming where); the next synchronisation
-- after it is clean (reported once).
local function later_error(make, inputs, part, sync, where)
  local g = to_gpu(inputs)
  tn.cuda.synchronize()
  with_sync_checks(false, function()
    local r = make(g)
    local ok, e = pcall(sync, r)
    assert.is_false(ok, "the synchronisation did not fail")
    contains(e, part .. NOTE:format(where))
    tn.cuda.synchronize()
  end)
end

local function sync_cpu(r) return r:cpu() end
local function sync_item(r) return r:sum():item() end
local function sync_device() tn.cuda.synchronize() end

local function check_sum(expected, got, dtype)
  assert.are.equal(expected:dtype(), got:dtype())
  if FLOAT[dtype] then
    assert.tensor_near(expected, got, SUM_TOL[dtype])
  else
    assert.tensor_equal(expected, got)
  end
end

-- The C API, for preallocated and in-place outputs that the Lua layer does not offer.
local OUT = ffi.new("tn_tensor *[1]")
local function check(status)
  if status ~= 0 then error(ffi.string(C.tn_last_error()), 2) end
end

describe("gpu index #gpu", function()
  describe("gather", function()
    for _, dt in ipairs(DTYPES) do
      it_every_view_and_dim("gives the CPU's %s result on a %s input along every dim, contiguous and transposed "
        .. "i64 / i32 indices with repeats", dt, function(view, base, s, d, dd)
        local is = copy3(s)
        is[dd] = s[dd] + 2                -- more picks than entries: values repeat
        local other = dd == 1 and 2 or 1
        is[other] = s[other] - 1          -- smaller than the input in another dim
        for _, ity in ipairs(ITYPES) do
          local e, g = run_both(function(x) return view(x.a):gather(d, x.i) end,
            { a = base, i = indices(is, s[dd], ity) })
          assert.tensor_equal(e, g)
          local rev = indices({ is[3], is[2], is[1] }, s[dd], ity)
          e, g = run_both(function(x) return view(x.a):gather(d, x.i:transpose(1, 3)) end, { a = base, i = rev })
          assert.tensor_equal(e, g)
        end
      end)
    end

    it("gathers from 1-d inputs and with empty indices", function()
      local a = values({ 7 }, "f32")
      local e, g = run_both(function(x) return x.a:gather(1, x.i) end, { a = a, i = indices({ 12 }, 7) })
      assert.tensor_equal(e, g)
      e, g = run_both(function(x) return x.a:gather(-1, x.i:narrow(1, 3, 4)) end, { a = a, i = indices({ 12 }, 7, "i32") })
      assert.tensor_equal(e, g)
      e, g = run_both(function(x) return x.a:gather(2, x.i) end,
        { a = values({ 3, 4 }, "f32"), i = tn.empty(3, 0, { dtype = "i64" }) })
      assert.are.same({ 3, 0 }, g:shape())
      assert.tensor_equal(e, g)
    end)

    it("writes into a preallocated transposed out through the C API", function()
      for _, dt in ipairs(DTYPES) do
        local a, idx = values({ 5, 6 }, dt), indices({ 4, 6 }, 5, "i32")
        local function run(x)
          local o = x.z:t() -- (4, 6), strides (1, 4)
          OUT[0] = o._c
          check(C.tn_gather(OUT, x.a._c, 0, x.i._c))
          OUT[0] = nil
          assert.are.same({ 4, 6 }, o:shape()) -- o stays alive through the call
          return x.z
        end
        local e, g = run_both(run, { a = a, i = idx, z = values({ 6, 4 }, dt) })
        assert.tensor_equal(e, g)
      end
    end)
  end)

  describe("scatter_add", function()
    for _, dt in ipairs(DTYPES) do
      it_every_view_and_dim("gives the CPU's %s sums from a %s src along every dim, repeated i64 / i32 indices",
        dt, function(view, base, s, d, dd)
        local os = copy3(s)
        os[dd] = 3                        -- every out element gets several values
        local is = copy3(s)
        local other = dd == 1 and 2 or 1
        is[other] = s[other] - 1          -- index smaller than src and out in another dim
        for _, ity in ipairs(ITYPES) do
          local e, g = run_both(function(x) return x.o:scatter_add(d, x.i, view(x.s)) end,
            { o = values(os, dt), i = indices(is, 3, ity), s = base })
          check_sum(e, g, dt)
        end
      end)

      it(("adds %s with atomics when the list along dim is long (2000 values into 500 / 300 places)")
        :format(dt), function()
        local e, g = run_both(function(x) return x.o:scatter_add(2, x.i, x.s) end,
          { o = values({ 64, 500 }, dt), i = indices({ 64, 2000 }, 500), s = values({ 64, 2000 }, dt) })
        check_sum(e, g, dt)
        e, g = run_both(function(x) return x.o:scatter_add(1, x.i:t(), x.s) end,
          { o = values({ 300, 33 }, dt), i = indices({ 33, 2000 }, 300, "i32"), s = values({ 2000, 33 }, dt) })
        check_sum(e, g, dt)
      end)
    end

    it("sums short lists in the CPU's order: the same bits for floats", function()
      for _, dt in ipairs({ "f32", "f16", "bf16", "f64" }) do
        local e, g = run_both(function(x) return x.o:scatter_add(1, x.i, x.s) end,
          { o = values({ 8, 50 }, dt), i = indices({ 200, 50 }, 8), s = values({ 200, 50 }, dt) })
        assert.tensor_equal(e, g)
        e, g = run_both(function(x) return x.o:scatter_add(2, x.i, x.s) end, -- max/min backward's shape
          { o = values({ 40, 1000 }, dt), i = indices({ 40, 1 }, 1000), s = values({ 40, 1 }, dt) })
        assert.tensor_equal(e, g)
      end
    end)

    it("adds in place into a transposed out through the C API and leaves it untouched on a bad index",
      function()
      for _, dt in ipairs(DTYPES) do
        local function run(x)
          local o = x.z:t() -- (7, 6) over z (6, 7)
          check(C.tn_scatter_add(o._c, 0, x.i._c, x.s._c))
          assert.are.same({ 7, 6 }, o:shape()) -- o stays alive through the call
          return x.z
        end
        local idx = indices({ 9, 6 }, 7)
        local e, g = run_both(run, { z = values({ 6, 7 }, dt), i = idx, s = values({ 9, 6 }, dt) })
        check_sum(e, g, dt)
        local bad = idx:clone()
        bad:set({ 3, 4 }, 7)
        local z = values({ 6, 7 }, dt)
        same_error(run, { z = z, i = bad, s = values({ 9, 6 }, dt) },
          "scatter_add: index 7 is out of range for dim 1 of size 7 (at position [3, 4])")
        local zg = z:cuda()
        with_sync_checks(true, function()
          assert.is_false(pcall(run, { z = zg, i = bad:cuda(), s = values({ 9, 6 }, dt):cuda() }))
        end)
        assert.tensor_equal(z, zg:cpu())
        -- asynchronous: the call returns, nothing is added, the next copy to the host raises
        with_sync_checks(false, function()
          run({ z = zg, i = bad:cuda(), s = values({ 9, 6 }, dt):cuda() })
          local ok, msg = pcall(sync_cpu, zg)
          assert.is_false(ok)
          contains(msg, "scatter_add: index 7 is out of range for dim 1 of size 7 (at position [3, 4])"
            .. NOTE:format("copy to host"))
        end)
        assert.tensor_equal(z, zg:cpu())
      end
    end)

    it("does nothing with an empty index", function()
      local e, g = run_both(function(x) return x.o:scatter_add(2, x.i, x.s) end,
        { o = values({ 3, 4 }, "f32"), i = tn.empty(3, 0, { dtype = "i64" }), s = values({ 3, 2 }, "f32") })
      assert.tensor_equal(e, g)
    end)
  end)

  describe("index_select", function()
    for _, dt in ipairs(DTYPES) do
      it_every_view_and_dim("gives the CPU's %s slices of a %s input along every dim, repeated, strided and empty "
        .. "index lists", dt, function(view, base, s, d, dd)
        for _, ity in ipairs(ITYPES) do
          local e, g = run_both(function(x) return view(x.a):index_select(d, x.i) end,
            { a = base, i = indices({ s[dd] + 3 }, s[dd], ity) })
          assert.tensor_equal(e, g)
          e, g = run_both(function(x) return view(x.a):index_select(d, x.i:select(2, 2)) end, -- stride 2
            { a = base, i = indices({ 5, 2 }, s[dd], ity) })
          assert.tensor_equal(e, g)
          e, g = run_both(function(x) return view(x.a):index_select(d, x.i) end,
            { a = base, i = tn.empty(0, { dtype = ity }) })
          assert.are.equal(0, g:size(dd))
          assert.tensor_equal(e, g)
        end
      end)
    end

    it("selects with a 0-d index", function()
      local e, g = run_both(function(x) return x.a:index_select(2, x.i) end,
        { a = values({ 3, 4 }, "f16"), i = tn.tensor(3, { dtype = "i32" }) })
      assert.tensor_equal(e, g)
    end)
  end)

  describe("index_add", function()
    for _, dt in ipairs(DTYPES) do
      it_every_view_and_dim("gives the CPU's %s sums of a %s src along every dim, repeated i64 / i32 indices", dt,
        function(view, base, s, d, dd)
        local os = copy3(s)
        os[dd] = 4
        for _, ity in ipairs(ITYPES) do
          local e, g = run_both(function(x) return x.o:index_add(d, x.i, view(x.s)) end,
            { o = values(os, dt), i = indices({ s[dd] }, 4, ity), s = base })
          check_sum(e, g, dt)
        end
      end)

      it(("adds %s rows with atomics when the list is long (3000 rows into 300)"):format(dt), function()
        local e, g = run_both(function(x) return x.o:index_add(1, x.i, x.s) end,
          { o = values({ 300, 40 }, dt), i = indices({ 3000 }, 300), s = values({ 3000, 40 }, dt) })
        check_sum(e, g, dt)
        e, g = run_both(function(x) return x.o:index_add(-1, x.i, x.s:t()) end,
          { o = values({ 40, 300 }, dt), i = indices({ 3000 }, 300, "i32"), s = values({ 3000, 40 }, dt) })
        check_sum(e, g, dt)
      end)
    end

    it("sums short lists in the CPU's order: the same bits for floats", function()
      for _, dt in ipairs({ "f32", "f16", "bf16", "f64" }) do
        local e, g = run_both(function(x) return x.o:index_add(1, x.i, x.s) end,
          { o = values({ 10, 64 }, dt), i = indices({ 500 }, 10), s = values({ 500, 64 }, dt) })
        assert.tensor_equal(e, g)
        e, g = run_both(function(x) return x.o:index_add(2, x.i, x.s) end,
          { o = values({ 32, 100 }, dt), i = indices({ 7 }, 100), s = values({ 32, 7 }, dt) })
        assert.tensor_equal(e, g)
      end
    end)

    it("adds in place into a narrowed out through the C API, short and long lists", function()
      for _, dt in ipairs({ "f32", "bf16", "i64", "u8" }) do
        for _, n in ipairs({ 6, 2000 }) do
          local function run(x)
            local o = x.z:narrow(2, 2, 5) -- (30, 5) over z (30, 8)
            check(C.tn_index_add(o._c, 0, x.i._c, x.s._c))
            assert.are.same({ 30, 5 }, o:shape()) -- o stays alive through the call
            return x.z
          end
          local e, g = run_both(run, { z = values({ 30, 8 }, dt), i = indices({ n }, 30), s = values({ n, 5 }, dt) })
          check_sum(e, g, dt)
        end
      end
    end)

    it("does nothing with an empty index", function()
      local e, g = run_both(function(x) return x.o:index_add(1, x.i, x.s) end,
        { o = values({ 3, 4 }, "f64"), i = tn.empty(0, { dtype = "i32" }), s = tn.empty(0, 4, { dtype = "f64" }) })
      assert.tensor_equal(e, g)
    end)
  end)

  describe("embedding", function()
    it("looks up the CPU's rows for indices of any shape", function()
      for _, dt in ipairs({ "f32", "f16", "bf16" }) do
        local e, g = run_both(function(x) return tn.embedding(x.w, x.i) end,
          { w = values({ 50, 16 }, dt), i = indices({ 3, 7 }, 50) })
        assert.tensor_equal(e, g)
      end
    end)

    it("gives the CPU's gradient (index_add of repeated rows)", function()
      local w, idx = values({ 50, 16 }, "f32"), indices({ 40, 30 }, 50)
      local gw = {}
      for k, dev in ipairs({ "cpu", "cuda" }) do
        local wd = (dev == "cpu" and w:clone() or w:cuda()):requires_grad(true)
        local out = tn.embedding(wd, idx:to(dev))
        local loss = (out * tn.arange(16):to(dev)):sum()
        loss:backward()
        gw[k] = wd.grad:cpu()
      end
      assert.tensor_near(gw[1], gw[2], { atol = 1e-4, rtol = 1e-5 })
    end)

    it("gives the CPU's gradient of gather (scatter_add)", function()
      local a, idx = values({ 6, 9 }, "f64"), indices({ 6, 20 }, 9)
      local ga = {}
      for k, dev in ipairs({ "cpu", "cuda" }) do
        local ad = (dev == "cpu" and a:clone() or a:cuda()):requires_grad(true)
        local loss = ad:gather(2, idx:to(dev)):sum()
        loss:backward()
        ga[k] = ad.grad:cpu()
      end
      assert.tensor_equal(ga[1], ga[2])
    end)
  end)

  describe("out-of-range indices", function()
    for _, ity in ipairs(ITYPES) do
      it(("raise the CPU's error naming the first bad value and its position (%s)"):format(ity), function()
        local a = values({ 4, 6 }, "f32")
        local i = indices({ 3, 5 }, 6, ity)
        i:set({ 2, 4 }, 6)
        i:set({ 3, 1 }, -1)
        same_error(function(x) return x.a:gather(2, x.i) end, { a = a, i = i },
          "gather: index 6 is out of range for dim 2 of size 6 (at position [2, 4])")
        -- the first bad one in row-major order of a transposed index
        same_error(function(x) return x.a:gather(1, x.i:t()) end, { a = values({ 6, 3 }, "f32"), i = i },
          "gather: index -1 is out of range for dim 1 of size 6 (at position [1, 3])")
        same_error(function(x) return x.a:scatter_add(2, x.i, x.s) end, { a = a, i = i, s = values({ 3, 5 }, "f32") },
          "scatter_add: index 6 is out of range for dim 2 of size 6 (at position [2, 4])")
        local l = indices({ 9 }, 4, ity)
        l:set({ 7 }, 4)
        same_error(function(x) return x.a:index_select(1, x.i) end, { a = a, i = l },
          "index_select: index 4 is out of range for dim 1 of size 4 (at position [7])")
        same_error(function(x) return x.a:index_add(1, x.i, x.s) end, { a = a, i = l, s = values({ 9, 6 }, "f32") },
          "index_add: index 4 is out of range for dim 1 of size 4 (at position [7])")
        same_error(function(x) return tn.embedding(x.a, x.i) end, { a = a, i = l:view(3, 3) },
          "embedding: index_select: index 4 is out of range for dim 1 of size 4 (at position [7])")
      end)

      it(("raise the CPU's error at the next synchronisation by default, once (%s)"):format(ity), function()
        local a = values({ 4, 6 }, "f32")
        local i = indices({ 3, 5 }, 6, ity)
        i:set({ 2, 4 }, 6)
        i:set({ 3, 1 }, -1)
        local gather = function(x) return x.a:gather(2, x.i) end
        local msg = "gather: index 6 is out of range for dim 2 of size 6 (at position [2, 4])"
        later_error(gather, { a = a, i = i }, msg, sync_cpu, "copy to host")
        later_error(gather, { a = a, i = i }, msg, sync_item, "copy to host")
        later_error(gather, { a = a, i = i }, msg, sync_device, "cuda_synchronize")
        later_error(function(x) return x.a:gather(1, x.i:t()) end, { a = values({ 6, 3 }, "f32"), i = i },
          "gather: index -1 is out of range for dim 1 of size 6 (at position [1, 3])", sync_cpu, "copy to host")
        later_error(function(x) return x.a:scatter_add(2, x.i, x.s) end,
          { a = a, i = i, s = values({ 3, 5 }, "f32") },
          "scatter_add: index 6 is out of range for dim 2 of size 6 (at position [2, 4])", sync_cpu, "copy to host")
        local l = indices({ 9 }, 4, ity)
        l:set({ 7 }, 4)
        later_error(function(x) return x.a:index_select(1, x.i) end, { a = a, i = l },
          "index_select: index 4 is out of range for dim 1 of size 4 (at position [7])", sync_device,
          "cuda_synchronize")
        later_error(function(x) return x.a:index_add(1, x.i, x.s) end, { a = a, i = l, s = values({ 9, 6 }, "f32") },
          "index_add: index 4 is out of range for dim 1 of size 4 (at position [7])", sync_item, "copy to host")
        later_error(function(x) return tn.embedding(x.a, x.i) end, { a = a, i = l:view(3, 3) },
          "index_select: index 4 is out of range for dim 1 of size 4 (at position [7])", sync_cpu, "copy to host")
      end)
    end

    it("report the first bad call of several, on a stream's synchronize too", function()
      local a, l = values({ 4, 6 }, "f32"), indices({ 9 }, 4)
      l:set({ 7 }, 4)
      local g = to_gpu({ a = a, l = l, b = l:clone():fill_(9), c = l:clone():fill_(1) }) -- b: all bad
      tn.cuda.synchronize()
      with_sync_checks(false, function()
        local r1 = g.a:index_select(1, g.l) -- the first bad call: kept
        local r2 = g.a:index_select(1, g.b) -- a later one: dropped
        local r3 = g.a:index_select(1, g.c) -- a good one runs
        local ok, msg = pcall(sync_device)
        assert.is_false(ok)
        contains(msg, "index_select: index 4 is out of range for dim 1 of size 4 (at position [7])"
          .. NOTE:format("cuda_synchronize"))
        assert.tensor_equal(a:index_select(1, l:clone():fill_(1)), r3:cpu())
        assert.are.same({ 9, 6 }, r1:shape())
        assert.are.same({ 9, 6 }, r2:shape())
        -- on a stream: its synchronize raises it
        local s = tn.cuda.Stream()
        tn.cuda.set_stream(s)
        local r = g.a:gather(2, g.b:view(3, 3):narrow(2, 1, 2))
        tn.cuda.set_stream(nil)
        ok, msg = pcall(s.synchronize, s)
        assert.is_false(ok)
        contains(msg, "gather: index 9 is out of range for dim 2 of size 6 (at position [1, 1])"
          .. NOTE:format("cuda_stream_synchronize"))
        assert.are.same({ 3, 2 }, r:shape())
        s:free()
        tn.cuda.synchronize()
      end)
    end)

    it("reject an index on the other device", function()
      local a, i = values({ 4, 6 }, "f32"), indices({ 4, 2 }, 6)
      local ok, msg = pcall(function() return a:cuda():gather(2, i) end)
      assert.is_false(ok)
      assert.truthy(strip(msg):find("gather: tensors on different devices (cuda and cpu)", 1, true), strip(msg))
      ok, msg = pcall(function() return tn.cat({ a:cuda(), a }) end)
      assert.is_false(ok)
      assert.truthy(strip(msg):find("cat: tensors on different devices", 1, true), strip(msg))
    end)
  end)

  describe("cat and stack", function()
    for _, dt in ipairs(DTYPES) do
      it(("join %s inputs along every dim, with empty ones, as the CPU does"):format(dt), function()
        for _, d in ipairs(DIMS) do
          local dd = pos_dim(d, 3)
          local shapes = {}
          for k, len in ipairs({ 2, 0, 3, 1 }) do
            shapes[k] = { 4, 5, 6 }
            shapes[k][dd] = len
          end
          local inputs = {}
          for k, s in ipairs(shapes) do inputs[k] = values(s, dt) end
          inputs.e = tn.empty(0, { dtype = dt }) -- a 1-d empty tensor: skipped whatever the shapes
          local e, g = run_both(function(x) return tn.cat({ x[1], x[2], x.e, x[3], x[4] }, d) end, inputs)
          assert.tensor_equal(e, g)
        end
      end)

      it(("join non-contiguous %s inputs (transposed, narrowed, expanded) and mixed layouts"):format(dt), function()
        local base = values({ 6, 5, 4 }, dt)
        local e, g = run_both(function(x)
          return tn.cat({ x.b:transpose(1, 3), x.c, x.b:transpose(1, 3):narrow(1, 2, 2),
            x.b:narrow(3, 1, 1):transpose(1, 3):expand(2, 5, 6) }, 1)
        end, { b = base, c = values({ 3, 5, 6 }, dt) })
        assert.are.same({ 4 + 3 + 2 + 2, 5, 6 }, g:shape())
        assert.tensor_equal(e, g)
        e, g = run_both(function(x) return tn.cat({ x.b:t(), x.b:t(), x.c }, 2) end,
          { b = values({ 7, 3 }, dt), c = values({ 3, 1 }, dt) })
        assert.tensor_equal(e, g)
      end)

      it(("stacks %s inputs along every dim"):format(dt), function()
        for _, d in ipairs({ 1, 2, 3, 4, -1, -2 }) do
          local e, g = run_both(function(x) return tn.stack({ x.a, x.b, x.c:narrow(3, 2, 2) }, d) end,
            { a = values({ 3, 5, 2 }, dt), b = values({ 3, 5, 2 }, dt), c = values({ 3, 5, 4 }, dt) })
          assert.tensor_equal(e, g)
        end
      end)
    end

    it("joins more inputs than one launch takes, with odd widths", function()
      for _, dt in ipairs({ "u8", "f16", "f32", "f64" }) do
        local inputs, n = {}, 45
        for k = 1, n do inputs[k] = values({ 3, k % 4, 5 }, dt) end
        local e, g = run_both(function(x) return tn.cat({ unpack(x, 1, n) }, 2) end, inputs)
        assert.tensor_equal(e, g)
        local rows = {}
        for k = 1, n do rows[k] = values({ k % 3, 1, 3 }, dt) end
        e, g = run_both(function(x) return tn.cat({ unpack(x, 1, n) }, 1) end, rows)
        assert.tensor_equal(e, g)
      end
    end)

    it("joins a large tensor (wide rows, unit copies)", function()
      local e, g = run_both(function(x) return tn.cat({ x.a, x.b }, 2) end,
        { a = values({ 64, 4096 }, "f32"), b = values({ 64, 1024 }, "f32") })
      assert.tensor_equal(e, g)
    end)

    it("writes into a preallocated non-contiguous out and copies an input that views out as the CPU does",
      function()
      for _, dt in ipairs({ "f32", "bf16", "i64" }) do
        local function into_transposed(x)
          local o = x.z:t() -- (3, 5) over z (5, 3)
          OUT[0] = o._c
          local arr = ffi.new("const tn_tensor *[2]", x.a._c, x.b._c)
          check(C.tn_cat(OUT, arr, 2, 1))
          OUT[0] = nil
          assert.are.same({ 3, 5 }, o:shape()) -- o stays alive through the call
          return x.z
        end
        local e, g = run_both(into_transposed, { z = values({ 5, 3 }, dt), a = values({ 3, 2 }, dt), b = values({ 3, 3 }, dt) })
        assert.tensor_equal(e, g)
        -- out's first columns become a, then out's first columns (now a) are copied after them
        local function self_cat(x)
          OUT[0] = x.z._c
          local v = x.z:narrow(2, 1, 2)
          local arr = ffi.new("const tn_tensor *[3]", x.a._c, v._c, x.b._c)
          check(C.tn_cat(OUT, arr, 3, 1))
          OUT[0] = nil
          assert.are.same({ 4, 2 }, v:shape()) -- v stays alive through the call
          return x.z
        end
        e, g = run_both(self_cat, { z = values({ 4, 5 }, dt), a = values({ 4, 2 }, dt), b = values({ 4, 1 }, dt) })
        assert.tensor_equal(e, g)
        assert.tensor_equal(g:narrow(2, 1, 2), g:narrow(2, 3, 2))
      end
    end)
  end)
end)

describe("gpu index: the synchronous-check switch", function()
  it("is a setting in every build, off by default", function()
    local was = tn.cuda.get_sync_checks()
    if os.getenv("TERN_CUDA_SYNC_CHECKS") == nil then assert.is_false(was) end
    tn.cuda.set_sync_checks(true)
    assert.is_true(tn.cuda.get_sync_checks())
    tn.cuda.set_sync_checks(false)
    assert.is_false(tn.cuda.get_sync_checks())
    tn.cuda.set_sync_checks(was)
    assert.has_error(function() tn.cuda.set_sync_checks(1) end,
      "tn.cuda.set_sync_checks: expected a boolean, got number")
  end)
end)
