-- Specs of tern.ops: elementwise math with broadcasting and promotion, comparisons, where,
-- reductions, softmax, matmul, joining and indexing. Golden values come from PyTorch 1.13
-- (spec/fixtures/make_fixtures.py).
local h = require "helpers.init"
local tn = h.tn

local function t(x, dt) return tn.tensor(x, { dtype = dt }) end

describe("tern.ops", function()
  describe("add, sub, mul, div", function()
    local a = t({ { 1, 2, 3 }, { 4, 5, 6 } })

    it("work elementwise on equal shapes", function()
      local b = t({ { 6, 5, 4 }, { 3, 2, 1 } })
      assert.are.same({ { 7, 7, 7 }, { 7, 7, 7 } }, (a + b):totable())
      assert.are.same({ { -5, -3, -1 }, { 1, 3, 5 } }, (a - b):totable())
      assert.are.same({ { 6, 10, 12 }, { 12, 10, 6 } }, (a * b):totable())
      assert.tensor_near({ { 1 / 6, 0.4, 0.75 }, { 4 / 3, 2.5, 6 } }, a / b)
      assert.are.same((a + b):totable(), tn.add(a, b):totable())
      assert.are.same((a - b):totable(), a:sub(b):totable())
    end)

    it("broadcast a row, a column and both", function()
      assert.are.same({ { 11, 22, 33 }, { 14, 25, 36 } }, (a + t({ 10, 20, 30 })):totable())
      assert.are.same({ { 2, 4, 6 }, { 40, 50, 60 } }, (a * t({ { 2 }, { 10 } })):totable())
      local outer = t({ { 1 }, { 2 } }) - t({ { 10, 20, 30 } })
      assert.are.same({ { -9, -19, -29 }, { -8, -18, -28 } }, outer:totable())
      assert.are.same({ 2, 4, 3 }, (tn.zeros(2, 1, 3) + tn.zeros(4, 1)):shape())
    end)

    it("broadcast a 0-d tensor", function()
      assert.are.same({ { 2, 4, 6 }, { 8, 10, 12 } }, (a * tn.tensor(2)):totable())
    end)

    it("take numbers on either side", function()
      assert.are.same({ { 2, 3, 4 }, { 5, 6, 7 } }, (a + 1):totable())
      assert.are.same({ { 2, 3, 4 }, { 5, 6, 7 } }, (1 + a):totable())
      assert.are.same({ { 0, 1, 2 }, { 3, 4, 5 } }, (a - 1):totable())
      assert.are.same({ { 9, 8, 7 }, { 6, 5, 4 } }, (10 - a):totable())
      assert.are.same({ { 3, 6, 9 }, { 12, 15, 18 } }, (3 * a):totable())
      assert.are.same({ { 0.5, 1, 1.5 }, { 2, 2.5, 3 } }, (a / 2):totable())
      assert.tensor_near({ { 12, 6, 4 }, { 3, 2.4, 2 } }, 12 / a)
    end)

    it("add and sub take an alpha multiplier", function()
      assert.are.same({ 21, 42 }, t({ 1, 2 }):add(t({ 10, 20 }), 2):totable())
      assert.are.same({ -19, -38 }, t({ 1, 2 }):sub(t({ 10, 20 }), 2):totable())
    end)

    it("in-place forms write into the tensor", function()
      local x = t({ 1, 2, 3 })
      x:add_(1):mul_(t({ 2, 2, 2 })):sub_(1):div_(2)
      assert.are.same({ 1.5, 2.5, 3.5 }, x:totable())
      local y = tn.zeros(2, 3)
      y:add_(t({ 1, 2, 3 }))
      assert.are.same({ { 1, 2, 3 }, { 1, 2, 3 } }, y:totable())
    end)

    it("raise on shapes that do not broadcast, naming both", function()
      assert.error_matches(function() return tn.zeros(2, 3) + tn.zeros(4) end, "add.*%[2, 3%].*%[4%]")
    end)
  end)

  describe("unary minus, pow and ^", function()
    it("negates", function()
      assert.are.same({ -1, 2, -0.5 }, (-t({ 1, -2, 0.5 })):totable())
      assert.are.same({ -1, 2 }, tn.neg(t({ 1, -2 }, "i32")):totable())
    end)

    it("raises to tensor and number powers on either side", function()
      local x = t({ 1, 2, 3 })
      assert.are.same({ 1, 4, 9 }, (x ^ 2):totable())
      assert.are.same({ 2, 4, 8 }, (2 ^ x):totable())
      assert.are.same({ 1, 4, 27 }, (x ^ x):totable())
      assert.tensor_near({ 1, math.sqrt(2), math.sqrt(3) }, x:pow(0.5))
      assert.tensor_near({ 1, 0.25, 1 / 9 }, x ^ -2)
    end)
  end)

  describe("dtype promotion", function()
    it("widens to the larger kind", function()
      assert.are.equal("f32", (t({ 1 }, "i32") + t({ 1 }, "f32")):dtype())
      assert.are.equal("i64", (t({ 1 }, "i64") + t({ 1 }, "i32")):dtype())
      assert.are.equal("i32", (t({ 1 }, "u8") + t({ 1 }, "i32")):dtype())
      assert.are.equal("f64", (t({ 1 }, "f32") * t({ 1 }, "f64")):dtype())
      assert.are.equal("f32", (t({ 1 }, "f16") + t({ 1 }, "bf16")):dtype())
      assert.are.equal("f16", (t({ 1 }, "f16") + t({ 1 }, "i64")):dtype())
      assert.are.equal("f32", tn.promote_types("f16", "bf16"))
      assert.are.equal("i64", tn.promote_types("u8", "i64"))
    end)

    it("keeps the tensor dtype with integral numbers and goes to f32 for fractions", function()
      local i = t({ 1, 2 }, "i32")
      assert.are.equal("i32", (i + 1):dtype())
      assert.are.equal("i32", (i * 3):dtype())
      local f = i + 0.5
      assert.are.equal("f32", f:dtype())
      assert.are.same({ 1.5, 2.5 }, f:totable())
      assert.are.equal("f16", (t({ 1 }, "f16") * 2.5):dtype())
    end)

    it("divides integers as floats", function()
      local q = t({ 7, -7 }, "i64") / t({ 2, 2 }, "i64")
      assert.are.equal("f32", q:dtype())
      assert.are.same({ 3.5, -3.5 }, q:totable())
      assert.are.same({ 3.5, -3.5 }, (t({ 7, -7 }, "i32") / 2):totable())
    end)

    it("computes f16 and bf16 in f32 and rounds the result", function()
      local x = t({ 1, 2 }, "f16") + t({ 2 ^ -11, 2 ^ -10 }, "f16")
      -- 1 + 2^-11 is a tie that rounds to even (1); 2 + 2^-10 is a tie too (2)
      assert.are.same({ 1, 2 }, x:totable())
      assert.tensor_near({ 1, 2 }, (t({ 1, 4 }, "bf16")):sqrt(), { atol = 0, rtol = 2 ^ -8 })
    end)
  end)

  describe("unary math", function()
    local xs = { 0.1, 0.5, 1, 2.5, 7 }
    local x = t(xs, "f64")
    local function map(f) local r = {} for i, v in ipairs(xs) do r[i] = f(v) end return r end

    it("exp, log, sqrt, rsqrt, log1p, expm1 match math", function()
      assert.tensor_near(map(math.exp), x:exp(), { rtol = 1e-12 })
      assert.tensor_near(map(math.log), x:log(), { rtol = 1e-12, atol = 1e-15 })
      assert.tensor_near(map(math.sqrt), x:sqrt(), { rtol = 1e-12 })
      assert.tensor_near(map(function(v) return 1 / math.sqrt(v) end), x:rsqrt(), { rtol = 1e-12 })
      assert.tensor_near(map(function(v) return math.log(1 + v) end), x:log1p(), { rtol = 1e-12 })
      assert.tensor_near(map(function(v) return math.exp(v) - 1 end), x:expm1(), { rtol = 1e-12 })
    end)

    it("tanh, sigmoid, sin, cos, reciprocal, square match math", function()
      local y = x - 3
      local ys = y:totable()
      local function mapy(f) local r = {} for i, v in ipairs(ys) do r[i] = f(v) end return r end
      assert.tensor_near(mapy(math.tanh), y:tanh(), { rtol = 1e-12 })
      assert.tensor_near(mapy(function(v) return 1 / (1 + math.exp(-v)) end), y:sigmoid(), { rtol = 1e-12 })
      assert.tensor_near(mapy(math.sin), y:sin(), { rtol = 1e-12, atol = 1e-15 })
      assert.tensor_near(mapy(math.cos), y:cos(), { rtol = 1e-12, atol = 1e-15 })
      assert.tensor_near(mapy(function(v) return 1 / v end), y:reciprocal(), { rtol = 1e-12 })
      assert.tensor_near(mapy(function(v) return v * v end), y:square(), { rtol = 1e-12 })
    end)

    it("sigmoid and tanh saturate without NaN for large inputs", function()
      assert.are.same({ 0, 1 }, t({ -1000, 1000 }):sigmoid():totable())
      assert.are.same({ -1, 1 }, t({ -1000, 1000 }):tanh():totable())
    end)

    it("abs, relu, sign, floor, ceil, round", function()
      local v = t({ -2.5, -0.5, 0, 0.5, 1.5, 2.5 })
      assert.are.same({ 2.5, 0.5, 0, 0.5, 1.5, 2.5 }, v:abs():totable())
      assert.are.same({ 0, 0, 0, 0.5, 1.5, 2.5 }, v:relu():totable())
      assert.are.same({ -1, -1, 0, 1, 1, 1 }, v:sign():totable())
      assert.are.same({ -3, -1, 0, 0, 1, 2 }, v:floor():totable())
      assert.are.same({ -2, -0, 0, 1, 2, 3 }, v:ceil():totable())
      -- half to even, like torch.round
      assert.are.same({ -2, -0, 0, 0, 2, 2 }, v:round():totable())
      assert.are.same({ 3, 0, 4 }, t({ -3, 0, 4 }, "i64"):abs():totable())
    end)

    it("converts integer inputs to f32 for transcendental functions", function()
      local e = t({ 0, 1 }, "i32"):exp()
      assert.are.equal("f32", e:dtype())
      assert.tensor_near({ 1, math.exp(1) }, e)
    end)

    it("f32 exp is within 2 ulp of the f64 exp on every length, strided and f16 (vector path)", function()
      for _, n in ipairs({ 1, 7, 8, 9, 17, 1001 }) do
        local v = {}
        for i = 1, n do v[i] = -100 + 188.7 * (i - 0.5) / n end -- from subnormal results to near overflow
        local d = t(v, "f32"):double():exp()
        local f = t(v, "f32"):exp():double()
        -- 2 ulp of f32 relative; below 2^-126 the f32 result is subnormal: 2 steps of 2^-149
        assert.tensor_near(d, f, { rtol = 2 ^ -22, atol = 2 ^ -148 })
        local m = t(v, "f32"):view(1, n):expand(2, n):transpose(1, 2) -- stride-0 and strided input
        assert.are.same(f:totable(), m:exp():select(2, 2):double():totable())
      end
      local e = t({ 0 / 0, math.huge, -math.huge, 89, -104, 0, 88.72283 }, "f32"):exp():totable()
      assert.is_true(e[1] ~= e[1])
      assert.are.same({ math.huge, 0, math.huge, 0, 1 }, { e[2], e[3], e[4], e[5], e[6] })
      assert.is_true(e[7] < math.huge and e[7] > 3.4e38)
      local x16 = t({ -3, -1, 0, 0.5, 2, 5, 11, -17, 1.25 }, "f16")
      assert.tensor_near(x16:double():exp(), x16:exp():double(), { rtol = 2 ^ -10 })
    end)

    it("gives NaN and infinities where math does", function()
      local r = t({ -1, 0 }):log():totable()
      assert.is_true(r[1] ~= r[1])
      assert.are.equal(-math.huge, r[2])
      assert.are.equal(math.huge, t({ 0 }):reciprocal():item())
    end)

    it("are available as tn functions", function()
      assert.tensor_near({ 1, math.exp(1) }, tn.exp(t({ 0, 1 })))
      assert.are.same({ 0, 2 }, tn.relu(t({ -1, 2 })):totable())
    end)
  end)

  describe("comparisons", function()
    local a = t({ 1, 2, 3 })
    it("give u8 masks with broadcasting and numbers", function()
      local b = t({ 3, 2, 1 })
      assert.are.equal("u8", a:eq(b):dtype())
      assert.are.same({ 0, 1, 0 }, a:eq(b):totable())
      assert.are.same({ 1, 0, 1 }, a:ne(b):totable())
      assert.are.same({ 1, 0, 0 }, a:lt(b):totable())
      assert.are.same({ 1, 1, 0 }, a:le(b):totable())
      assert.are.same({ 0, 0, 1 }, a:gt(b):totable())
      assert.are.same({ 0, 1, 1 }, a:ge(b):totable())
      assert.are.same({ 0, 0, 1 }, a:gt(2):totable())
      assert.are.same({ { 1, 0, 0 }, { 1, 1, 0 } }, a:le(t({ { 1 }, { 2 } })):totable())
    end)

    it("compare across dtypes after promotion", function()
      assert.are.same({ 0, 1, 0 }, a:eq(t({ 0, 2, 4 }, "i64")):totable())
    end)

    it("treat NaN as unequal to everything", function()
      local n = t({ 0 / 0, 1 })
      assert.are.same({ 0, 1 }, n:eq(n):totable())
      assert.are.same({ 1, 0 }, n:ne(n):totable())
    end)

    it("logical_not flips a mask", function()
      assert.are.same({ 1, 0, 0 }, t({ 0, 1, 5 }, "u8"):logical_not():totable())
    end)

    it("maximum and minimum broadcast", function()
      assert.are.same({ { 2, 2, 3 } }, tn.maximum(t({ { 1, 2, 3 } }), t({ 2 })):totable())
      assert.are.same({ 1, 2, 2 }, a:minimum(2):totable())
    end)
  end)

  describe("where, masked_fill, clamp", function()
    it("where picks from tensors or numbers with broadcasting", function()
      local c = t({ 1, 0, 1 }, "u8")
      assert.are.same({ 1, 20, 3 }, tn.where(c, t({ 1, 2, 3 }), t({ 10, 20, 30 })):totable())
      assert.are.same({ { 1, 0, 1 }, { 1, 0, 1 } }, tn.where(c, tn.ones(2, 1), 0):totable())
      assert.are.same({ 5, -5, 5 }, tn.where(c, 5, -5):totable())
      assert.are.same({ 7, 2 }, tn.where(t({ 2.5, 0 }), 7, t({ 1, 2 })):totable())
    end)

    it("where promotes its value dtypes", function()
      local r = tn.where(t({ 1, 0 }, "u8"), t({ 1, 2 }, "i64"), t({ 0.5, 0.5 }))
      assert.are.equal("f32", r:dtype())
      assert.are.same({ 1, 0.5 }, r:totable())
    end)

    it("masked_fill fills where the broadcast mask is set", function()
      local x = t({ { 1, 2 }, { 3, 4 } })
      assert.are.same({ { 0, 2 }, { 0, 4 } }, x:masked_fill(t({ 1, 0 }, "u8"), 0):totable())
      assert.are.same({ { -1, 2 }, { 3, -1 } }, x:masked_fill(tn.eye(2, { dtype = "u8" }), -1):totable())
      assert.are.same({ { 9, 9 }, { 3, 4 } }, x:masked_fill(x:lt(3), 9):totable())
      assert.are.same({ { 1, 2 }, { 3, 4 } }, x:totable())
    end)

    it("clamp bounds one or both sides", function()
      local x = t({ -2, -0.5, 0.5, 2 })
      assert.are.same({ -1, -0.5, 0.5, 1 }, x:clamp(-1, 1):totable())
      assert.are.same({ 0, 0, 0.5, 2 }, x:clamp(0):totable())
      assert.are.same({ -2, -0.5, 0, 0 }, x:clamp(nil, 0):totable())
      assert.are.same({ 0, 0, 3 }, t({ -5, 0, 9 }, "i64"):clamp(0, 3):totable())
    end)

    it("clamp keeps NaN", function()
      local r = t({ 0 / 0 }):clamp(0, 1):item()
      assert.is_true(r ~= r)
    end)
  end)

  describe("reductions", function()
    local a = t({ { 1, 2, 3 }, { 4, 5, 6 } })

    it("sum over everything, a dim, negative dims and a list of dims", function()
      assert.are.equal(21, a:sum():item())
      assert.are.same({}, a:sum():shape())
      assert.are.same({ 5, 7, 9 }, a:sum(1):totable())
      assert.are.same({ 6, 15 }, a:sum(2):totable())
      assert.are.same({ 6, 15 }, a:sum(-1):totable())
      assert.are.same({ { 6 }, { 15 } }, a:sum(2, true):totable())
      assert.are.same({ { 21 } }, a:sum(true):totable())
      local b = tn.arange(24):view(2, 3, 4)
      assert.are.same({ 60, 66, 72, 78 }, b:sum({ 1, 2 }):totable())
      assert.are.same({ { { 60, 66, 72, 78 } } }, b:sum({ 1, 2 }, true):totable())
      assert.are.same({ 66, 210 }, b:sum({ 2, 3 }):totable())
    end)

    it("sums integers into i64", function()
      local s = t({ 100, 200, 255 }, "u8"):sum()
      assert.are.equal("i64", s:dtype())
      assert.are.equal(555, s:item())
    end)

    it("sums an empty dim to 0", function()
      assert.are.same({ 0, 0 }, tn.zeros(2, 0):sum(2):totable())
    end)

    it("sums long f32 vectors accurately", function()
      local s = tn.full({ 1000000 }, 0.1):sum():item()
      assert.is_near(100000, s, 0.5)
    end)

    it("mean over everything and dims", function()
      assert.are.equal(3.5, a:mean():item())
      assert.are.same({ 2.5, 3.5, 4.5 }, a:mean(1):totable())
      assert.are.same({ { 2 }, { 5 } }, a:mean(2, true):totable())
      assert.are.equal(2, t({ 1, 2, 3 }, "i64"):mean():item())
    end)

    it("max and min over everything give 0-d tensors", function()
      assert.are.equal(6, a:max():item())
      assert.are.equal(1, a:min():item())
      assert.are.equal(-1, t({ -3, -1, -2 }, "i32"):max():item())
    end)

    it("max and min along a dim give values and 0-based i64 indices", function()
      local x = t({ { 1, 9, 3 }, { 7, 5, 6 } })
      local v, i = x:max(2)
      assert.are.same({ 9, 7 }, v:totable())
      assert.are.same({ 1, 0 }, i:totable())
      assert.are.equal("i64", i:dtype())
      v, i = x:min(1, true)
      assert.are.same({ { 1, 5, 3 } }, v:totable())
      assert.are.same({ { 0, 1, 0 } }, i:totable())
      v, i = x:max(-1, true)
      assert.are.same({ { 9 }, { 7 } }, v:totable())
    end)

    it("argmax and argmin index along a dim or the flattened tensor", function()
      local x = t({ { 1, 9, 3 }, { 7, 5, 6 } })
      assert.are.equal(1, x:argmax():item())
      assert.are.equal(0, x:argmin():item())
      assert.are.same({ 1, 0, 1 }, x:argmax(1):totable())
      assert.are.same({ 0, 1 }, x:argmin(2):totable())
      assert.are.same({ { 1 }, { 0 } }, x:argmax(2, true):totable())
      assert.are.equal("i64", x:argmax(1):dtype())
    end)

    it("argmax returns the first of tied maxima", function()
      assert.are.equal(1, t({ 0, 5, 5, 1 }):argmax():item())
    end)

    it("max propagates NaN", function()
      local m = t({ 1, 0 / 0, 3 }):max():item()
      assert.is_true(m ~= m)
    end)

    it("max of an empty tensor raises", function()
      assert.has_error(function() tn.zeros(0):max() end)
    end)

    it("logsumexp matches PyTorch and is stable for large inputs", function()
      local g = h.golden()
      assert.tensor_near(g.logsumexp_d2, g.sm_x:logsumexp(2), { rtol = 1e-12, atol = 1e-12 })
      assert.tensor_near(g.logsumexp_all, g.sm_x:logsumexp(), { rtol = 1e-12, atol = 1e-12 })
      assert.tensor_near(g.logsumexp_d2, g.sm_x:float():logsumexp(-1), { rtol = 1e-5 })
      assert.tensor_near({ 1000 + math.log(2) }, t({ { 1000, 1000 } }):logsumexp(2))
      assert.tensor_near({ { -math.huge } }, t({ { -math.huge, -math.huge } }):logsumexp(2, true))
    end)

    it("var matches PyTorch with and without correction and keepdim", function()
      local g = h.golden()
      local x = g.var_x
      assert.tensor_near(g.var_d2, x:var(2), { rtol = 1e-12 })
      assert.tensor_near(g.var_d2_c0, x:var(2, { correction = 0 }), { rtol = 1e-12 })
      assert.tensor_near(g.var_d2_c0, x:var(2, { unbiased = false }), { rtol = 1e-12 })
      assert.tensor_near(g.var_d1_keep, x:var(1, { keepdim = true }), { rtol = 1e-12 })
      assert.tensor_near(g.var_d1_keep, x:var(1, true), { rtol = 1e-12 })
      assert.tensor_near(g.var_all, x:var(), { rtol = 1e-12 })
      assert.tensor_near(g.var_d2, x:float():var(2), { rtol = 1e-5 })
      assert.tensor_near(g.var_d2:sqrt(), x:std(2), { rtol = 1e-12 })
    end)

    it("var of a constant is 0 even for large values", function()
      assert.tensor_near({ 0 }, tn.full({ 1, 1000 }, 1e4):var(2), { atol = 1e-6 })
    end)

    it("are available as tn functions", function()
      assert.are.equal(21, tn.sum(a):item())
      assert.are.same({ 2.5, 3.5, 4.5 }, tn.mean(a, 1):totable())
    end)
  end)

  describe("softmax and log_softmax", function()
    it("match PyTorch along each dim in f64", function()
      local g = h.golden()
      for d = 1, 2 do
        assert.tensor_near(g["softmax_d" .. d], g.sm_x:softmax(d), { rtol = 1e-12, atol = 1e-15 })
        assert.tensor_near(g["log_softmax_d" .. d], g.sm_x:log_softmax(d), { rtol = 1e-12, atol = 1e-12 })
      end
      assert.tensor_near(g.softmax_d2, g.sm_x:softmax(-1), { rtol = 1e-12, atol = 1e-15 })
    end)

    it("match PyTorch in f32, f16 and bf16 within their precision", function()
      local g = h.golden()
      assert.tensor_near(g.softmax_d2, g.sm_x:float():softmax(2), { rtol = 1e-5, atol = 1e-7 })
      assert.tensor_near(g.log_softmax_d2, g.sm_x:float():log_softmax(2), { rtol = 1e-5, atol = 1e-5 })
      -- the reference takes the rounded inputs (row 3 sits near 100, where bf16 steps by 0.5)
      local x16, xb = g.sm_x:half(), g.sm_x:bfloat16()
      local s16 = x16:softmax(2)
      assert.are.equal("f16", s16:dtype())
      assert.tensor_near(x16:double():softmax(2), s16, { rtol = 2 ^ -10, atol = 1e-4 })
      assert.tensor_near(xb:double():softmax(2), xb:softmax(2), { rtol = 2 ^ -7, atol = 1e-3 })
      assert.tensor_near(xb:double():log_softmax(2), xb:log_softmax(2), { rtol = 2 ^ -7, atol = 1e-3 })
    end)

    it("give rows that sum to 1 with no overflow for large logits", function()
      local s = t({ { 1000, 1001, 1002 }, { -1000, 0, 1000 } }):softmax(2)
      assert.tensor_near({ 1, 1 }, s:sum(2))
      assert.tensor_near({ { 0.09003057, 0.24472847, 0.66524096 }, { 0, 0, 1 } }, s, { atol = 1e-7 })
    end)

    it("require a dim", function()
      assert.error_matches(function() tn.zeros(2):softmax() end, "softmax: dim is required")
    end)
  end)

  describe("matmul and bmm", function()
    local g = h.golden()
    for _, case in ipairs({ "mm", "vm", "mv", "dot", "bcast", "batch_mv" }) do
      it("matches PyTorch for the " .. case .. " case in f64 and f32", function()
        local a, b = g["mat_" .. case .. "_a"], g["mat_" .. case .. "_b"]
        local out = a:matmul(b)
        assert.are.same(g["mat_" .. case .. "_out"]:shape(), out:shape())
        assert.tensor_near(g["mat_" .. case .. "_out"], out, { rtol = 1e-12, atol = 1e-12 })
        assert.tensor_near(g["mat_" .. case .. "_out"], a:float():matmul(b:float()), { rtol = 1e-5, atol = 1e-5 })
      end)
    end

    it("gives the same result for transposed and contiguous operands", function()
      tn.manual_seed(3)
      local a, b = tn.randn(5, 4), tn.randn(3, 5)
      local at, bt = a:t(), b:t() -- (4, 5), (5, 3), column-major views
      local ref = at:contiguous():matmul(bt:contiguous())
      assert.tensor_near(ref, at:matmul(bt), { rtol = 1e-5, atol = 1e-6 })
      assert.tensor_near(ref, at:contiguous():matmul(bt), { rtol = 1e-5, atol = 1e-6 })
      local n = tn.randn(4, 10):narrow(2, 2, 5) -- rows with a stride of 10
      assert.tensor_near(n:contiguous():matmul(bt:contiguous()), n:matmul(bt), { rtol = 1e-5, atol = 1e-6 })
    end)

    it("multiplies expanded (stride 0) batch operands", function()
      tn.manual_seed(4)
      local a = tn.randn(1, 3, 4):expand(2, 3, 4)
      local b = tn.randn(2, 4, 2)
      local ref = a:contiguous():matmul(b)
      assert.tensor_near(ref, a:matmul(b), { rtol = 1e-5, atol = 1e-6 })
    end)

    it("computes f16 and bf16 products in f32", function()
      local a = tn.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "f16" })
      local r = a:matmul(a)
      assert.are.equal("f16", r:dtype())
      assert.are.same({ { 7, 10 }, { 15, 22 } }, r:totable())
      local big = tn.full({ 1, 4096 }, 1, { dtype = "bf16" })
      -- an f32 accumulator counts past 256, where bf16 accumulation would stall
      assert.are.same({ { 4096 } }, big:matmul(big:t()):totable())
    end)

    it("multiplies integer tensors exactly or raises", function()
      local ok, r = pcall(function()
        return tn.tensor({ { 1, 2 } }, { dtype = "i64" }):matmul(tn.tensor({ { 3 }, { 4 } }, { dtype = "i64" }))
      end)
      if ok then assert.are.same({ { 11 } }, r:totable()) else assert.truthy(tostring(r):find("matmul")) end
    end)

    it("bmm multiplies batches", function()
      local a = tn.arange(12):view(2, 2, 3)
      local b = tn.ones(2, 3, 1)
      assert.are.same({ { { 3 }, { 12 } }, { { 21 }, { 30 } } }, a:bmm(b):totable())
    end)

    it("mm multiplies matrices", function()
      assert.are.same({ { 2 } }, tn.mm(t({ { 1, 1 } }), t({ { 1 }, { 1 } })):totable())
    end)

    it("handles empty inner dims", function()
      assert.are.same({ { 0, 0 }, { 0, 0 } }, tn.zeros(2, 0):matmul(tn.zeros(0, 2)):totable())
    end)

    it("gives the same result with 1 and 2 threads", function()
      local prev = tn.get_num_threads()
      tn.manual_seed(11)
      local a, b = tn.randn(64, 128, { dtype = "f64" }), tn.randn(128, 32, { dtype = "f64" })
      tn.set_num_threads(1)
      local r1 = a:matmul(b)
      tn.set_num_threads(2)
      local r2 = a:matmul(b)
      tn.set_num_threads(prev)
      assert.tensor_near(r1, r2, { rtol = 1e-12, atol = 1e-12 })
    end)
  end)

  describe("cat and stack", function()
    it("cat joins along a 1-based dim, default 1", function()
      local a, b = t({ { 1, 2 } }), t({ { 3, 4 }, { 5, 6 } })
      assert.are.same({ { 1, 2 }, { 3, 4 }, { 5, 6 } }, tn.cat({ a, b }):totable())
      assert.are.same({ { 1, 2, 9 } }, tn.cat({ a, t({ { 9 } }) }, 2):totable())
      assert.are.same({ { 1, 2, 9 } }, tn.cat({ a, t({ { 9 } }) }, -1):totable())
    end)

    it("cat promotes dtypes and takes non-contiguous inputs", function()
      local r = tn.cat({ t({ 1 }, "i32"), t({ 2.5 }, "f64") })
      assert.are.equal("f64", r:dtype())
      assert.are.same({ 1, 2.5 }, r:totable())
      local m = tn.arange(4):view(2, 2)
      assert.are.same({ { 0, 2, 0, 1 }, { 1, 3, 2, 3 } }, tn.cat({ m:t(), m }, 2):totable())
    end)

    it("stack adds a new dim", function()
      local a, b = t({ 1, 2 }), t({ 3, 4 })
      assert.are.same({ { 1, 2 }, { 3, 4 } }, tn.stack({ a, b }):totable())
      assert.are.same({ { 1, 3 }, { 2, 4 } }, tn.stack({ a, b }, 2):totable())
      assert.are.same({ 2, 2 }, tn.stack({ a, b }, -1):shape())
    end)

    it("stack raises on different shapes", function()
      assert.error_matches(function() tn.stack({ t({ 1 }), t({ 1, 2 }) }) end,
        "stack: element 2 has shape {2}, element 1 has {1}")
    end)
  end)

  describe("gather, scatter_add, index_select, index_add, embedding", function()
    local x = t({ { 1, 2, 3 }, { 4, 5, 6 } })

    it("gather reads 0-based indices along a dim", function()
      local i = t({ { 2, 0 }, { 1, 1 } }, "i64")
      assert.are.same({ { 3, 1 }, { 5, 5 } }, x:gather(2, i):totable())
      local j = t({ { 1, 0, 1 } }, "i32")
      assert.are.same({ { 4, 2, 6 } }, x:gather(1, j):totable())
    end)

    it("scatter_add adds duplicates and leaves the input untouched", function()
      local z = tn.zeros(2, 3)
      local i = t({ { 0, 0, 2 }, { 1, 1, 1 } }, "i64")
      local r = z:scatter_add(2, i, x)
      assert.are.same({ { 3, 0, 3 }, { 0, 15, 0 } }, r:totable())
      assert.are.same({ { 0, 0, 0 }, { 0, 0, 0 } }, z:totable())
    end)

    it("index_select picks slices along a dim", function()
      local i = t({ 2, 0, 2 }, "i64")
      assert.are.same({ { 3, 1, 3 }, { 6, 4, 6 } }, x:index_select(2, i):totable())
      assert.are.same({ { 4, 5, 6 } }, x:index_select(1, t({ 1 }, "i32")):totable())
    end)

    it("index_add adds slices, duplicates summing", function()
      local r = tn.zeros(3, 2):index_add(1, t({ 0, 2, 0 }, "i64"), t({ { 1, 1 }, { 2, 2 }, { 3, 3 } }))
      assert.are.same({ { 4, 4 }, { 0, 0 }, { 2, 2 } }, r:totable())
    end)

    it("embedding looks up rows for indices of any shape", function()
      local w = tn.arange(8):view(4, 2)
      local e = tn.embedding(w, t({ { 3, 0 }, { 1, 1 } }, "i64"))
      assert.are.same({ 2, 2, 2 }, e:shape())
      assert.are.same({ { { 6, 7 }, { 0, 1 } }, { { 2, 3 }, { 2, 3 } } }, e:totable())
    end)

    it("reject float index tensors", function()
      assert.error_matches(function() x:gather(2, t({ { 0 } })) end, "gather: index must be an i64 or i32 tensor, got f32")
    end)
  end)

  describe("non-contiguous inputs", function()
    tn.manual_seed(21)
    local base = tn.randn(6, 8, { dtype = "f64" })
    local views = {
      transposed = function() return base:t() end,
      narrowed = function() return base:narrow(2, 2, 5) end,
      stepped = function() return base:t():narrow(1, 3, 4) end,
      expanded = function() return base:select(1, 2):unsqueeze(1):expand(4, 8) end,
    }
    local ops = {
      add = function(a) return a + a:sum(1, true) end,
      mul_row = function(a) return a * a:select(1, 1) end,
      exp = function(a) return a:exp() end,
      relu = function(a) return a:relu() end,
      clamp = function(a) return a:clamp(-0.5, 0.5) end,
      where = function(a) return tn.where(a:gt(0), a, -a) end,
      masked_fill = function(a) return a:masked_fill(a:lt(0), 0) end,
      sum1 = function(a) return a:sum(1) end,
      sum2 = function(a) return a:sum(2, true) end,
      mean = function(a) return a:mean() end,
      max = function(a) return (a:max(2)) end,
      argmax = function(a) return a:argmax(1) end,
      var = function(a) return a:var(2) end,
      logsumexp = function(a) return a:logsumexp(1) end,
      softmax1 = function(a) return a:softmax(1) end,
      log_softmax2 = function(a) return a:log_softmax(2) end,
      matmul = function(a) return a:matmul(a:t()) end,
      cat = function(a) return tn.cat({ a, a }, 2) end,
      gather = function(a) return a:gather(2, tn.zeros(a:size(1), 2, { dtype = "i64" })) end,
      index_select = function(a) return a:index_select(1, tn.tensor({ 1, 0 }, { dtype = "i64" })) end,
      half = function(a) return a:half() end,
      contiguous = function(a) return a:contiguous() end,
    }
    for vname, mk in pairs(views) do
      for oname, op in pairs(ops) do
        it(oname .. " gives the same result on a " .. vname .. " view as on its copy", function()
          local v = mk()
          local ref = op(v:contiguous():clone())
          assert.tensor_near(ref, op(v), { rtol = 1e-12, atol = 1e-12 })
        end)
      end
    end
  end)

  describe("allclose and equal", function()
    it("compare whole tensors", function()
      assert.is_true(t({ 1, 2 }):allclose(t({ 1, 2 + 1e-9 })))
      assert.is_false(t({ 1, 2 }):allclose(t({ 1, 2.1 })))
      assert.is_false(t({ 1, 2 }):allclose(t({ 1, 2, 3 })))
      assert.is_true(t({ 1, 2 }):equal(t({ 1, 2 })))
      assert.is_false(t({ 1, 2 }):equal(t({ 1, 3 })))
    end)
  end)
end)
