-- Specs of the CUDA side of the element-wise ops (cuda/elementwise.cu, core/elementwise.c):
-- tn_binary, tn_binary_scalar (both orders), tn_unary, tn_clamp, tn_where and tn_masked_fill
-- run on the CPU and on the GPU from the same inputs, for every dtype each op takes, and the
-- GPU's result, brought back with :cpu(), must equal the CPU's: bit for bit where both devices
-- round alike (+ - * /, sqrt, rsqrt, reciprocal, square, min/max, comparisons, rounding, sign,
-- relu, clamp, selections, every integer op; a NaN matches any NaN), within the dtype's
-- tolerance for pow, atan2, exp, log, tanh, sigmoid, log1p, expm1, sin and cos (CUDA's libm
-- and FMA contraction differ from the CPU's in the last bits; f16/bf16 may then round to the
-- neighbouring value). Inputs hold NaN, infinities, signed zeros, ties of round and the
-- wrap-around values of the integer types. Layouts: contiguous (the vectorised path and its
-- tail), misaligned contiguous, broadcast both ways, 0-d, transposed, narrowed, permuted,
-- expanded (stride 0), non-contiguous outputs, in place, empty. Errors (integer division by
-- zero, dtypes, shapes) carry the same message on both devices.
--
-- Every block is tagged #gpu: on a machine without a GPU .ci/test.sh filters them out and
-- counts them as skipped. TERN_SPEC_GPU_DEVICE=cpu runs the same comparisons with the CPU
-- standing in for the GPU, which checks the specs themselves (not the GPU) on any machine:
--   TERN_SPEC_GPU_DEVICE=cpu luajit $(command -v busted) spec/gpu_elementwise_spec.lua
local ffi = require "ffi"
local h = require "helpers.init"
local tn = h.tn
local lib = require "tern.lib"
local C, OUT = lib.C, lib.OUT

local DEVICE = os.getenv("TERN_SPEC_GPU_DEVICE") or "cuda"
local DEVICE_TYPE = DEVICE:match("^%a+")

local DTYPES = { "f32", "f64", "f16", "bf16", "i32", "i64", "u8" }
local FLOATS = { "f32", "f64", "f16", "bf16" }
local INTS = { "i32", "i64", "u8" }
local IS_FLOAT = { f32 = true, f64 = true, f16 = true, bf16 = true }
local ELSIZE = { f32 = 4, f64 = 8, f16 = 2, bf16 = 2, i32 = 4, i64 = 8, u8 = 1 }

-- the enums of tern.h, by name
local BINOPS = { "add", "sub", "mul", "div", "pow", "maximum", "minimum", "atan2", "eq", "ne", "lt", "le", "gt", "ge" }
local UNOPS = { "neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "sign", "log1p", "expm1",
  "sin", "cos", "reciprocal", "square", "floor", "ceil", "round", "logical_not" }
local BIN, UN = {}, {}
for i, n in ipairs(BINOPS) do BIN[n] = i - 1 end
for i, n in ipairs(UNOPS) do UN[n] = i - 1 end
local INT_BINOPS = { "add", "sub", "mul", "div", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge" }
local INT_UNOPS = { "neg", "abs", "sign", "square", "relu", "floor", "ceil", "round", "logical_not" }
local CMP = { eq = true, ne = true, lt = true, le = true, gt = true, ge = true }

-- results the two devices may round differently (compared within TOL, not bit for bit)
local APPROX = { pow = true, atan2 = true, exp = true, log = true, tanh = true, sigmoid = true, log1p = true,
  expm1 = true, sin = true, cos = true }
-- a few ulps in f32 / f64 (CUDA's powf is within 4 ulps, glibc's within 1); one ulp of the
-- result type for f16 / bf16 (an f32 result near a tie may round either way)
local TOL = {
  f32 = { atol = 1e-6, rtol = 4e-6 },
  f64 = { atol = 1e-13, rtol = 1e-13 },
  f16 = { atol = 1e-3, rtol = 2e-3 },
  bf16 = { atol = 8e-3, rtol = 1.6e-2 },
}

local NAN, INF, NZERO = 0 / 0, math.huge, -1 / math.huge

-- ---- the two devices ---------------------------------------------------------------------------

-- The host side of a comparison gets a private copy (in-place ops must not touch the shared
-- inputs); the device side a copy on the device under test. Views are applied afterwards, so
-- both sides see the same layout.
local function host(x) return x:clone() end
local function dev(x) return DEVICE == "cpu" and x:clone() or x:to(DEVICE) end

-- ---- the C entry points (every dtype, without the Lua layer's promotions) -------------------

local function finish(st, out)
  local p = OUT[0]
  OUT[0] = nil
  if st ~= 0 then error(ffi.string(C.tn_last_error()), 0) end -- level 0: the bare C message
  if out then return out end
  return lib.wrap(p)
end

local function binary(a, b, op, out)
  OUT[0] = out and out._c or nil
  return finish(C.tn_binary(OUT, a._c, b._c, BIN[op]), out)
end

local function scalar(a, s, op, reverse, out)
  OUT[0] = out and out._c or nil
  return finish(C.tn_binary_scalar(OUT, a._c, s, BIN[op], reverse and 1 or 0), out)
end

local function unary(a, op, out)
  OUT[0] = out and out._c or nil
  return finish(C.tn_unary(OUT, a._c, UN[op]), out)
end

local function clamp(a, lo, hi, out)
  OUT[0] = out and out._c or nil
  return finish(C.tn_clamp(OUT, a._c, lo, hi), out)
end

local function where(cond, a, b, out)
  OUT[0] = out and out._c or nil
  return finish(C.tn_where(OUT, cond._c, a._c, b._c), out)
end

local function masked_fill(a, mask, v, out)
  OUT[0] = out and out._c or nil
  return finish(C.tn_masked_fill(OUT, a._c, mask._c, v), out)
end

-- ---- comparing results -------------------------------------------------------------------------

-- expected and actual (CPU tensors) have the same dtype, shape and bytes; a NaN matches any NaN
-- (the devices' default NaNs differ in sign and payload). level as in helpers/gpu.lua.
local function same_bits(expected, actual, what, level)
  require("helpers.gpu").same_bits(expected, actual, what, true, (level or 2) + 1)
end

local function same_result(expected, actual, what, approx)
  assert.are.equal(DEVICE_TYPE, actual:device(), what .. ": the result is not on the device")
  actual = actual:cpu()
  if approx and IS_FLOAT[expected:dtype()] then
    assert.are.equal(expected:dtype(), actual:dtype(), what .. ": dtypes differ")
    local ok, msg = h.compare(expected, actual, TOL[expected:dtype()])
    if not ok then error(what .. ": " .. msg, 3) end
  else
    same_bits(expected, actual, what)
  end
end

-- fn(put) builds its inputs with put (host or dev) and returns the op's result (or several);
-- the device's results must equal the host's.
local function agree(what, fn, approx)
  local e = { fn(host) }
  local a = { fn(dev) }
  assert.are.equal(#e, #a, what)
  for i = 1, #e do same_result(e[i], a[i], #e > 1 and (what .. " (result " .. i .. ")") or what, approx) end
end

-- the error message fn(put) raises, the same on both devices
local function message_of(fn, put)
  local ok, err = pcall(fn, put)
  assert.is_false(ok, "expected an error")
  return (tostring(err):gsub("^[^\n]-:%d+: ", ""))
end
local function same_error(what, fn, part)
  local e = message_of(fn, host)
  local a = message_of(fn, dev)
  assert.are.equal(e, a, what)
  if part then assert.truthy(e:find(part, 1, true), what .. ": '" .. e .. "' does not contain '" .. part .. "'") end
end

-- ---- inputs --------------------------------------------------------------------------------------

local N = 4096        -- elements of every base vector; layouts view slices of it
local R, K = 37, 29   -- the main shape: 1073 elements, not a multiple of any vector width

-- (a, b) pairs met first in every float input: NaN on either side and both, infinities, signed
-- zeros, ties of round, exact powers, a negative base with fractional and integral exponents,
-- subnormals, the f16 maximum, large values
local FLOAT_PAIRS = {
  { NAN, 1 }, { 1, NAN }, { NAN, NAN }, { INF, INF }, { INF, -INF }, { -INF, 1 }, { 1, INF }, { 0, NZERO },
  { NZERO, 0 }, { 0, 0 }, { NZERO, NZERO }, { 1, 0 }, { -1, 0 }, { 0.5, 2 }, { -0.5, 2 }, { 1.5, -1.5 },
  { 2.5, 2.5 }, { -2.5, 0.5 }, { 3.5, -3.5 }, { -0.4, 0.4 }, { 1e30, 1e30 }, { -1e30, 3 }, { 1e-40, 1e-40 },
  { 65504, 2 }, { -8, 1 / 3 }, { -8, 3 }, { 2, -3 }, { 7, 7 }, { 100, 0.5 }, { -100, -0.5 }, { 0.1, 0.3 },
}
-- integer pairs: wrap-around of + - * and INT_MIN / -1, truncation of division toward zero,
-- equal values, and 0 (replaced by 1 in divisors)
local INT_PAIRS = {
  i32 = { { -2 ^ 31, -1 }, { 2 ^ 31 - 1, 1 }, { 2 ^ 31 - 1, 2 ^ 31 - 1 }, { -2 ^ 31, -2 ^ 31 }, { 46341, 46341 },
    { -7, 2 }, { 7, -2 }, { -7, -2 }, { 0, 5 }, { 5, 5 }, { -1, 0 }, { 65536, 65536 } },
  i64 = { { -2 ^ 53, -1 }, { 2 ^ 53, 2 ^ 53 }, { 2 ^ 40, 2 ^ 40 }, { -2 ^ 32, 2 ^ 32 }, { -7, 2 }, { 7, -2 },
    { -7, -2 }, { 0, 5 }, { 5, 5 }, { -1, 0 } },
  u8 = { { 255, 1 }, { 0, 1 }, { 200, 100 }, { 16, 16 }, { 255, 255 }, { 7, 2 }, { 0, 5 }, { 5, 5 }, { 1, 0 },
    { 128, 2 } },
}

-- Base vectors a and b (N values each, as CPU tensors of dtype): the pairs above, then random
-- values with every 7th b equal to its a (ties of comparisons and of maximum / minimum).
-- positive: for the domain of log / sqrt (no pairs, values in (0, 8]).
local function base_pair(dtype, seed, positive)
  math.randomseed(seed)
  local va, vb = {}, {}
  local pairs_ = IS_FLOAT[dtype] and FLOAT_PAIRS or INT_PAIRS[dtype]
  for i = 1, N do
    local p = not positive and pairs_[i]
    if p then
      va[i], vb[i] = p[1], p[2]
    elseif IS_FLOAT[dtype] then
      if positive then
        va[i], vb[i] = math.random() * 8 + 1e-3, math.random() * 8 + 1e-3
      else
        va[i], vb[i] = math.random() * 16 - 8, math.random() * 16 - 8
      end
    elseif dtype == "u8" then
      va[i], vb[i] = math.random(0, 255), math.random(0, 255)
    else
      va[i], vb[i] = math.random(-1000, 1000), math.random(-1000, 1000)
      if i % 11 == 0 then va[i] = math.random(-2 ^ 31, 2 ^ 31 - 1) end
    end
    if i % 7 == 0 and not p then vb[i] = va[i] end
  end
  return tn.tensor(va, { dtype = dtype }), tn.tensor(vb, { dtype = dtype })
end

-- b with its zeros replaced by 1 (integer divisors)
local function nonzero(b) return tn.where(b:eq(0), tn.ones_like(b), b) end

-- Layouts of a binary op's operands: name = function(put, A, B) -> a, b (views of put(A),
-- put(B); A and B are 1-d base vectors of N elements).
local function m(put, X, off, n, ...) return put(X):narrow(1, off, n):view(...) end
local BIN_LAYOUTS = {
  contiguous = function(put, A, B) return m(put, A, 1, R * K, R, K), m(put, B, 1, R * K, R, K) end,
  ["misaligned contiguous"] = function(put, A, B) return m(put, A, 2, R * K, R, K), m(put, B, 4, R * K, R, K) end,
  ["long contiguous"] = function(put, A, B) return put(A), put(B) end,
  ["a row broadcast"] = function(put, A, B) return m(put, A, 1, R * K, R, K), m(put, B, 1, K, K) end,
  ["a column broadcast"] = function(put, A, B) return m(put, A, 1, R, R, 1), m(put, B, 1, R * K, R, K) end,
  ["both broadcast"] = function(put, A, B) return m(put, A, 1, R, R, 1), m(put, B, 1, K, 1, K) end,
  ["a 0-d b"] = function(put, A, B) return m(put, A, 1, R * K, R, K), put(B):select(1, 5) end,
  ["a 0-d a"] = function(put, A, B) return put(A):select(1, 17), m(put, B, 1, R * K, R, K) end,
  ["both 0-d"] = function(put, A, B) return put(A):select(1, 3), put(B):select(1, 3) end,
  transposed = function(put, A, B) return m(put, A, 1, R * K, K, R):t(), m(put, B, 1, R * K, R, K) end,
  ["both transposed"] = function(put, A, B) return m(put, A, 1, R * K, K, R):t(), m(put, B, 7, R * K, K, R):t() end,
  narrowed = function(put, A, B)
    return m(put, A, 1, R * 40, R, 40):narrow(2, 6, K), m(put, B, 1, R * 30, R, 30):narrow(2, 2, K)
  end,
  permuted = function(put, A, B) return m(put, A, 1, 210, 5, 6, 7):permute(2, 3, 1), m(put, B, 1, 210, 6, 7, 5) end,
  expanded = function(put, A, B) return m(put, A, 1, K, 1, K):expand(R, K), m(put, B, 1, R, R, 1):expand(R, K) end,
  ["inner stride 2"] = function(put, A, B)
    return m(put, A, 1, 2 * R * K, R, K, 2):select(3, 1), m(put, B, 1, 2 * R * K, R, K, 2):select(3, 2)
  end,
  empty = function(put, A, B) return m(put, A, 1, 0, 0, K), m(put, B, 1, K, K) end,
  ["empty broadcast"] = function(put, A, B) return m(put, A, 1, 0, 3, 0), m(put, B, 1, 0, 0) end,
}
-- the same for one operand
local UN_LAYOUTS = {
  contiguous = function(put, A) return m(put, A, 1, R * K, R, K) end,
  ["misaligned contiguous"] = function(put, A) return m(put, A, 2, R * K, R, K) end,
  ["long contiguous"] = function(put, A) return put(A) end,
  ["0-d"] = function(put, A) return put(A):select(1, 3) end,
  transposed = function(put, A) return m(put, A, 1, R * K, K, R):t() end,
  narrowed = function(put, A) return m(put, A, 1, R * 40, R, 40):narrow(2, 6, K) end,
  permuted = function(put, A) return m(put, A, 1, 210, 5, 6, 7):permute(3, 1, 2) end,
  expanded = function(put, A) return m(put, A, 1, K, 1, K):expand(R, K) end,
  empty = function(put, A) return m(put, A, 1, 0, 0, K) end,
}

-- sorted keys, so that failures read in a stable order
local function keys(t)
  local r = {}
  for k in pairs(t) do r[#r + 1] = k end
  table.sort(r)
  return r
end

-- a fresh CPU tensor of zeros, (rows, cols) transposed: an output view that is not contiguous
local function zeros_t(rows, cols, dtype) return tn.zeros(cols, rows, { dtype = dtype }) end

-- ---- binary ops -----------------------------------------------------------------------------------

describe("tern.ops on the GPU #gpu", function()
  describe("binary ops", function()
    for _, dt in ipairs(DTYPES) do
      local ops = IS_FLOAT[dt] and BINOPS or INT_BINOPS
      it("match the CPU for " .. dt .. " in every layout", function()
        local A, B = base_pair(dt, 11)
        if not IS_FLOAT[dt] then B = nonzero(B) end
        for _, op in ipairs(ops) do
          for _, lname in ipairs(keys(BIN_LAYOUTS)) do
            agree(op .. " " .. dt .. " " .. lname, function(put)
              local a, b = BIN_LAYOUTS[lname](put, A, B)
              return binary(a, b, op)
            end, APPROX[op])
          end
        end
      end)

      it("write non-contiguous and in-place outputs for " .. dt, function()
        local A, B = base_pair(dt, 12)
        if not IS_FLOAT[dt] then B = nonzero(B) end
        for _, op in ipairs(ops) do
          local odt = CMP[op] and "u8" or dt
          agree(op .. " " .. dt .. " into a transposed view", function(put)
            local base = put(zeros_t(R, K, odt))
            local a, b = BIN_LAYOUTS["a row broadcast"](put, A, B)
            binary(a, b, op, base:t())
            return base -- the whole storage: nothing written outside the view
          end, APPROX[op])
          if not CMP[op] then
            agree(op .. " " .. dt .. " in place", function(put)
              local a, b = BIN_LAYOUTS.transposed(put, A, B)
              local r = binary(a, b, op, a)
              return r, a
            end, APPROX[op])
            agree(op .. " " .. dt .. " in place, contiguous", function(put)
              local a, b = BIN_LAYOUTS.contiguous(put, A, B)
              binary(a, b, op, a)
              return a
            end, APPROX[op])
          end
        end
      end)
    end

    it("propagate NaN through maximum and minimum on either side", function()
      for _, dt in ipairs(FLOATS) do
        local a = dev(tn.tensor({ NAN, 1, NAN, NZERO, 0 }, { dtype = dt }))
        local b = dev(tn.tensor({ 1, NAN, NAN, 0, NZERO }, { dtype = dt }))
        for _, op in ipairs({ "maximum", "minimum" }) do
          local r = binary(a, b, op):cpu()
          for i = 1, 3 do assert.is_true(r:get({ i }) ~= r:get({ i }), op .. " " .. dt .. " element " .. i) end
        end
      end
    end)

    it("divide integers truncating toward zero and wrap INT_MIN / -1", function()
      local a = dev(tn.tensor({ 7, -7, 7, -7, -2 ^ 31 }, { dtype = "i32" }))
      local b = dev(tn.tensor({ 2, 2, -2, -2, -1 }, { dtype = "i32" }))
      assert.are.same({ 3, -3, -3, 3, -2 ^ 31 }, binary(a, b, "div"):cpu():totable())
    end)

    it("raise the CPU's errors", function()
      for _, dt in ipairs(INTS) do
        same_error("integer division by zero " .. dt, function(put)
          local a, b = base_pair(dt, 13)
          return binary(m(put, a, 1, R * K, R, K), m(put, b, 1, R * K, R, K), "div") -- b holds a 0
        end, "integer division by zero")
        same_error("integer division by a broadcast zero " .. dt, function(put)
          local b = tn.tensor({ 3, 0, 1 }, { dtype = dt })
          return binary(put(tn.ones(2, 3, { dtype = dt })), put(b):narrow(1, 2, 1), "div")
        end, "integer division by zero")
        same_error("integer division by zero in place " .. dt, function(put)
          local a = put(tn.ones(4, { dtype = dt }))
          return binary(a, put(tn.zeros(1, { dtype = dt })), "div", a)
        end, "integer division by zero")
        for _, op in ipairs({ "pow", "atan2" }) do
          same_error(op .. " " .. dt, function(put)
            return binary(put(tn.ones(3, { dtype = dt })), put(tn.ones(3, { dtype = dt })), op)
          end, "not supported for dtype " .. dt)
        end
      end
      same_error("shapes", function(put) return binary(put(tn.ones(2, 3)), put(tn.ones(4)), "add") end, "[2, 3]")
      same_error("dtypes", function(put)
        return binary(put(tn.ones(3)), put(tn.ones(3, { dtype = "f64" })), "mul")
      end, "dtypes f32 and f64 differ")
      same_error("out shape", function(put)
        return binary(put(tn.ones(3)), put(tn.ones(3)), "add", put(tn.ones(4)))
      end, "out has shape")
      same_error("out dtype", function(put)
        return binary(put(tn.ones(3)), put(tn.ones(3)), "lt", put(tn.ones(3)))
      end, "out has dtype f32, expected u8")
    end)

    it("refuse operands on different devices", function()
      if DEVICE == "cpu" then return end
      local ok, err = pcall(binary, tn.ones(3), dev(tn.ones(3)), "add")
      assert.is_false(ok)
      assert.truthy(tostring(err):find("different devices", 1, true), tostring(err))
      ok, err = pcall(binary, dev(tn.ones(3)), dev(tn.ones(3)), "add", tn.ones(3))
      assert.is_false(ok)
      assert.truthy(tostring(err):find("out is on", 1, true), tostring(err))
    end)
  end)

  -- ---- binary ops with a number ------------------------------------------------------------------

  describe("binary ops with a number", function()
    local FLOAT_SCALARS = { 2.5, -0.5, 0, NZERO, 3, NAN, INF, -INF, 1e-3, 1e10, 0.1 }
    local INT_SCALARS = { 3, -7, 1, 0, 255, 2 ^ 31 - 1, -2 ^ 31, 2 ^ 40 }
    -- integers against numbers that are not integers or lie beyond the type: exact comparisons
    local CMP_SCALARS = { 2.5, -0.5, 0, 255.5, 1e30, -1e30, NAN, INF, -INF, 2 ^ 63, -2 ^ 63, 2 ^ 31 - 0.5, -7 }
    local SCALAR_LAYOUTS = { "contiguous", "misaligned contiguous", "0-d", "transposed", "expanded", "empty" }
    -- an integral number in an integer dtype wraps like a C cast: 2^40 is 0 in i32, 256 in u8
    local function wraps_to_zero(dt, s)
      return s == 0 or (dt == "i32" and s % 2 ^ 32 == 0) or (dt == "u8" and s % 256 == 0)
    end

    for _, dt in ipairs(DTYPES) do
      it("match the CPU for " .. dt .. " in both orders", function()
        local A = base_pair(dt, 21)
        local ops = IS_FLOAT[dt] and BINOPS or INT_BINOPS
        local scalars = IS_FLOAT[dt] and FLOAT_SCALARS or INT_SCALARS
        for _, op in ipairs(ops) do
          for _, s in ipairs(scalars) do
            for _, reverse in ipairs({ false, true }) do
              -- integer division: no zero divisor (the errors are checked below)
              local skip = not IS_FLOAT[dt] and op == "div" and (wraps_to_zero(dt, s) or reverse)
              for _, lname in ipairs(skip and {} or SCALAR_LAYOUTS) do
                agree(string.format("%s %s %s %g%s", op, dt, lname, s, reverse and " reversed" or ""), function(put)
                  return scalar(UN_LAYOUTS[lname](put, A), s, op, reverse)
                end, APPROX[op])
              end
            end
          end
        end
        if not IS_FLOAT[dt] then
          local D = nonzero(A)
          for _, lname in ipairs(SCALAR_LAYOUTS) do
            agree("div " .. dt .. " " .. lname .. " 1000 reversed", function(put)
              return scalar(UN_LAYOUTS[lname](put, D), 1000, "div", true)
            end)
          end
          for op in pairs(CMP) do
            for _, s in ipairs(CMP_SCALARS) do
              for _, reverse in ipairs({ false, true }) do
                for _, lname in ipairs(SCALAR_LAYOUTS) do
                  agree(string.format("%s %s %s %g%s", op, dt, lname, s, reverse and " reversed" or ""), function(put)
                    return scalar(UN_LAYOUTS[lname](put, A), s, op, reverse)
                  end)
                end
              end
            end
          end
        end
      end)

      it("write non-contiguous and in-place outputs for " .. dt, function()
        local A = base_pair(dt, 22)
        for _, op in ipairs({ "add", "mul", "maximum", "lt" }) do
          local odt = CMP[op] and "u8" or dt
          agree(op .. " " .. dt .. " into a transposed view", function(put)
            local base = put(zeros_t(R, K, odt))
            scalar(UN_LAYOUTS.contiguous(put, A), 3, op, false, base:t())
            return base
          end)
          if not CMP[op] then
            agree(op .. " " .. dt .. " in place", function(put)
              local a = UN_LAYOUTS.transposed(put, A)
              scalar(a, 3, op, true, a)
              return a
            end)
          end
        end
      end)
    end

    it("compare integers exactly with numbers beyond f32 and f64 precision", function()
      -- x = {2^53, 2^53 + 1, -2^53 - 1, 2^24 + 1}: made on the device (Lua numbers cannot hold them)
      local x = binary(dev(tn.tensor({ 2 ^ 53, 2 ^ 53, -2 ^ 53, 16777217 }, { dtype = "i64" })),
        dev(tn.tensor({ 0, 1, -1, 0 }, { dtype = "i64" })), "add")
      assert.are.same({ 1, 0, 0, 0 }, scalar(x, 2 ^ 53, "eq"):cpu():totable())
      assert.are.same({ 0, 1, 1, 1 }, scalar(x, 2 ^ 53, "ne"):cpu():totable())
      assert.are.same({ 1, 0, 1, 1 }, scalar(x, 2 ^ 53, "ge", true):cpu():totable()) -- 2^53 >= x
      assert.are.same({ 1, 1, 0, 1 }, scalar(x, 16777216.5, "gt"):cpu():totable())
      assert.are.same({ 0, 0, 1, 0 }, scalar(x, -2 ^ 53, "lt"):cpu():totable())
    end)

    it("raise the CPU's errors", function()
      for _, dt in ipairs(INTS) do
        same_error("division by a zero number " .. dt, function(put)
          return scalar(put(tn.ones(2, 3, { dtype = dt })), 0, "div")
        end, "integer division by zero")
        same_error("a number divided by a tensor holding 0 " .. dt, function(put)
          local a = base_pair(dt, 23) -- holds a 0
          return scalar(UN_LAYOUTS.transposed(put, a), 5, "div", true)
        end, "divided by the tensor")
        if dt ~= "i64" then
          same_error("division by a number that wraps to 0 " .. dt, function(put)
            return scalar(put(tn.ones(2, 3, { dtype = dt })), dt == "u8" and 512 or 2 ^ 32, "div")
          end, "integer division by zero")
        end
        same_error("a fraction " .. dt, function(put)
          return scalar(put(tn.ones(3, { dtype = dt })), 2.5, "add")
        end, "is not an integer")
        same_error("pow " .. dt, function(put)
          return scalar(put(tn.ones(3, { dtype = dt })), 2, "pow")
        end, "not supported for dtype")
      end
    end)
  end)

  -- ---- unary ops -------------------------------------------------------------------------------------

  describe("unary ops", function()
    for _, dt in ipairs(DTYPES) do
      local ops = IS_FLOAT[dt] and UNOPS or INT_UNOPS
      it("match the CPU for " .. dt .. " in every layout", function()
        local A = base_pair(dt, 31)
        local P = IS_FLOAT[dt] and base_pair(dt, 32, true) or nil -- log, sqrt, ... of positive numbers too
        for _, op in ipairs(ops) do
          for _, lname in ipairs(keys(UN_LAYOUTS)) do
            agree(op .. " " .. dt .. " " .. lname, function(put) return unary(UN_LAYOUTS[lname](put, A), op) end,
              APPROX[op])
            if P then
              agree(op .. " " .. dt .. " " .. lname .. " (positive)", function(put)
                return unary(UN_LAYOUTS[lname](put, P), op)
              end, APPROX[op])
            end
          end
        end
      end)

      it("write non-contiguous and in-place outputs for " .. dt, function()
        local A = base_pair(dt, 33)
        for _, op in ipairs(ops) do
          local odt = op == "logical_not" and "u8" or dt
          agree(op .. " " .. dt .. " into a transposed view", function(put)
            local base = put(zeros_t(R, K, odt))
            unary(UN_LAYOUTS.contiguous(put, A), op, base:t())
            return base
          end, APPROX[op])
          if op ~= "logical_not" then
            agree(op .. " " .. dt .. " in place", function(put)
              local a = UN_LAYOUTS.narrowed(put, A)
              unary(a, op, a)
              return a
            end, APPROX[op])
          end
        end
      end)
    end

    it("keep NaN's semantics: sign(NaN) is NaN, logical_not(NaN) is 0, round is half to even", function()
      for _, dt in ipairs(FLOATS) do
        local x = dev(tn.tensor({ NAN, NZERO, 0.5, 1.5, 2.5, -2.5, -0.4 }, { dtype = dt }))
        local s = unary(x, "sign"):cpu()
        assert.is_true(s:get({ 1 }) ~= s:get({ 1 }), "sign(NaN) " .. dt)
        assert.are.equal(-math.huge, 1 / s:get({ 2 }), "sign(-0) keeps the sign " .. dt)
        assert.are.same({ 0, 1, 0, 0, 0, 0, 0 }, unary(x, "logical_not"):cpu():totable())
        local r = unary(x, "round"):cpu():totable()
        assert.are.same({ 0, 2, 2, -2 }, { r[3], r[4], r[5], r[6] })
        assert.are.equal(-math.huge, 1 / r[7], "round(-0.4) is -0 " .. dt)
      end
    end)

    it("raise the CPU's errors", function()
      for _, dt in ipairs(INTS) do
        for _, op in ipairs(UNOPS) do
          local ok_int = false
          for _, o in ipairs(INT_UNOPS) do ok_int = ok_int or o == op end
          if not ok_int then
            same_error(op .. " " .. dt, function(put) return unary(put(tn.ones(2, 3, { dtype = dt })), op) end,
              "not supported for dtype " .. dt)
          end
        end
      end
      same_error("out shape", function(put) return unary(put(tn.ones(3)), "exp", put(tn.ones(2))) end,
        "out has shape")
    end)
  end)

  -- ---- clamp, where, masked_fill -------------------------------------------------------------------

  describe("clamp", function()
    -- lo > hi gives hi everywhere (the C API allows it); fractional bounds of integer tensors
    -- round inward; NaN bounds leave that side open; bounds beyond the type saturate
    local BOUNDS = { { -0.5, 0.5 }, { -INF, 1 }, { 0, INF }, { 1, -1 }, { -2.5, 3.7 }, { NAN, 2 }, { -3, NAN },
      { -1e30, 1e30 }, { 100, 200 }, { -2 ^ 40, 2 ^ 40 }, { 7, 7 } }
    for _, dt in ipairs(DTYPES) do
      it("matches the CPU for " .. dt, function()
        local A = base_pair(dt, 41)
        for _, bd in ipairs(BOUNDS) do
          for _, lname in ipairs(keys(UN_LAYOUTS)) do
            agree(string.format("clamp %s %s [%g, %g]", dt, lname, bd[1], bd[2]), function(put)
              return clamp(UN_LAYOUTS[lname](put, A), bd[1], bd[2])
            end)
          end
          agree(string.format("clamp %s into a transposed view [%g, %g]", dt, bd[1], bd[2]), function(put)
            local base = put(zeros_t(R, K, dt))
            clamp(UN_LAYOUTS.contiguous(put, A), bd[1], bd[2], base:t())
            return base
          end)
          agree(string.format("clamp %s in place [%g, %g]", dt, bd[1], bd[2]), function(put)
            local a = UN_LAYOUTS.transposed(put, A)
            clamp(a, bd[1], bd[2], a)
            return a
          end)
        end
      end)
    end
  end)

  describe("where", function()
    local function cond_base(seed)
      math.randomseed(seed)
      local v = {}
      for i = 1, N do v[i] = math.random(0, 3) == 0 and 0 or math.random(1, 255) end -- any nonzero byte is true
      return tn.tensor(v, { dtype = "u8" })
    end
    -- cond, a, b
    local LAYOUTS = {
      contiguous = function(put, Cn, A, B) return m(put, Cn, 1, R * K, R, K), m(put, A, 1, R * K, R, K), m(put, B, 1, R * K, R, K) end,
      misaligned = function(put, Cn, A, B) return m(put, Cn, 3, R * K, R, K), m(put, A, 2, R * K, R, K), m(put, B, 1, R * K, R, K) end,
      ["long contiguous"] = function(put, Cn, A, B) return put(Cn), put(A), put(B) end,
      broadcast = function(put, Cn, A, B) return m(put, Cn, 1, R, R, 1), m(put, A, 1, K, 1, K), m(put, B, 1, R * K, R, K) end,
      ["cond broadcast"] = function(put, Cn, A, B) return m(put, Cn, 1, K, K), m(put, A, 1, R * K, K, R):t(), m(put, B, 1, R, R, 1) end,
      ["0-d"] = function(put, Cn, A, B) return put(Cn):select(1, 1), m(put, A, 1, R * K, R, K), put(B):select(1, 2) end,
      transposed = function(put, Cn, A, B) return m(put, Cn, 1, R * K, K, R):t(), m(put, A, 1, R * 40, R, 40):narrow(2, 3, K), m(put, B, 1, R * K, K, R):t() end,
      empty = function(put, Cn, A, B) return m(put, Cn, 1, 0, 0, 1), m(put, A, 1, K, K), m(put, B, 1, K, 1, K) end,
    }
    for _, dt in ipairs(DTYPES) do
      it("matches the CPU for " .. dt .. " (" .. ELSIZE[dt] .. "-byte elements)", function()
        local A, B = base_pair(dt, 51)
        local Cn = cond_base(52)
        for _, lname in ipairs(keys(LAYOUTS)) do
          agree("where " .. dt .. " " .. lname, function(put) return where(LAYOUTS[lname](put, Cn, A, B)) end)
        end
        agree("where " .. dt .. " into a transposed view", function(put)
          local base = put(zeros_t(R, K, dt))
          local c, a, b = LAYOUTS.broadcast(put, Cn, A, B)
          where(c, a, b, base:t())
          return base
        end)
      end)
    end

    it("raises the CPU's errors", function()
      same_error("cond dtype", function(put) return where(put(tn.ones(3)), put(tn.ones(3)), put(tn.ones(3))) end,
        "cond must be u8")
      same_error("dtypes", function(put)
        return where(put(tn.ones(3, { dtype = "u8" })), put(tn.ones(3)), put(tn.ones(3, { dtype = "i32" })))
      end, "dtypes f32 and i32 differ")
      same_error("shapes", function(put)
        return where(put(tn.ones(2, { dtype = "u8" })), put(tn.ones(3)), put(tn.ones(3)))
      end)
    end)
  end)

  describe("masked_fill", function()
    local VALUES = { 7.5, -1, 0, NAN, INF, -INF, 1e10, -1e10, 300, 2 ^ 40, NZERO }
    local function mask_base(seed)
      math.randomseed(seed)
      local v = {}
      for i = 1, N do v[i] = math.random(0, 1) == 0 and 0 or math.random(1, 255) end
      return tn.tensor(v, { dtype = "u8" })
    end
    local LAYOUTS = {
      contiguous = function(put, A, Mk) return m(put, A, 1, R * K, R, K), m(put, Mk, 1, R * K, R, K) end,
      misaligned = function(put, A, Mk) return m(put, A, 2, R * K, R, K), m(put, Mk, 2, R * K, R, K) end,
      ["row mask"] = function(put, A, Mk) return m(put, A, 1, R * K, R, K), m(put, Mk, 1, K, K) end,
      ["column mask"] = function(put, A, Mk) return m(put, A, 1, R * K, K, R):t(), m(put, Mk, 1, R, R, 1) end,
      ["0-d mask"] = function(put, A, Mk) return m(put, A, 1, R * K, R, K), put(Mk):select(1, 2) end,
      permuted = function(put, A, Mk) return m(put, A, 1, 210, 5, 6, 7):permute(3, 1, 2), m(put, Mk, 1, 210, 7, 5, 6) end,
      empty = function(put, A, Mk) return m(put, A, 1, 0, 0, K), m(put, Mk, 1, K, K) end,
    }
    for _, dt in ipairs(DTYPES) do
      it("matches the CPU for " .. dt .. " and saturates the value into it", function()
        local A = base_pair(dt, 61)
        local Mk = mask_base(62)
        for _, v in ipairs(VALUES) do
          for _, lname in ipairs(keys(LAYOUTS)) do
            agree(string.format("masked_fill %s %s %g", dt, lname, v), function(put)
              local a, mk = LAYOUTS[lname](put, A, Mk)
              return masked_fill(a, mk, v)
            end)
          end
          agree(string.format("masked_fill %s in place %g", dt, v), function(put)
            local a, mk = LAYOUTS["column mask"](put, A, Mk)
            masked_fill(a, mk, v, a)
            return a
          end)
        end
      end)
    end

    it("raises the CPU's errors", function()
      same_error("mask dtype", function(put) return masked_fill(put(tn.ones(3)), put(tn.ones(3)), 1) end,
        "mask must be u8")
      same_error("mask shape", function(put)
        return masked_fill(put(tn.ones(3)), put(tn.ones(2, 3, { dtype = "u8" })), 1)
      end, "does not broadcast")
    end)
  end)

  -- ---- through the Lua layer ---------------------------------------------------------------------

  describe("the Lua operators and methods", function()
    it("give the CPU's results on device tensors, numbers on either side", function()
      local A, B = base_pair("f32", 71)
      agree("a + b * 2 - 1 / a", function(put)
        local a, b = BIN_LAYOUTS["a row broadcast"](put, A, B)
        return a + b * 2 - 1 / a
      end)
      agree("-a, a ^ 2, 2 ^ a, a:exp(), a:relu()", function(put)
        local a = UN_LAYOUTS.transposed(put, A)
        return -a, a ^ 2, 2 ^ a, a:exp(), a:relu()
      end, true)
      agree("comparisons, maximum, where, masked_fill, clamp", function(put)
        local a, b = BIN_LAYOUTS["both broadcast"](put, A, B)
        local c = a:lt(b)
        local w = tn.where(c, a, b)
        return c, a:maximum(b), w, w:masked_fill(b:gt(0), -1), a:clamp(-1, 2), a:ge(0.5), c:logical_not()
      end)
      agree("in-place add_, sub_, mul_, div_", function(put)
        local a, b = BIN_LAYOUTS.transposed(put, A, B)
        a:add_(b):mul_(2):sub_(b):div_(3)
        return a
      end)
      local I, J = base_pair("i32", 72)
      agree("integer div_ truncates", function(put)
        local a, b = BIN_LAYOUTS.contiguous(put, I, nonzero(J))
        a:div_(b)
        return a
      end)
      agree("integer promotion to f32 for /", function(put)
        local a, b = BIN_LAYOUTS.contiguous(put, I, nonzero(J))
        return a / b, a + 0.5, a * 3, a:lt(2.5)
      end)
    end)

    it("computes gradients on the device as on the CPU", function()
      local A, B = base_pair("f64", 73, true)
      agree("autograd of a * b + exp(a) / b", function(put)
        local a = UN_LAYOUTS.contiguous(put, A):requires_grad(true)
        local b = UN_LAYOUTS.contiguous(put, B):requires_grad(true)
        local y = (a * b + a:exp() / b):sum()
        y:backward()
        return a.grad, b.grad
      end, true)
    end)
  end)
end)

-- More than 2^32 elements (4 GiB of u8 per tensor): the 64-bit index paths of the strided
-- kernel (a broadcast output) and of the vectorised one (a contiguous tensor).
describe("tern.ops on the GPU beyond 2^32 elements #gpu #slow", function()
  local n = 65537 -- n * n = 2^32 + 2^17 + 1

  it("broadcasts into an output of more than 2^32 elements", function()
    if DEVICE == "cpu" then return end
    local rv, cv = {}, {}
    for j = 1, n do rv[j], cv[j] = (j - 1) % 256, ((j - 1) * 7) % 256 end
    local row, col = tn.tensor(rv, { dtype = "u8" }), tn.tensor(cv, { dtype = "u8" })
    local out = binary(dev(row):view(1, n), dev(col):view(n, 1), "add") -- (n, n), 2-d strided
    -- rows n - 1 and n hold the linear indices around and past 2^32
    for _, i in ipairs({ 1, n - 1, n }) do
      local expected = scalar(row, cv[i], "add")
      same_bits(expected, out:select(1, i):cpu(), "row " .. i)
    end
    out:free()
  end)

  it("runs the vectorised path over more than 2^32 elements", function()
    if DEVICE == "cpu" then return end
    local x = tn.full({ n * n }, 5, { dtype = "u8", device = DEVICE })
    local y = scalar(x, 3, "add")
    x:free()
    local tail = y:narrow(1, n * n - 99, 100):cpu()
    same_bits(tn.full({ 100 }, 8, { dtype = "u8" }), tail, "the last 100 elements")
    local mid = y:narrow(1, 2 ^ 32 - 50, 100):cpu()
    same_bits(tn.full({ 100 }, 8, { dtype = "u8" }), mid, "the elements around 2^32")
    y:free()
  end)
end)

-- The issue's target: large element-wise ops move memory at >= 80% of the rate of a
-- device-to-device copy (bytes read + written per second, medians of 10 synchronised runs).
describe("tern.ops on the GPU, bandwidth #gpu #slow", function()
  it("runs large contiguous ops at >= 80% of the device-to-device copy bandwidth", function()
    if DEVICE == "cpu" then return end
    pcall(ffi.cdef, [[
      typedef struct { long tv_sec; long tv_nsec; } tn_ew_spec_timespec;
      int tn_ew_spec_clock_gettime(int clk, tn_ew_spec_timespec *ts) __asm__("clock_gettime");
    ]])
    local ts = ffi.new("tn_ew_spec_timespec")
    local function now()
      ffi.C.tn_ew_spec_clock_gettime(1, ts) -- CLOCK_MONOTONIC
      return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
    end
    local function rate(bytes, fn)
      fn()
      tn.cuda.synchronize()
      local t = {}
      for i = 1, 10 do
        local t0 = now()
        fn()
        tn.cuda.synchronize()
        t[i] = now() - t0
      end
      table.sort(t)
      return bytes / t[5]
    end
    local n = 64 * 1024 * 1024
    local a = tn.rand(n, { device = DEVICE })
    local b = tn.rand(n, { device = DEVICE })
    local out = tn.empty(n, { device = DEVICE })
    local ah, bh, oh = a:half(), b:half(), tn.empty(n, { dtype = "f16", device = DEVICE })
    local cond = a:lt(0.5)
    local copy = rate(8 * n, function() out:copy_(a) end)
    local cases = {
      { "add f32", 12 * n, function() binary(a, b, "add", out) end },
      { "mul f32 by a number", 8 * n, function() scalar(a, 2, "mul", false, out) end },
      { "exp f32", 8 * n, function() unary(a, "exp", out) end },
      { "mul f16", 6 * n, function() binary(ah, bh, "mul", oh) end },
      { "where f32", 13 * n, function() where(cond, a, b, out) end },
    }
    local slow = {}
    for _, c in ipairs(cases) do
      local r = rate(c[2], c[3])
      print(string.format("gpu bandwidth: %-20s %.0f GB/s (copy %.0f GB/s, %.0f%%)", c[1], r / 1e9, copy / 1e9,
        100 * r / copy))
      if r < 0.8 * copy then slow[#slow + 1] = string.format("%s %.0f%%", c[1], 100 * r / copy) end
    end
    assert.are.same({}, slow)
  end)
end)
