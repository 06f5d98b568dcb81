-- Specs of the CUDA backend of reductions and softmax (cuda/reduce.cu behind core/reduce.c,
-- cuda/softmax.cu behind core/softmax.c): sum, mean, var, logsumexp, prod, max / min (all, and
-- values with indices along a dim), argmax / argmin, sum_to, softmax and log_softmax forward and
-- backward run on the CPU and on the GPU from the same inputs and must agree: exactly for max /
-- min / argmax / argmin (ties to the lower index, the first NaN wins) and for integer sums and
-- products (wrapping i64), within the dtype's rounding for float sums (the GPU adds in another
-- order: a few f32 roundings, then one rounding to f16 / bf16). Every dtype the CPU takes; every
-- set of reduced dims, keepdim or not; contiguous, transposed, permuted, narrowed, stepped and
-- broadcast (stride 0) inputs (views are made on each device from the same contiguous base:
-- a:cuda() of a view is contiguous); empty and size-1 dims; NaN and infinities; long rows split
-- across blocks, many short rows, column reductions split along the reduced dim; preallocated
-- non-contiguous outputs and in-place softmax through the C API; errors equal to the CPU's;
-- results equal from run to run.
--
-- Every block is #gpu: a machine without a GPU filters them out and counts them as skipped.
-- Nothing here touches the GPU outside an `it`, so the file loads and lists anywhere.
local h = require "helpers.init"
local tn = h.tn
local ffi = require "ffi"
local lib = require "tern.lib"
local C = tn.C

local FLOATS = { "f32", "f64", "f16", "bf16" }
local INTS = { "i32", "i64", "u8" }
local ALL = { "f32", "f64", "f16", "bf16", "i32", "i64", "u8" }
local FLOAT = { f32 = true, f64 = true, f16 = true, bf16 = true }

-- float reductions of ~100 values of magnitude ~1 summed in another order, then rounded to the
-- dtype (one ulp of f16 / bf16 at most)
local TOL = {
  f32 = { atol = 1e-4, rtol = 1e-4 },
  f64 = { atol = 1e-10, rtol = 1e-10 },
  f16 = { atol = 4e-3, rtol = 4e-3 },
  bf16 = { atol = 3e-2, rtol = 2e-2 },
}
-- softmax outputs: probabilities in [0, 1], log-probabilities ~ -log(D)
local SM_TOL = {
  f32 = { atol = 1e-6, rtol = 1e-4 },
  f64 = { atol = 1e-13, rtol = 1e-11 },
  f16 = { atol = 1e-3, rtol = 4e-3 },
  bf16 = { atol = 8e-3, rtol = 2e-2 },
}

-- Views of a (4, 5, 6) base; each is made on the device of the base it gets.
local VIEWS = {
  { "contiguous", function(t) return t end },                                -- (4, 5, 6)
  { "transposed", function(t) return t:transpose(1, 3) end },                -- (6, 5, 4)
  { "permuted", function(t) return t:permute(2, 3, 1) end },                 -- (5, 6, 4)
  { "narrowed", function(t) return t:narrow(2, 2, 3) end },                  -- (4, 3, 6)
  { "stepped", function(t) return t:transpose(1, 2):narrow(3, 2, 4) end },   -- (5, 4, 4)
  { "broadcast", function(t) return t:narrow(1, 2, 1):expand(4, 5, 6) end }, -- stride 0 in dim 1
}
-- every set of reduced dims of a 3-d tensor ("all" = none given), repeats in another order
local DIMSETS = { "all", 1, 2, 3, -1, -2, { 1, 3 }, { 3, 1 }, { 1, 2 }, { 2, 3 }, { -1, 1 }, { 1, 2, 3 } }
local SINGLE = { 1, 2, 3, -1 }

local function dims_arg(d) if d == "all" then return nil end return d end

-- A contiguous CPU tensor of shape: randn for floats, integers in [lo, hi) otherwise.
local function values(shape, dtype, lo, hi)
  if FLOAT[dtype] then return tn.randn(shape):to(dtype) end
  return tn.randint(lo or 0, hi or 7, shape):to(dtype)
end

-- Values near 1 (products of ~100 of them stay finite).
local function near_one(shape, dtype)
  return tn.randn(shape):mul(0.05):add(1):to(dtype)
end

local gpu = require "helpers.gpu"
local run_both, same_error = gpu.run_both, gpu.same_error

-- Compares within tol (a table), or exactly when tol is nil.
local function agree(e, g, tol)
  if tol then assert.tensor_near(e, g, tol) else assert.tensor_equal(e, g) end
end


-- The C API, for prod (no Lua method), preallocated outputs and in-place softmax.
local OUT, OUT2 = ffi.new("tn_tensor *[1]"), ffi.new("tn_tensor *[1]")
local function check(status)
  if status ~= 0 then error(ffi.string(C.tn_last_error()), 2) end
end
local RED = { sum = 0, mean = 1, max = 2, min = 3, prod = 4, logsumexp = 5, var = 6, argmax = 7, argmin = 8 }

-- tn_reduce(op) over dims (1-based, negative from the end; "all" or nil = all) into a new
-- tensor, or into out when given.
local function c_reduce(a, op, dims, keepdim, correction, out)
  if dims == "all" or dims == nil then dims = {} elseif type(dims) == "number" then dims = { dims } end
  local nd = a:dim()
  local D = ffi.new("int32_t[?]", math.max(#dims, 1))
  for i, d in ipairs(dims) do D[i - 1] = d > 0 and d - 1 or nd + d end
  OUT[0] = out and out._c or nil
  check(C.tn_reduce(OUT, a._c, #dims, D, RED[op], keepdim and 1 or 0, correction or 0))
  if out then return out end
  return lib.wrap(OUT[0])
end

-- tn_softmax_backward(grad_out, y) along dim (1-based) into a new tensor, or into out.
local function c_softmax_backward(g, y, dim, log, out)
  local d = dim > 0 and dim - 1 or y:dim() + dim
  OUT[0] = out and out._c or nil
  check(C.tn_softmax_backward(OUT, g._c, y._c, d, log and 1 or 0))
  if out then return out end
  return lib.wrap(OUT[0])
end

describe("gpu reductions #gpu", function()
  describe("sum, mean, var, logsumexp and prod", function()
    for _, dt in ipairs(FLOATS) do
      for _, v in ipairs(VIEWS) do
        it(("give the CPU's %s results over every set of dims, keepdim or not, on a %s input"):format(dt, v[1]), function()
          local inputs = { a = values({ 4, 5, 6 }, dt), p = near_one({ 4, 5, 6 }, dt) }
          for _, ds in ipairs(DIMSETS) do
            for _, keep in ipairs({ false, true }) do
              local d = dims_arg(ds)
              local e, g = run_both(function(x) return v[2](x.a):sum(d, keep) end, inputs)
              agree(e, g, TOL[dt])
              e, g = run_both(function(x) return v[2](x.a):mean(d, keep) end, inputs)
              agree(e, g, TOL[dt])
              for _, corr in ipairs({ 0, 1 }) do
                e, g = run_both(function(x) return v[2](x.a):var(d, { correction = corr, keepdim = keep }) end, inputs)
                agree(e, g, TOL[dt])
              end
              e, g = run_both(function(x) return v[2](x.a):logsumexp(d, keep) end, inputs)
              agree(e, g, TOL[dt])
              e, g = run_both(function(x) return c_reduce(v[2](x.p), "prod", ds, keep) end, inputs)
              agree(e, g, TOL[dt])
            end
          end
        end)
      end
    end

    for _, dt in ipairs(INTS) do
      it(("sum and multiply %s exactly in i64 (wrapping) over every set of dims and view"):format(dt), function()
        -- u8 up to 250 and i32 / i64 products of ~100 values of up to 9: sums above 255, products
        -- that wrap around 2^64
        local inputs = { a = values({ 4, 5, 6 }, dt, dt == "u8" and 100 or -9, dt == "u8" and 250 or 10) }
        for _, v in ipairs(VIEWS) do
          for _, ds in ipairs(DIMSETS) do
            for _, keep in ipairs({ false, true }) do
              local e, g = run_both(function(x) return v[2](x.a):sum(dims_arg(ds), keep) end, inputs)
              assert.are.equal("i64", g:dtype())
              agree(e, g)
              e, g = run_both(function(x) return c_reduce(v[2](x.a), "prod", ds, keep) end, inputs)
              agree(e, g)
            end
          end
        end
      end)
    end

    it("divide var by N - correction, clamped at 0 (NaN / inf like the CPU)", function()
      for _, dt in ipairs(FLOATS) do
        local inputs = { a = values({ 3, 4 }, dt), one = values({ 3, 1 }, dt) }
        for _, corr in ipairs({ 0, 1, 2, 4, 5 }) do
          local e, g = run_both(function(x) return x.a:var(2, { correction = corr }) end, inputs)
          agree(e, g, TOL[dt])
          e, g = run_both(function(x) return x.one:var(2, { correction = corr }) end, inputs)
          agree(e, g, TOL[dt])
        end
      end
    end)
  end)

  describe("max, min, argmax and argmin", function()
    for _, dt in ipairs(ALL) do
      for _, v in ipairs(VIEWS) do
        it(("give the CPU's %s values and indices exactly on a %s input, ties to the lower index"):format(dt, v[1]), function()
          -- few distinct values: many ties (f16 / bf16 rounding makes ties too)
          local inputs = { a = FLOAT[dt] and tn.randint(-3, 4, { 4, 5, 6 }):to(dt) or values({ 4, 5, 6 }, dt, 0, 4),
                           r = values({ 4, 5, 6 }, dt) }
          for _, name in ipairs({ "a", "r" }) do
            local e, g = run_both(function(x) return v[2](x[name]):max() end, inputs)
            agree(e, g)
            e, g = run_both(function(x) return v[2](x[name]):min() end, inputs)
            agree(e, g)
            e, g = run_both(function(x) return v[2](x[name]):argmax() end, inputs)
            agree(e, g)
            e, g = run_both(function(x) return v[2](x[name]):argmin() end, inputs)
            agree(e, g)
            for _, d in ipairs(SINGLE) do
              for _, keep in ipairs({ false, true }) do
                local ev, gv, ei, gi = run_both(function(x) return v[2](x[name]):max(d, keep) end, inputs)
                agree(ev, gv)
                agree(ei, gi)
                ev, gv, ei, gi = run_both(function(x) return v[2](x[name]):min(d, keep) end, inputs)
                agree(ev, gv)
                agree(ei, gi)
                e, g = run_both(function(x) return v[2](x[name]):argmax(d, keep) end, inputs)
                agree(e, g)
                e, g = run_both(function(x) return v[2](x[name]):argmin(d, keep) end, inputs)
                agree(e, g)
              end
            end
            for _, ds in ipairs(DIMSETS) do -- max / min over several dims: tn_reduce
              e, g = run_both(function(x) return c_reduce(v[2](x[name]), "max", ds, true) end, inputs)
              agree(e, g)
              e, g = run_both(function(x) return c_reduce(v[2](x[name]), "min", ds, false) end, inputs)
              agree(e, g)
            end
          end
        end)
      end
    end

    it("resolve ties to the first index in short, long, split and column reductions", function()
      local a = tn.zeros(3, 70000)
      a:set({ 1, 5 }, 2); a:set({ 1, 60000 }, 2)         -- two maxima, far apart (different blocks)
      a:set({ 2, 40000 }, -1); a:set({ 2, 3 }, -1)       -- two minima
      local inputs = { a = a, ta = a:t():contiguous(), s = tn.tensor({ { 1, 3, 3, 2 }, { 5, 5, 5, 5 } }) }
      local e, g = run_both(function(x) return x.a:argmax(2) end, inputs)
      agree(e, g)
      assert.are.same({ 4, 0, 0 }, g:totable())
      e, g = run_both(function(x) return x.a:argmin(2) end, inputs)
      agree(e, g)
      assert.are.same({ 0, 2, 0 }, g:totable())
      e, g = run_both(function(x) return x.ta:argmax(1) end, inputs) -- a column reduction
      agree(e, g)
      e, g = run_both(function(x) return x.a:argmax() end, inputs)     -- all: a split row
      agree(e, g)
      assert.are.equal(4, g:item())
      e, g = run_both(function(x) return x.s:argmax(2) end, inputs)
      assert.are.same({ 1, 0 }, g:totable())
      agree(e, g)
    end)
  end)

  describe("NaN and infinities", function()
    -- row 1: two NaNs; row 2: +inf; row 3: -inf with finite values; row 4: all -inf; row 5: finite
    local function special(dt)
      local a = tn.randn(5, 9)
      a:set({ 1, 3 }, 0 / 0); a:set({ 1, 7 }, 0 / 0)
      a:set({ 2, 4 }, math.huge)
      a:set({ 3, 2 }, -math.huge); a:set({ 3, 8 }, -math.huge)
      for j = 1, 9 do a:set({ 4, j }, -math.huge) end
      return a:to(dt)
    end

    for _, dt in ipairs(FLOATS) do
      it(("propagate like the CPU for %s rows and columns"):format(dt), function()
        local a = special(dt)
        local inputs = { a = a, t = a:t():contiguous() } -- t: the same reductions along columns
        for _, case in ipairs({ { "a", 2 }, { "t", 1 } }) do
          local n, d = case[1], case[2]
          local tol = TOL[dt]
          local e, g = run_both(function(x) return x[n]:sum(d) end, inputs)
          agree(e, g, tol)
          e, g = run_both(function(x) return x[n]:mean(d) end, inputs)
          agree(e, g, tol)
          e, g = run_both(function(x) return x[n]:var(d) end, inputs)
          agree(e, g, tol)
          e, g = run_both(function(x) return x[n]:logsumexp(d) end, inputs)
          agree(e, g, tol)
          e, g = run_both(function(x) return c_reduce(x[n], "prod", { d }) end, inputs)
          agree(e, g, tol)
          local ev, gv, ei, gi = run_both(function(x) return x[n]:max(d) end, inputs)
          agree(ev, gv)
          agree(ei, gi)
          ev, gv, ei, gi = run_both(function(x) return x[n]:min(d) end, inputs)
          agree(ev, gv)
          agree(ei, gi)
          e, g = run_both(function(x) return c_reduce(x[n], "max", { d }) end, inputs)
          agree(e, g)
          e, g = run_both(function(x) return x[n]:argmin(d) end, inputs)
          agree(e, g)
        end
        local e, g = run_both(function(x) return x.a:max() end, inputs)
        agree(e, g)
        e, g = run_both(function(x) return x.a:argmax() end, inputs) -- the first NaN
        agree(e, g)
        assert.are.equal(2, g:item())
        e, g = run_both(function(x) return x.a:sum() end, inputs)
        agree(e, g, TOL[dt])
      end)
    end
  end)

  describe("empty and size-1 dims", function()
    for _, dt in ipairs(ALL) do
      it(("give the CPU's %s results (0, NaN, 1, -inf) and its errors"):format(dt), function()
        local inputs = { z = values({ 0, 5 }, dt), z2 = values({ 3, 0, 2 }, dt), o = values({ 1, 5, 1 }, dt),
                         s = values({ 2, 3 }, dt):narrow(2, 2, 1):contiguous() }
        local tol = FLOAT[dt] and TOL[dt] or nil
        for _, n in ipairs({ "z", "z2", "o", "s" }) do
          local nd = inputs[n]:dim()
          local sets = { "all" }
          for d = 1, nd do sets[#sets + 1] = d end
          for _, ds in ipairs(sets) do
            for _, keep in ipairs({ false, true }) do
              local e, g = run_both(function(x) return x[n]:sum(dims_arg(ds), keep) end, inputs)
              agree(e, g, tol)
              e, g = run_both(function(x) return c_reduce(x[n], "prod", ds, keep) end, inputs)
              agree(e, g, tol)
              if FLOAT[dt] then
                e, g = run_both(function(x) return x[n]:mean(dims_arg(ds), keep) end, inputs)
                agree(e, g, tol)
                e, g = run_both(function(x) return x[n]:var(dims_arg(ds), { keepdim = keep }) end, inputs)
                agree(e, g, tol)
                e, g = run_both(function(x) return x[n]:logsumexp(dims_arg(ds), keep) end, inputs)
                agree(e, g, tol)
              end
              local empty = inputs[n]:numel() == 0 and (ds == "all" or inputs[n]:shape()[ds] == 0)
              if empty then
                same_error(function(x) return c_reduce(x[n], "max", ds, keep) end, inputs,
                  "max: cannot reduce over an empty dim")
                if ds ~= "all" then
                  same_error(function(x) return x[n]:min(ds, keep) end, inputs, "min: cannot reduce over an empty dim")
                  same_error(function(x) return x[n]:argmax(ds, keep) end, inputs, "argmax: cannot reduce over an empty dim")
                end
              else
                e, g = run_both(function(x) return c_reduce(x[n], "max", ds, keep) end, inputs)
                agree(e, g)
                if ds ~= "all" then
                  local ev, gv, ei, gi = run_both(function(x) return x[n]:min(ds, keep) end, inputs)
                  agree(ev, gv)
                  agree(ei, gi)
                end
              end
            end
          end
        end
        -- a 0-d tensor
        local e, g = run_both(function(x) return x.s:narrow(1, 1, 1):reshape({}):sum() end, inputs)
        agree(e, g, tol)
        e, g = run_both(function(x) return x.s:narrow(1, 1, 1):reshape({}):argmax() end, inputs)
        agree(e, g)
      end)
    end
  end)

  describe("large and many rows", function()
    for _, dt in ipairs({ "f32", "f64", "f16", "bf16", "i32" }) do
      it(("agree with the CPU for %s rows of 100000, a full reduction of 4M, many short rows and long columns"):format(dt), function()
        -- sums of 1e5 values of magnitude ~1 (|sum| ~ 300): f32 roundings in another order
        local big = { f32 = { atol = 2e-3, rtol = 1e-4 }, f64 = TOL.f64, f16 = { atol = 0.5, rtol = 4e-3 },
                      bf16 = { atol = 4, rtol = 2e-2 } }
        local tol = big[dt]
        local inputs = {
          long = values({ 3, 100000 }, dt, -50, 50),
          full = values({ 2000, 2000 }, dt, -50, 50),
          short = values({ 100000, 3 }, dt, -50, 50),
          warp = values({ 20000, 50 }, dt, -50, 50),
          block = values({ 300, 7000 }, dt, -50, 50),
          col = values({ 100000, 8 }, dt, -50, 50),
        }
        local function red(name, d)
          local inputs = { [name] = inputs[name] } -- copy only this one to the GPU
          local e, g = run_both(function(x) return x[name]:sum(d) end, inputs)
          agree(e, g, tol)
          if FLOAT[dt] then
            e, g = run_both(function(x) return x[name]:mean(d) end, inputs)
            agree(e, g, TOL[dt])
            e, g = run_both(function(x) return x[name]:var(d) end, inputs)
            agree(e, g, TOL[dt])
            e, g = run_both(function(x) return x[name]:logsumexp(d) end, inputs)
            agree(e, g, TOL[dt])
          end
          if d then
            local ev, gv, ei, gi = run_both(function(x) return x[name]:max(d) end, inputs)
            agree(ev, gv)
            agree(ei, gi)
          else
            e, g = run_both(function(x) return x[name]:max() end, inputs)
            agree(e, g)
          end
          e, g = run_both(function(x) return x[name]:argmin(d) end, inputs)
          agree(e, g)
        end
        red("long", 2)
        red("long", nil)
        red("full", nil)
        red("short", 2)
        red("warp", 2)
        red("block", 2)
        red("col", 1)
        red("warp", 1)
        -- a full reduction of a transposed large tensor (reduced dims reordered by stride)
        local full = { full = inputs.full }
        local e, g = run_both(function(x) return x.full:t():sum() end, full)
        agree(e, g, tol)
        e, g = run_both(function(x) return x.full:t():argmax() end, full)
        agree(e, g)
      end)
    end

    it("gives the same bits from run to run", function()
      local a = tn.randn(3000, 1500):cuda()
      local s1, s2 = a:sum(), a:sum()
      assert.tensor_equal(s1:cpu(), s2:cpu())
      local c1, c2 = a:sum(1), a:sum(1)
      assert.tensor_equal(c1:cpu(), c2:cpu())
      local l1, l2 = a:logsumexp(2), a:logsumexp(2)
      assert.tensor_equal(l1:cpu(), l2:cpu())
      local y1, y2 = a:softmax(1), a:softmax(1)
      assert.tensor_equal(y1:cpu(), y2:cpu())
      local w = tn.randn(4, 300000):cuda()
      assert.tensor_equal(w:log_softmax(2):cpu(), w:log_softmax(2):cpu())
    end)
  end)

  describe("sum_to", function()
    local SHAPES = { { 6 }, { 5, 1 }, { 1, 5, 6 }, { 4, 1, 6 }, { 4, 5, 1 }, { 1 }, {}, { 1, 1, 1 } }
    for _, dt in ipairs(ALL) do
      it(("sums %s down to every broadcastable shape from every view"):format(dt), function()
        local inputs = { a = values({ 4, 5, 6 }, dt, dt == "u8" and 100 or -9, dt == "u8" and 250 or 10) }
        local tol = FLOAT[dt] and TOL[dt] or nil
        for _, v in ipairs(VIEWS) do
          for _, s in ipairs(SHAPES) do
            local e, g = run_both(function(x)
              local a = v[2](x.a)
              local sh = a:shape()
              -- the shape right-aligned to a's (views change a's shape)
              local target = {}
              for i = 1, #s do
                local ad = sh[#sh - #s + i]
                target[i] = s[i] == 1 and 1 or ad
              end
              return a:sum_to(target)
            end, inputs)
            agree(e, g, tol)
          end
        end
      end)
    end

    it("writes into a preallocated non-contiguous out (integers truncated to its dtype)", function()
      for _, dt in ipairs({ "f32", "f16", "i32", "u8" }) do
        local inputs = { a = values({ 4, 5, 6 }, dt, 100, 250) }
        local e, g = run_both(function(x)
          local o = tn.zeros({ 6, 4 }, { dtype = dt, device = x.a:device() }):t() -- (4, 6), strides (1, 4)
          check(C.tn_sum_to(o:unsqueeze(2)._c, x.a._c))
          return o
        end, inputs)
        agree(e, g, FLOAT[dt] and TOL[dt] or nil)
      end
    end)
  end)

  describe("preallocated outputs", function()
    it("tn_reduce and tn_max_dim write into transposed outs", function()
      for _, dt in ipairs({ "f32", "bf16", "i64" }) do
        local inputs = { a = values({ 4, 5, 6 }, dt) }
        local tol = FLOAT[dt] and TOL[dt] or nil
        local e, g = run_both(function(x)
          local o = tn.zeros({ 6, 4 }, { dtype = dt == "i64" and "i64" or dt, device = x.a:device() }):t()
          return c_reduce(x.a, "sum", { 2 }, false, 0, o)
        end, inputs)
        agree(e, g, tol)
        local ev, gv, ei, gi = run_both(function(x)
          local dev = x.a:device()
          local vals = tn.zeros({ 6, 4 }, { dtype = dt, device = dev }):t()
          local idx = tn.zeros({ 6, 4 }, { dtype = "i64", device = dev }):t()
          OUT[0], OUT2[0] = vals._c, idx._c
          check(C.tn_max_dim(OUT, OUT2, x.a._c, 1, 0, 0))
          return vals, idx
        end, inputs)
        agree(ev, gv)
        agree(ei, gi)
      end
    end)
  end)
end)

describe("gpu softmax #gpu", function()
  describe("forward", function()
    for _, dt in ipairs(FLOATS) do
      for _, v in ipairs(VIEWS) do
        it(("gives the CPU's %s softmax and log_softmax along every dim of a %s input"):format(dt, v[1]), function()
          local inputs = { a = values({ 4, 5, 6 }, dt) }
          for _, d in ipairs({ 1, 2, 3, -1, -2 }) do
            local e, g = run_both(function(x) return v[2](x.a):softmax(d) end, inputs)
            agree(e, g, SM_TOL[dt])
            e, g = run_both(function(x) return v[2](x.a):log_softmax(d) end, inputs)
            agree(e, g, TOL[dt])
          end
        end)
      end

      it(("gives the CPU's %s results for rows and columns of 1 to 100000 elements"):format(dt), function()
        for _, D in ipairs({ 1, 2, 7, 32, 33, 1000, 1025, 5000 }) do
          local inputs = { r = values({ 6, D }, dt):mul(3), c = values({ D, 6 }, dt):mul(3) }
          for _, case in ipairs({ { "r", -1 }, { "c", 1 } }) do
            local e, g = run_both(function(x) return x[case[1]]:softmax(case[2]) end, inputs)
            agree(e, g, SM_TOL[dt])
            e, g = run_both(function(x) return x[case[1]]:log_softmax(case[2]) end, inputs)
            agree(e, g, TOL[dt])
          end
        end
        local inputs = { long = values({ 2, 100000 }, dt), tall = values({ 100000, 2 }, dt),
                         many = values({ 50000, 5 }, dt), mid = values({ 3, 3000, 40 }, dt) }
        for _, case in ipairs({ { "long", 2 }, { "tall", 1 }, { "many", 2 }, { "many", 1 }, { "mid", 2 } }) do
          local one = { [case[1]] = inputs[case[1]] }
          local e, g = run_both(function(x) return x[case[1]]:softmax(case[2]) end, one)
          agree(e, g, SM_TOL[dt])
          e, g = run_both(function(x) return x[case[1]]:log_softmax(case[2]) end, one)
          agree(e, g, { atol = TOL[dt].atol * 10, rtol = TOL[dt].rtol })
        end
      end)

      it(("masks -inf entries and gives NaN rows for NaN, +inf and all -inf rows like the CPU (%s)"):format(dt), function()
        local a = tn.randn(6, 9)
        a:set({ 1, 3 }, -math.huge); a:set({ 1, 9 }, -math.huge) -- masked: finite probabilities
        for j = 1, 9 do a:set({ 2, j }, -math.huge) end           -- all masked: NaN
        a:set({ 3, 5 }, math.huge)                                 -- +inf: NaN
        a:set({ 4, 1 }, 0 / 0)                                     -- NaN: NaN
        a:set({ 5, 2 }, math.huge); a:set({ 5, 6 }, -math.huge)
        a = a:to(dt)
        local inputs = { a = a, t = a:t():contiguous() }
        for _, case in ipairs({ { "a", 2 }, { "t", 1 } }) do
          local e, g = run_both(function(x) return x[case[1]]:softmax(case[2]) end, inputs)
          agree(e, g, SM_TOL[dt])
          e, g = run_both(function(x) return x[case[1]]:log_softmax(case[2]) end, inputs)
          agree(e, g, TOL[dt])
        end
      end)
    end

    it("writes in place and into a transposed out through the C API", function()
      for _, dt in ipairs(FLOATS) do
        local inputs = { a = values({ 7, 300 }, dt) }
        local e, g = run_both(function(x)
          local a = x.a:clone()
          OUT[0] = a._c
          check(C.tn_softmax(OUT, a._c, 1, 1)) -- log_softmax of a into a
          return a
        end, inputs)
        agree(e, g, TOL[dt])
        e, g = run_both(function(x)
          local o = tn.zeros({ 300, 7 }, { dtype = dt, device = x.a:device() }):t()
          OUT[0] = o._c
          check(C.tn_softmax(OUT, x.a._c, 1, 0))
          return o
        end, inputs)
        agree(e, g, SM_TOL[dt])
      end
    end)
  end)

  describe("backward", function()
    for _, dt in ipairs(FLOATS) do
      it(("gives the CPU's %s gradients for rows, columns, strided and broadcast operands"):format(dt), function()
        local inputs = {}
        for _, s in ipairs({ { 5, 7 }, { 4, 5, 6 }, { 3, 2000 }, { 9, 40 } }) do
          local key = table.concat(s, "x")
          inputs[key] = values(s, dt)
          inputs["g" .. key] = values(s, dt)
        end
        for _, log in ipairs({ false, true }) do
          for _, case in ipairs({ { "5x7", -1 }, { "5x7", 1 }, { "4x5x6", 2 }, { "4x5x6", 3 }, { "3x2000", 2 }, { "9x40", 1 } }) do
            local k, d = case[1], case[2]
            local e, g = run_both(function(x)
              local y = log and x[k]:log_softmax(d) or x[k]:softmax(d)
              return c_softmax_backward(x["g" .. k], y, d, log)
            end, inputs)
            agree(e, g, TOL[dt])
          end
          -- transposed y and grad_out (softmax along a dim of stride != 1), a broadcast grad_out
          local e, g = run_both(function(x)
            local y = log and x["4x5x6"]:transpose(1, 3):log_softmax(1) or x["4x5x6"]:transpose(1, 3):softmax(1)
            return c_softmax_backward(x["g4x5x6"]:transpose(1, 3), y, 1, log)
          end, inputs)
          agree(e, g, TOL[dt])
          e, g = run_both(function(x)
            local y = log and x["5x7"]:log_softmax(2) or x["5x7"]:softmax(2)
            return c_softmax_backward(x["g5x7"]:narrow(1, 2, 1):expand(5, 7), y, 2, log)
          end, inputs)
          agree(e, g, TOL[dt])
          -- in place: grad_in is grad_out
          e, g = run_both(function(x)
            local y = log and x["3x2000"]:log_softmax(2) or x["3x2000"]:softmax(2)
            local gi = x["g3x2000"]:clone()
            return c_softmax_backward(gi, y, 2, log, gi)
          end, inputs)
          agree(e, g, TOL[dt])
        end
      end)
    end

    it("runs under autograd on GPU tensors", function()
      local x = tn.randn(6, 11)
      local w = tn.randn(6, 11)
      local function grads(dev)
        local xx = (dev == "cpu" and x:clone() or x:cuda()):requires_grad(true) -- a new leaf each
        local loss = (xx:log_softmax(2) * w:to(dev)):sum() + xx:softmax(1):max()
        loss:backward()
        return xx.grad
      end
      local e, g = grads("cpu"), grads("cuda")
      assert.are.equal("cuda", g:device())
      assert.tensor_near(e, g:cpu(), TOL.f32)
    end)
  end)
end)

describe("gpu reduction errors #gpu", function()
  it("are the CPU's, word for word", function()
    local inputs = { a = values({ 2, 3 }, "f32"), i = values({ 2, 3 }, "i32"), u = values({ 2, 3 }, "u8"),
                     z = values({ 0, 3 }, "f32"), y = values({ 3, 2 }, "f32") }
    same_error(function(x) return c_reduce(x.i, "mean") end, inputs, "mean: needs a float dtype, got i32")
    same_error(function(x) return c_reduce(x.u, "logsumexp", { 1 }) end, inputs, "logsumexp: needs a float dtype")
    same_error(function(x) return c_reduce(x.i, "var", { 2 }) end, inputs, "var: needs a float dtype")
    same_error(function(x) return c_reduce(x.a, "argmax", { 1, 2 }) end, inputs, "argmax: takes one dim or all")
    same_error(function(x) return c_reduce(x.a, "sum", { 1, -2 }) end, inputs, "sum: dim 1 listed twice")
    same_error(function(x) return c_reduce(x.a, "sum", { 3 }) end, inputs, "sum: dim 3 out of range")
    same_error(function(x) return x.z:max(1) end, inputs, "max: cannot reduce over an empty dim")
    same_error(function(x) return x.z:argmin() end, inputs, "argmin: cannot reduce over an empty dim")
    same_error(function(x) return x.a:sum_to({ 7 }) end, inputs, "sum_to: out [7] does not broadcast to a [2, 3]")
    same_error(function(x)
      return c_reduce(x.a, "sum", { 1 }, false, 0, tn.zeros({ 4 }, { device = x.a:device() }))
    end, inputs, "sum: out has shape [4]")
    same_error(function(x)
      OUT[0] = nil
      check(C.tn_softmax(OUT, x.i._c, 0, 0))
      return lib.wrap(OUT[0])
    end, inputs, "softmax: argument 'a' must be a float tensor")
    same_error(function(x)
      OUT[0] = nil
      check(C.tn_softmax(OUT, x.a._c, 2, 1))
      return lib.wrap(OUT[0])
    end, inputs, "log_softmax: dim 3 out of range")
    same_error(function(x) return c_softmax_backward(x.a, x.y, 1, false) end, inputs,
      "softmax_backward: grad_out [2, 3] (f32) and y [3, 2] (f32) must match")
  end)

  it("name mixed devices", function()
    local a = values({ 2, 3 }, "f32")
    local ga = a:cuda()
    local ok, msg = pcall(function() check(C.tn_sum_to(tn.zeros({ 3 })._c, ga._c)) end)
    assert.is_false(ok)
    assert.truthy(strip(msg):find("sum_to: tensors on different devices (cpu and cuda)", 1, true), strip(msg))
    ok, msg = pcall(function() return c_softmax_backward(ga, a:softmax(2), 2, false) end)
    assert.is_false(ok)
    assert.truthy(strip(msg):find("softmax_backward: tensors on different devices (cuda and cpu)", 1, true), strip(msg))
    ok, msg = pcall(function() return c_reduce(ga, "sum", { 1 }, false, 0, tn.zeros({ 3 })) end)
    assert.is_false(ok)
    assert.truthy(strip(msg):find("sum: out is on cpu, expected cuda", 1, true), strip(msg))
  end)
end)
