-- tern.ops: differentiable math on tensors. Each op calls one C entry point for its forward
-- and records (when a tensor input requires grad) a closure computing the input gradients.
-- Broadcasting gradients are summed back to each input's shape. Ops become Tensor methods,
-- Lua operators (+ - * / ^ and unary minus, numbers on either side) and tn.* functions.
local lib = require "tern.lib"
local autograd = require "tern.autograd"
local Tensor = require "tern.tensor"

local ffi, C = lib.ffi, lib.C
local check, wrap = lib.check, lib.wrap
local OUT, OUT2 = lib.OUT, lib.OUT2
local record, needs, grad_enabled = autograd.record, autograd.needs, autograd.is_enabled
local is_tensor, cdim = Tensor.is_tensor, Tensor._cdim
local shape_table, shape_string = Tensor._shape_table, Tensor._shape_string
local DIMS, SHAPE = Tensor._DIMS, Tensor._SHAPE
local mt = Tensor._mt
local type, error, fmt, floor = type, error, string.format, math.floor

local M = {}

-- enum values (tern.h)
local ADD, SUB, MUL, DIV, POW, MAXIMUM, MINIMUM, ATAN2 = 0, 1, 2, 3, 4, 5, 6, 7
local EQ, NE, LT, LE, GT, GE = 8, 9, 10, 11, 12, 13
local NEG, ABS, EXP, LOG, SQRT, RSQRT, TANH, SIGMOID, RELU, SIGN, LOG1P, EXPM1, SIN, COS,
RECIPROCAL, SQUARE, FLOOR, CEIL, ROUND, LOGICAL_NOT =
  0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19
local RED_SUM, RED_MEAN, RED_MAX, RED_MIN, RED_PROD, RED_LSE, RED_VAR, RED_ARGMAX, RED_ARGMIN =
  0, 1, 2, 3, 4, 5, 6, 7, 8

local F32, F64, F16, BF16, I32, I64, U8 = 0, 1, 2, 3, 4, 5, 6
local is_float = lib.is_float

-- dtype promotion: the wider kind wins; f16 with bf16 gives f32
local rank = { [U8] = 0, [I32] = 1, [I64] = 2, [F16] = 3, [BF16] = 3, [F32] = 4, [F64] = 5 }
local function promote(da, db)
  if da == db then return da end
  if (da == F16 and db == BF16) or (da == BF16 and db == F16) then return F32 end
  return rank[da] >= rank[db] and da or db
end
M.promote = promote

local same_shape = lib.same_shape

-- Sum gradient g down to shape s (a Lua table) when broadcasting widened it.
local function reduce_to(g, s)
  if s == nil then return g end
  return g:sum_to(s)
end

local function as_tensor_arg(x, opname, argname, level)
  if not is_tensor(x) then
    error(fmt("%s: %s must be a tensor, got %s", opname, argname, type(x)), level or 3)
  end
  return x
end

-- elementwise binary --------------------------------------------------------------------------

local binop_names = { [ADD] = "add", [SUB] = "sub", [MUL] = "mul", [DIV] = "div", [POW] = "pow",
  [MAXIMUM] = "maximum", [MINIMUM] = "minimum", [ATAN2] = "atan2", [EQ] = "eq", [NE] = "ne",
  [LT] = "lt", [LE] = "le", [GT] = "gt", [GE] = "ge" }

-- gradient closures: (g, a, b, out) -> ga, gb (before reduce_to)
-- Share of the gradient of maximum (cmp "gt") / minimum ("lt") that goes to a: 1 where a
-- wins, 0.5 on ties (as PyTorch), 0 elsewhere; b a tensor or a number; in g's dtype.
local function pick_weight(a, b, cmp, g)
  local dt = g:dtype()
  return a[cmp](a, b):to(dt) + a:eq(b):to(dt) * 0.5
end

local binary_grad = {
  [ADD] = function(g) return g, g end,
  [SUB] = function(g) return g, -g end,
  [MUL] = function(g, a, b) return g * b, g * a end,
  [DIV] = function(g, a, b, out) return g / b, -(g * out) / b end,
  [POW] = function(g, a, b, out)
    return g * b * a:pow(b - 1), g * out * a:log()
  end,
  [MAXIMUM] = function(g, a, b)
    local w = pick_weight(a, b, "gt", g)
    return g * w, g * (1 - w)
  end,
  [MINIMUM] = function(g, a, b)
    local w = pick_weight(a, b, "lt", g)
    return g * w, g * (1 - w)
  end,
  [ATAN2] = function(g, a, b)
    local d = a * a + b * b
    return g * b / d, -(g * a) / d
  end,
}

-- What each gradient reads ("a", "b", "out"): the node saves only those, so dead inputs and
-- outputs are freed as soon as nothing else holds them (a saved tensor lives until backward).
local binary_saves = {
  [ADD] = {}, [SUB] = {}, [MUL] = { a = true, b = true }, [DIV] = { b = true, out = true },
  [POW] = { a = true, b = true, out = true }, [MAXIMUM] = { a = true, b = true },
  [MINIMUM] = { a = true, b = true }, [ATAN2] = { a = true, b = true },
}

-- int dtypes are promoted to f32 for true division, pow and atan2
local needs_float = { [DIV] = true, [ATAN2] = true, [POW] = true }

local function back_binary(g, ctx)
  local ga, gb = ctx.gf(g, ctx.a, ctx.b, ctx.out)
  return reduce_to(ga, ctx.sa), reduce_to(gb, ctx.sb)
end

local function binary_tt(a, b, op)
  local ca, cb = a._c, b._c
  local da, db = ca.dtype, cb.dtype
  if da ~= db then
    local d = promote(da, db)
    if needs_float[op] and not is_float[d] then d = F32 end
    if da ~= d then a = a:to(d); ca = a._c end
    if db ~= d then b = b:to(d); cb = b._c end
  elseif needs_float[op] and not is_float[da] then
    a, b = a:to(F32), b:to(F32)
    ca, cb = a._c, b._c
  end
  OUT[0] = nil
  check(C.tn_binary(OUT, ca, cb, op), 2) -- tail-called: the caller is level 2
  local out = wrap(OUT[0])
  if op < EQ and grad_enabled() and (needs(a) or needs(b)) then
    local oc = out._c
    local sv = binary_saves[op]
    record(out, binop_names[op], back_binary, {
      gf = binary_grad[op], a = sv.a and a or nil, b = sv.b and b or nil, out = sv.out and out or nil,
      sa = not same_shape(ca, oc) and shape_table(ca) or nil,
      sb = not same_shape(cb, oc) and shape_table(cb) or nil,
    }, a, b)
  end
  return out
end

-- scalar gradients: (g, a, s, out, reverse) -> ga
local scalar_grad = {
  [ADD] = function(g) return g end,
  [SUB] = function(g, a, s, out, rev) return rev and -g or g end,
  [MUL] = function(g, a, s) return g * s end,
  [DIV] = function(g, a, s, out, rev)
    if rev then return -(g * out) / a end
    return g / s
  end,
  [POW] = function(g, a, s, out, rev)
    if rev then return g * out * math.log(s) end
    return g * s * a:pow(s - 1)
  end,
  [MAXIMUM] = function(g, a, s) return g * pick_weight(a, s, "gt", g) end,
  [MINIMUM] = function(g, a, s) return g * pick_weight(a, s, "lt", g) end,
  [ATAN2] = function(g, a, s, out, rev)
    local d = a * a + s * s
    if rev then return -(g * s) / d end
    return g * s / d
  end,
}

local function back_scalar(g, ctx)
  return ctx.gf(g, ctx.a, ctx.s, ctx.out, ctx.reverse)
end

local function binary_ts(a, s, op, reverse)
  local ca = a._c
  if not is_float[ca.dtype] and (needs_float[op] or (s ~= floor(s) and op < EQ)
      or (op == POW and (reverse or s < 0))) then
    a = a:to(F32)
    ca = a._c
  end
  OUT[0] = nil
  check(C.tn_binary_scalar(OUT, ca, s, op, reverse and 1 or 0), 2) -- tail-called
  local out = wrap(OUT[0])
  if op < EQ and grad_enabled() and needs(a) then
    -- the scalar gradients read a (pow, maximum, minimum, atan2, reversed div) or out
    -- (reversed div and pow); add, sub, mul and div by a number read neither
    local keep_a = op == POW or op == MAXIMUM or op == MINIMUM or op == ATAN2 or (op == DIV and reverse)
    local keep_out = (op == DIV or op == POW) and reverse
    record(out, binop_names[op], back_scalar, { gf = scalar_grad[op], a = keep_a and a or nil,
      s = s, out = keep_out and out or nil, reverse = reverse }, a)
  end
  return out
end

local function binary(a, b, op)
  local ta, tb = type(a), type(b)
  if ta == "table" and tb == "table" then
    if a._c == nil then error(binop_names[op] .. ": left operand is not a tensor", 2) end
    if b._c == nil then error(binop_names[op] .. ": right operand is not a tensor", 2) end
    return binary_tt(a, b, op)
  elseif ta == "table" and tb == "number" then
    if a._c == nil then error(binop_names[op] .. ": left operand is not a tensor", 2) end
    return binary_ts(a, b, op, false)
  elseif ta == "number" and tb == "table" then
    if b._c == nil then error(binop_names[op] .. ": right operand is not a tensor", 2) end
    return binary_ts(b, a, op, true)
  end
  -- binary is tail-called by the methods and metamethods: level 2 is the user's line
  error(fmt("%s: expected tensors or numbers, got %s and %s", binop_names[op], ta, tb), 2)
end
M.binary = binary

function Tensor.add(a, b, alpha)
  if alpha ~= nil and alpha ~= 1 then return binary(a, binary(b, alpha, MUL), ADD) end
  return binary(a, b, ADD)
end
function Tensor.sub(a, b, alpha)
  if alpha ~= nil and alpha ~= 1 then return binary(a, binary(b, alpha, MUL), SUB) end
  return binary(a, b, SUB)
end
function Tensor.mul(a, b) return binary(a, b, MUL) end
function Tensor.div(a, b) return binary(a, b, DIV) end
function Tensor.pow(a, b) return binary(a, b, POW) end
function Tensor.maximum(a, b) return binary(a, b, MAXIMUM) end
function Tensor.minimum(a, b) return binary(a, b, MINIMUM) end
function Tensor.atan2(a, b) return binary(a, b, ATAN2) end
function Tensor.eq(a, b) return binary(a, b, EQ) end
function Tensor.ne(a, b) return binary(a, b, NE) end
function Tensor.lt(a, b) return binary(a, b, LT) end
function Tensor.le(a, b) return binary(a, b, LE) end
function Tensor.gt(a, b) return binary(a, b, GT) end
function Tensor.ge(a, b) return binary(a, b, GE) end

mt.__add = function(a, b) return binary(a, b, ADD) end
mt.__sub = function(a, b) return binary(a, b, SUB) end
mt.__mul = function(a, b) return binary(a, b, MUL) end
mt.__div = function(a, b) return binary(a, b, DIV) end
mt.__pow = function(a, b) return binary(a, b, POW) end

-- in place: a:add_(b) etc. write into a (b broadcast to a's shape, converted to a's dtype)
local function inplace(a, b, op, opname)
  Tensor._check_inplace(a, opname)
  local ca = a._c
  OUT[0] = ca
  if type(b) == "number" then
    check(C.tn_binary_scalar(OUT, ca, b, op, 0), 2) -- inplace is tail-called
  else
    as_tensor_arg(b, opname, "other")
    if b._c.dtype ~= ca.dtype then b = b:to(ca.dtype) end
    check(C.tn_binary(OUT, ca, b._c, op), 2)
  end
  OUT[0] = nil
  return a
end
function Tensor.add_(a, b, alpha)
  if alpha ~= nil and alpha ~= 1 then b = binary(b, alpha, MUL) end
  return inplace(a, b, ADD, "add_")
end
function Tensor.sub_(a, b) return inplace(a, b, SUB, "sub_") end
function Tensor.mul_(a, b) return inplace(a, b, MUL, "mul_") end
function Tensor.div_(a, b) return inplace(a, b, DIV, "div_") end

-- elementwise unary ---------------------------------------------------------------------------

local function zeros_grad(g) return g:zeros_like() end
local unary_defs = {
  -- name = {op, grad(g, a, out), float_only, saves}: saves "a", "out" or nil (what grad reads)
  neg = { NEG, function(g) return -g end },
  abs = { ABS, function(g, a) return g * a:sign() end, false, "a" },
  exp = { EXP, function(g, a, out) return g * out end, true, "out" },
  log = { LOG, function(g, a) return g / a end, true, "a" },
  sqrt = { SQRT, function(g, a, out) return g * 0.5 / out end, true, "out" },
  rsqrt = { RSQRT, function(g, a, out) return g * -0.5 * out * out * out end, true, "out" },
  tanh = { TANH, function(g, a, out) return g * (1 - out * out) end, true, "out" },
  sigmoid = { SIGMOID, function(g, a, out) return g * out * (1 - out) end, true, "out" },
  relu = { RELU, function(g, a, out) return g:masked_fill(out:le(0), 0) end, false, "out" },
  sign = { SIGN, zeros_grad },
  log1p = { LOG1P, function(g, a) return g / (a + 1) end, true, "a" },
  expm1 = { EXPM1, function(g, a, out) return g * (out + 1) end, true, "out" },
  sin = { SIN, function(g, a) return g * a:cos() end, true, "a" },
  cos = { COS, function(g, a) return -(g * a:sin()) end, true, "a" },
  reciprocal = { RECIPROCAL, function(g, a, out) return -(g * out * out) end, true, "out" },
  square = { SQUARE, function(g, a) return g * a * 2 end, false, "a" },
  floor = { FLOOR, zeros_grad },
  ceil = { CEIL, zeros_grad },
  round = { ROUND, zeros_grad },
}

local function back_unary(g, ctx) return ctx.gf(g, ctx.a, ctx.out) end

for name, def in pairs(unary_defs) do
  local op, gf, float_only, saves = def[1], def[2], def[3], def[4]
  local function fn(a)
    if not is_tensor(a) then error(fmt("%s: expected a tensor, got %s", name, type(a)), 2) end
    if float_only and not is_float[a._c.dtype] then a = a:to(F32) end
    OUT[0] = nil
    check(C.tn_unary(OUT, a._c, op), 2)
    local out = wrap(OUT[0])
    if grad_enabled() and needs(a) then
      record(out, name, back_unary, { gf = gf, a = saves == "a" and a or nil,
        out = saves == "out" and out or nil }, a)
    end
    return out
  end
  Tensor[name] = fn
end
mt.__unm = function(a) return Tensor.neg(a) end

function Tensor.logical_not(a)
  OUT[0] = nil
  check(C.tn_unary(OUT, a._c, LOGICAL_NOT), 2)
  return wrap(OUT[0])
end

local function back_clamp(g, ctx)
  local a, lo, hi = ctx.a, ctx.lo, ctx.hi
  local outside
  if lo and hi then outside = a:lt(lo) + a:gt(hi)
  elseif lo then outside = a:lt(lo)
  else outside = a:gt(hi) end
  return g:masked_fill(outside, 0)
end

-- clamp(lo, hi): nil for an open side
function Tensor.clamp(a, lo, hi)
  if lo == nil and hi == nil then error("clamp: give at least one of min and max", 2) end
  if (lo ~= nil and type(lo) ~= "number") or (hi ~= nil and type(hi) ~= "number") then
    error("clamp: min and max must be numbers or nil", 2)
  end
  if lo and hi and lo > hi then error(fmt("clamp: min %g is greater than max %g", lo, hi), 2) end
  OUT[0] = nil
  check(C.tn_clamp(OUT, a._c, lo or -math.huge, hi or math.huge), 2)
  local out = wrap(OUT[0])
  if grad_enabled() and needs(a) then
    record(out, "clamp", back_clamp, { a = a, lo = lo, hi = hi }, a)
  end
  return out
end

local function back_where(g, ctx)
  local ga = ctx.ga and reduce_to(g:masked_fill(ctx.cond:logical_not(), 0), ctx.sa) or nil
  local gb = ctx.gb and reduce_to(g:masked_fill(ctx.cond, 0), ctx.sb) or nil
  return ga, gb
end

-- where(cond, a, b): a and b tensors or numbers (numbers become 0-d tensors on cond's device)
function Tensor.where(cond, a, b)
  as_tensor_arg(cond, "where", "condition")
  if cond._c.dtype ~= U8 then cond = cond:ne(0) end
  local device = cond._c.device
  if type(a) == "number" and type(b) == "number" then
    a = Tensor.tensor(a, { device = device })
  end
  if type(a) == "number" then a = Tensor.tensor(a, { dtype = b._c.dtype, device = device }) end
  if type(b) == "number" then b = Tensor.tensor(b, { dtype = a._c.dtype, device = device }) end
  as_tensor_arg(a, "where", "input")
  as_tensor_arg(b, "where", "other")
  if a._c.dtype ~= b._c.dtype then
    local d = promote(a._c.dtype, b._c.dtype)
    a, b = a:to(d), b:to(d)
  end
  OUT[0] = nil
  check(C.tn_where(OUT, cond._c, a._c, b._c), 2)
  local out = wrap(OUT[0])
  if grad_enabled() and (needs(a) or needs(b)) then
    local oc = out._c
    record(out, "where", back_where, {
      cond = cond, ga = needs(a), gb = needs(b),
      sa = not same_shape(a._c, oc) and shape_table(a._c) or nil,
      sb = not same_shape(b._c, oc) and shape_table(b._c) or nil,
    }, a, b)
  end
  return out
end

local function back_masked_fill(g, mask) return g:masked_fill(mask, 0) end

-- masked_fill(mask, value): mask broadcast to a's shape
function Tensor.masked_fill(a, mask, value)
  as_tensor_arg(mask, "masked_fill", "mask")
  if type(value) ~= "number" then error("masked_fill: value must be a number", 2) end
  if mask._c.dtype ~= U8 then mask = mask:ne(0) end
  OUT[0] = nil
  check(C.tn_masked_fill(OUT, a._c, mask._c, value), 2)
  local out = wrap(OUT[0])
  if grad_enabled() and needs(a) then
    record(out, "masked_fill", back_masked_fill, mask, a)
  end
  return out
end

-- reductions --------------------------------------------------------------------------------

-- dims argument: nil (all), a number, or a table of numbers -> count in DIMS
local function read_dims(a, dims, opname)
  local nd = a._c.ndim
  if dims == nil then return 0 end
  if type(dims) == "number" then
    DIMS[0] = cdim(nd, dims, opname, "dim", 4) -- read_dims < reduce < method < user
    return 1
  end
  if type(dims) ~= "table" then
    error(fmt("%s: dim must be a number or a table of numbers, got %s", opname, type(dims)), 4)
  end
  for i = 1, #dims do DIMS[i - 1] = cdim(nd, dims[i], opname, "dim", 4) end
  return #dims
end

-- shape of a with the reduced dims kept as 1 (to reshape a gradient before expanding)
local function keep_shape(a, n)
  local s = shape_table(a._c)
  if n == 0 then
    for i = 1, #s do s[i] = 1 end
  else
    for i = 0, n - 1 do s[DIMS[i] + 1] = 1 end
  end
  return s
end

local function reduce(a, dims, op, keepdim, correction, opname)
  as_tensor_arg(a, opname, "input")
  local n = read_dims(a, dims, opname)
  local ks = keep_shape(a, n)
  OUT[0] = nil
  check(C.tn_reduce(OUT, a._c, n, DIMS, op, keepdim and 1 or 0, correction or 0), 3)
  return wrap(OUT[0]), ks
end

local function back_sum(g, ctx)
  if ctx.scale ~= 1 then g = g / ctx.scale end
  return g:reshape(ctx.ks):expand(ctx.src)
end

-- sum(dims, keepdim): dims nil (all), a number or a table
function Tensor.sum(a, dims, keepdim)
  if type(dims) == "boolean" then dims, keepdim = nil, dims end
  local out, ks = reduce(a, dims, RED_SUM, keepdim, 0, "sum")
  if grad_enabled() and needs(a) then
    record(out, "sum", back_sum, { ks = ks, src = shape_table(a._c), scale = 1 }, a)
  end
  return out
end

function Tensor.mean(a, dims, keepdim)
  if type(dims) == "boolean" then dims, keepdim = nil, dims end
  if not is_float[a._c.dtype] then a = a:to(F32) end
  local out, ks = reduce(a, dims, RED_MEAN, keepdim, 0, "mean")
  if grad_enabled() and needs(a) then
    record(out, "mean", back_sum,
      { ks = ks, src = shape_table(a._c), scale = a:numel() / math.max(1, out:numel()) }, a)
  end
  return out
end

local function back_var(g, ctx)
  local a = ctx.a
  local mu = a:mean(ctx.dims, true)
  return (a - mu) * (g:reshape(ctx.ks) * (2 / (ctx.count - ctx.correction)))
end

-- var(dims, {correction=1, keepdim=false}) or var(dims, keepdim)
function Tensor.var(a, dims, opts)
  if type(dims) == "table" and (dims.correction ~= nil or dims.keepdim ~= nil or dims.unbiased ~= nil) then
    dims, opts = nil, dims
  end
  local keepdim, correction = false, 1
  if type(opts) == "boolean" then keepdim = opts
  elseif type(opts) == "table" then
    keepdim = opts.keepdim or false
    if opts.correction ~= nil then correction = opts.correction end
    if opts.unbiased == false then correction = 0 end
  end
  if not is_float[a._c.dtype] then a = a:to(F32) end
  local out, ks = reduce(a, dims, RED_VAR, keepdim, correction, "var")
  if grad_enabled() and needs(a) then
    record(out, "var", back_var, { a = a, dims = dims, ks = ks, correction = correction,
      count = a:numel() / math.max(1, out:numel()) }, a)
  end
  return out
end

function Tensor.std(a, dims, opts)
  return a:var(dims, opts):sqrt()
end

local function back_lse(g, ctx)
  return g:reshape(ctx.ks) * (ctx.a - ctx.out:reshape(ctx.ks)):exp()
end

function Tensor.logsumexp(a, dims, keepdim)
  if not is_float[a._c.dtype] then a = a:to(F32) end
  local out, ks = reduce(a, dims, RED_LSE, keepdim, 0, "logsumexp")
  if grad_enabled() and needs(a) then
    record(out, "logsumexp", back_lse, { a = a, out = out, ks = ks }, a)
  end
  return out
end

local function back_maxmin_all(g, ctx)
  local mask = ctx.a:eq(ctx.out):to(g:dtype())
  return mask * (g / mask:sum())
end
local function back_maxmin_dim(g, ctx)
  local z = g:new_zeros(ctx.src)
  local gi = g:reshape(ctx.ks):contiguous()
  check(C.tn_scatter_add(z._c, ctx.d, ctx.indices:reshape(ctx.ks)._c, gi._c))
  return z
end

-- max() -> 0-d tensor; max(dim, keepdim) -> values, indices (i64, 0-based)
local function maxmin(a, dim, keepdim, is_min)
  local opname = is_min and "min" or "max"
  as_tensor_arg(a, opname, "input")
  if dim == nil then
    local out = reduce(a, nil, is_min and RED_MIN or RED_MAX, false, 0, opname)
    if grad_enabled() and needs(a) then
      record(out, opname, back_maxmin_all, { a = a, out = out }, a)
    end
    return out
  end
  local d = cdim(a._c.ndim, dim, opname, "dim", 2)
  OUT[0], OUT2[0] = nil, nil
  check(C.tn_max_dim(OUT, OUT2, a._c, d, keepdim and 1 or 0, is_min and 1 or 0), 2)
  local values = wrap(OUT[0])
  local indices = wrap(OUT2[0])
  if grad_enabled() and needs(a) then
    local ks = shape_table(a._c)
    ks[d + 1] = 1
    record(values, opname, back_maxmin_dim,
      { src = shape_table(a._c), ks = ks, d = d, indices = indices }, a)
  end
  return values, indices
end
function Tensor.max(a, dim, keepdim) return maxmin(a, dim, keepdim, false) end
function Tensor.min(a, dim, keepdim) return maxmin(a, dim, keepdim, true) end

-- argmax(dim, keepdim) / argmin: i64, 0-based; without dim, the index into the flattened tensor
local function argm(a, dim, keepdim, op, opname)
  local out = reduce(a, dim, op, keepdim, 0, opname)
  return out
end
function Tensor.argmax(a, dim, keepdim) return argm(a, dim, keepdim, RED_ARGMAX, "argmax") end
function Tensor.argmin(a, dim, keepdim) return argm(a, dim, keepdim, RED_ARGMIN, "argmin") end

local function back_expand(g, src) return g:expand(src) end

-- sum_to(shape): sum a down to a shape that broadcasts to a's (the gradient of broadcasting)
function Tensor.sum_to(a, shape)
  if type(shape) ~= "table" then error("sum_to: expected a shape table", 2) end
  local n = #shape
  for i = 1, n do SHAPE[i - 1] = shape[i] end
  local out = Tensor._new_empty(n, SHAPE, a._c.dtype, a._c.device)
  check(C.tn_sum_to(out._c, a._c), 2)
  if grad_enabled() and needs(a) then
    record(out, "sum_to", back_expand, shape_table(a._c), a)
  end
  return out
end

function Tensor.all(a)
  return a:ne(0):sum():item() == a:numel()
end
function Tensor.any(a)
  return a:ne(0):sum():item() > 0
end

-- softmax ------------------------------------------------------------------------------------

local function back_softmax(g, ctx)
  OUT[0] = nil
  check(C.tn_softmax_backward(OUT, g._c, ctx.out._c, ctx.d, ctx.log))
  return wrap(OUT[0])
end

local function softmax(a, dim, log, opname)
  as_tensor_arg(a, opname, "input")
  if dim == nil then error(opname .. ": dim is required", 3) end
  local d = cdim(a._c.ndim, dim, opname, "dim", 3)
  if not is_float[a._c.dtype] then a = a:to(F32) end
  OUT[0] = nil
  check(C.tn_softmax(OUT, a._c, d, log), 3)
  local out = wrap(OUT[0])
  if grad_enabled() and needs(a) then
    record(out, opname, back_softmax, { out = out, d = d, log = log }, a)
  end
  return out
end
-- not tail calls: softmax raises at level 3, the caller of these methods
function Tensor.softmax(a, dim) local r = softmax(a, dim, 0, "softmax") return r end
function Tensor.log_softmax(a, dim) local r = softmax(a, dim, 1, "log_softmax") return r end

-- linear algebra ---------------------------------------------------------------------------

local function swap_last(t) return t:transpose(-1, -2) end

local function back_matmul(g, ctx)
  local a, b = ctx.a, ctx.b
  local ga = needs(a) and g:matmul(swap_last(b)) or nil
  local gb
  if needs(b) then
    if b._c.ndim == 2 and a._c.ndim > 2 then
      -- a (..., n, k) x b (k, m): the weight gradient is one GEMM over all rows,
      -- (k, rows) x (rows, m), not a batch of small products summed afterwards
      local k, m = tonumber(a._c.shape[a._c.ndim - 1]), tonumber(b._c.shape[1])
      gb = a:reshape(-1, k):t():matmul(g:reshape(-1, m))
    else
      gb = swap_last(a):matmul(g)
    end
  end
  if ga and not same_shape(ga._c, a._c) then ga = ga:sum_to(shape_table(a._c)) end
  if gb and not same_shape(gb._c, b._c) then gb = gb:sum_to(shape_table(b._c)) end
  return ga, gb
end

-- out = cfn(out, a, b) for matmul and bmm, recorded with ctx {a, b}. Raises at level 3, the
-- methods' caller: bmm calls it without a tail call, matmul through matmul_nd's tail call.
local function product(a, b, cfn, opname, back)
  OUT[0] = nil
  check(cfn(OUT, a._c, b._c), 3)
  local out = wrap(OUT[0])
  if grad_enabled() and (needs(a) or needs(b)) then
    record(out, opname, back, { a = a, b = b }, a, b)
  end
  return out
end

-- a, b with >= 2 dims each (matmul handles the 1-d cases by unsqueezing around this)
local function matmul_nd(a, b) return product(a, b, C.tn_matmul, "matmul", back_matmul) end

function Tensor.matmul(a, b)
  as_tensor_arg(a, "matmul", "input")
  as_tensor_arg(b, "matmul", "other")
  local na, nb = a._c.ndim, b._c.ndim
  if na == 0 or nb == 0 then
    error(fmt("matmul: both arguments need at least 1 dim, got shapes %s and %s",
      a:shape_string(), b:shape_string()), 2)
  end
  if a._c.dtype ~= b._c.dtype then
    local d = promote(a._c.dtype, b._c.dtype)
    a, b = a:to(d), b:to(d)
  end
  if na >= 2 and nb >= 2 then local r = matmul_nd(a, b) return r end -- no tail call: levels
  if na == 1 and nb == 1 then
    if a._c.shape[0] ~= b._c.shape[0] then
      error(fmt("matmul: shapes %s and %s cannot be multiplied (%d != %d)", a:shape_string(),
        b:shape_string(), tonumber(a._c.shape[0]), tonumber(b._c.shape[0])), 2)
    end
    return matmul_nd(a:unsqueeze(1), b:unsqueeze(2)):reshape({})
  end
  if na == 1 then return matmul_nd(a:unsqueeze(1), b):squeeze(-2) end
  return matmul_nd(a, b:unsqueeze(2)):squeeze(-1)
end

local function back_bmm(g, ctx)
  local a, b = ctx.a, ctx.b
  return needs(a) and g:bmm(swap_last(b)) or nil, needs(b) and swap_last(a):bmm(g) or nil
end

function Tensor.bmm(a, b)
  as_tensor_arg(a, "bmm", "input")
  as_tensor_arg(b, "bmm", "other")
  local r = product(a, b, C.tn_bmm, "bmm", back_bmm)
  return r -- no tail call: product raises at level 3
end
Tensor.mm = Tensor.matmul

-- joining and indexing ----------------------------------------------------------------------

local ptr_array = ffi.typeof("const tn_tensor *[?]")

local function back_cat(g, ctx)
  local gs, start, ts, sizes = {}, 1, ctx.ts, ctx.sizes
  for i = 1, ctx.n do
    gs[i] = needs(ts[i]) and g:narrow(ctx.d + 1, start, sizes[i]) or nil
    start = start + sizes[i]
  end
  return unpack(gs, 1, ctx.n)
end

-- cat(list, dim): dim defaults to 1
function Tensor.cat(list, dim)
  if type(list) ~= "table" or is_tensor(list) then
    error("cat: expected a list of tensors", 2)
  end
  local n = #list
  if n == 0 then error("cat: expected a non-empty list of tensors", 2) end
  local dtype = nil
  for i = 1, n do
    local t = list[i]
    if not is_tensor(t) then error(fmt("cat: element %d is a %s, not a tensor", i, type(t)), 2) end
    dtype = dtype and promote(dtype, t._c.dtype) or t._c.dtype
  end
  local ts = {}
  local arr = ptr_array(n)
  for i = 1, n do
    local t = list[i]
    if t._c.dtype ~= dtype then t = t:to(dtype) end
    ts[i] = t
    arr[i - 1] = t._c
  end
  local d = cdim(ts[1]._c.ndim, dim or 1, "cat", "dim", 2)
  OUT[0] = nil
  check(C.tn_cat(OUT, arr, n, d), 2)
  local out = wrap(OUT[0])
  if grad_enabled() then
    local any = false
    for i = 1, n do if needs(ts[i]) then any = true break end end
    if any then
      local sizes = {}
      for i = 1, n do sizes[i] = tonumber(ts[i]._c.shape[d]) end
      record(out, "cat", back_cat, { ts = ts, sizes = sizes, d = d, n = n }, unpack(ts, 1, n))
    end
  end
  return out
end

-- stack(list, dim): a new dim (default 1)
function Tensor.stack(list, dim)
  if type(list) ~= "table" or is_tensor(list) then error("stack: expected a list of tensors", 2) end
  if #list == 0 then error("stack: expected a non-empty list of tensors", 2) end
  local first = list[1]
  if not is_tensor(first) then error("stack: element 1 is not a tensor", 2) end
  local d = dim or 1
  local ok_shape = first:shape()
  local us = {}
  for i = 1, #list do
    local t = list[i]
    if not is_tensor(t) then error(fmt("stack: element %d is a %s, not a tensor", i, type(t)), 2) end
    local s = t:shape()
    if #s ~= #ok_shape then
      error(fmt("stack: element %d has shape %s, element 1 has %s", i, shape_string(s),
        shape_string(ok_shape)), 2)
    end
    for k = 1, #s do
      if s[k] ~= ok_shape[k] then
        error(fmt("stack: element %d has shape %s, element 1 has %s", i, shape_string(s),
          shape_string(ok_shape)), 2)
      end
    end
    us[i] = t:unsqueeze(d)
  end
  return Tensor.cat(us, d)
end

local function check_index(index, opname, level)
  level = level or 3
  if not is_tensor(index) then
    error(fmt("%s: index must be a tensor, got %s", opname, type(index)), level + 1)
  end
  local dt = index._c.dtype
  if dt ~= I64 and dt ~= I32 then
    error(fmt("%s: index must be an i64 or i32 tensor, got %s", opname, lib.dtype_names[dt]), level + 1)
  end
end

-- gather and index_select take slices of a at index along dim; their gradient adds g back
-- at the same places (scatter_add, index_add) into zeros of a's shape.
local function back_take(g, ctx)
  local z = g:new_zeros(ctx.src)
  check(ctx.cadd(z._c, ctx.d, ctx.index._c, g:contiguous()._c))
  return z
end

local function take(name, cfwd, cadd, a, dim, index)
  check_index(index, name)
  as_tensor_arg(a, name, "input", 4)
  local d = cdim(a._c.ndim, dim, name, "dim", 3)
  OUT[0] = nil
  check(cfwd(OUT, a._c, d, index._c), 3)
  local out = wrap(OUT[0])
  if grad_enabled() and needs(a) then
    record(out, name, back_take, { src = shape_table(a._c), d = d, index = index, cadd = cadd }, a)
  end
  return out
end

-- gather(dim, index): out[i][j] = a[index[i][j]][j] for dim 1 (index values 0-based)
function Tensor.gather(a, dim, index)
  local r = take("gather", C.tn_gather, C.tn_scatter_add, a, dim, index)
  return r
end

-- index_select(dim, index): index 1-d, values 0-based
function Tensor.index_select(a, dim, index)
  local r = take("index_select", C.tn_index_select, C.tn_index_add, a, dim, index)
  return r
end

-- scatter_add and index_add return a copy of a with src added at index along dim; the
-- gradient of src takes g back at those places (gather, index_select).
local function back_put(g, ctx)
  return needs(ctx.a) and g or nil, needs(ctx.src) and g[ctx.take](g, ctx.d + 1, ctx.index) or nil
end

local function put(name, cadd, take_name, a, dim, index, src)
  check_index(index, name)
  as_tensor_arg(a, name, "input", 4)
  as_tensor_arg(src, name, "src", 4)
  local d = cdim(a._c.ndim, dim, name, "dim", 3)
  if src._c.dtype ~= a._c.dtype then src = src:to(a._c.dtype) end
  local out = autograd.no_grad(Tensor.clone, a)
  check(cadd(out._c, d, index._c, src._c), 3)
  if grad_enabled() and (needs(a) or needs(src)) then
    record(out, name, back_put, { a = a, src = src, d = d, index = index, take = take_name }, a, src)
  end
  return out
end

-- scatter_add(dim, index, src): out[index[i][j]][j] += src[i][j] for dim 1, on a copy of a
function Tensor.scatter_add(a, dim, index, src)
  local r = put("scatter_add", C.tn_scatter_add, "gather", a, dim, index, src)
  return r
end

-- index_add(dim, index, src): slices of src added at index (1-d) along dim, on a copy of a
function Tensor.index_add(a, dim, index, src)
  local r = put("index_add", C.tn_index_add, "index_select", a, dim, index, src)
  return r
end

-- embedding(weight, indices): rows of weight (V, D) at indices of any shape -> (..., D)
function M.embedding(weight, indices)
  as_tensor_arg(weight, "embedding", "weight")
  check_index(indices, "embedding", 2)
  if weight._c.ndim ~= 2 then
    error(fmt("embedding: weight must be 2-d (num_embeddings, dim), got shape %s",
      weight:shape_string()), 2)
  end
  if indices._c.device ~= weight._c.device then
    error(fmt("embedding: indices are on %s but the weight is on %s; move the indices (indices:to(\"%s\"))",
      indices:device(), weight:device(), weight:device()), 2)
  end
  local s = indices:shape()
  s[#s + 1] = tonumber(weight._c.shape[1])
  local ok, r = pcall(weight.index_select, weight, 1, indices:reshape(-1))
  if not ok then error("embedding: " .. tostring(r):gsub("^[^:]*:%d+: ", ""), 2) end
  return r:reshape(s)
end

-- comparisons of whole tensors -------------------------------------------------------------

-- allclose(a, b, {rtol=1e-5, atol=1e-8}): same shape, |a - b| <= atol + rtol |b| everywhere
function Tensor.allclose(a, b, rtol, atol)
  if type(rtol) == "table" then rtol, atol = rtol.rtol, rtol.atol end
  rtol, atol = rtol or 1e-5, atol or 1e-8
  return autograd.no_grad(function()
    if not same_shape(a._c, b._c) then return false end
    local x, y = a:double(), b:double()
    local diff = (x - y):abs()
    local ok = diff:le(y:abs() * rtol + atol)
    -- NaN only matches NaN
    local both_nan = x:ne(x):mul(y:ne(y))
    return (ok + both_nan):all()
  end)
end

function Tensor.equal(a, b)
  return autograd.no_grad(function()
    return same_shape(a._c, b._c) and a:eq(b):all()
  end)
end

return M
