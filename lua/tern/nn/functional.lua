-- tern.nn.functional: stateless forms of the layers (tn.nn.F): linear, dropout, layer_norm,
-- embedding. Compositions of differentiable tensor ops, except linear with a bias (one GEMM
-- with the bias folded in, its own gradient) and embedding with padding_idx.
local Tensor = require "tern.tensor"
local ops = require "tern.ops"
local autograd = require "tern.autograd"
local lib = require "tern.lib"

local fmt = string.format
local F = {}

local function shape_str(t) return "{" .. table.concat(t:shape(), ", ") .. "}" end

-- gradients of y = x W^T + b over the rows of x flattened to (rows, in)
local function back_linear(g, ctx)
  local x, w, b = ctx.x, ctx.weight, ctx.bias
  local g2 = g:reshape(-1, w:size(1))
  local gx = autograd.needs(x) and g2:matmul(w):reshape(x:shape()) or nil
  local gw = autograd.needs(w) and g2:t():matmul(x:reshape(-1, w:size(2))) or nil
  local gb = autograd.needs(b) and g2:sum(1) or nil
  return gx, gw, gb
end

-- y = x W^T + b; x (..., in), weight (out, in), bias (out) or nil
function F.linear(x, weight, bias)
  if not Tensor.is_tensor(x) then error("linear: input must be a tensor, got " .. type(x), 2) end
  local nin = weight:size(2)
  if x:dim() < 1 or x:size(-1) ~= nin then
    error(fmt("linear: input of shape %s does not end in in_features = %d (weight %s)",
      shape_str(x), nin, shape_str(weight)), 2)
  end
  if x:dtype() ~= weight:dtype() then
    error(fmt("linear: input is %s but the weight is %s; convert one of them (x:to(\"%s\"))",
      x:dtype(), weight:dtype(), weight:dtype()), 2)
  end
  if x._c.device ~= weight._c.device then
    error(fmt("linear: input is on %s but the weight is on %s; move one of them (x:to(\"%s\") or module:to(\"%s\"))",
      x:device(), weight:device(), weight:device(), x:device()), 2)
  end
  if bias and bias._c.device ~= weight._c.device then
    error(fmt("linear: the bias is on %s but the weight is on %s", bias:device(), weight:device()), 2)
  end
  if not bias or x:dim() < 2 then
    local y = x:matmul(weight:t())
    if bias then y = y + bias end
    return y
  end
  -- one GEMM with the bias folded in (out = bias, then out += x2 W^T with beta = 1): no
  -- separate output-sized sum tensor and pass; recorded as one node
  local nout = weight:size(1)
  local shape = x:shape()
  shape[#shape] = nout
  local out = autograd.no_grad(function()
    local x2 = x:reshape(-1, nin):contiguous()
    local o = Tensor.empty({ x2:size(1), nout }, { dtype = x:dtype(), device = x:device() })
    o:copy_(bias)
    lib.check(lib.C.tn_gemm(o._c, x2._c, weight._c, 0, 1, 1.0, 1.0), 3)
    return o:view(shape)
  end)
  if autograd.is_enabled() and (autograd.needs(x) or autograd.needs(weight) or autograd.needs(bias)) then
    autograd.record(out, "linear", back_linear, { x = x, weight = weight, bias = bias }, x, weight, bias)
  end
  return out
end

-- Zero each element with probability p and scale the rest by 1/(1-p) when training.
function F.dropout(x, p, training)
  if type(p) ~= "number" or p < 0 or p > 1 then
    error("dropout: p must be a number in [0, 1], got " .. tostring(p), 2)
  end
  if not training or p == 0 then return x end
  if p == 1 then return x * 0 end
  local mask = autograd.no_grad(function()
    return x:empty_like():bernoulli_(1 - p):div_(1 - p)
  end)
  return x * mask
end

-- Normalise over the trailing dims of normalized_shape (a table), then scale and shift.
function F.layer_norm(x, normalized_shape, weight, bias, eps)
  eps = eps or 1e-5
  local n = #normalized_shape
  local xs = x:shape()
  if #xs < n then
    error(fmt("layer_norm: input of shape %s has fewer dims than normalized_shape {%s}",
      shape_str(x), table.concat(normalized_shape, ", ")), 2)
  end
  for i = 1, n do
    if xs[#xs - n + i] ~= normalized_shape[i] then
      error(fmt("layer_norm: input of shape %s does not end in normalized_shape {%s}",
        shape_str(x), table.concat(normalized_shape, ", ")), 2)
    end
  end
  local dims = {}
  for i = 1, n do dims[i] = -i end
  local mu = x:mean(dims, true)
  local xc = x - mu
  local var = (xc * xc):mean(dims, true)
  local y = xc * (var + eps):rsqrt()
  if weight then y = y * weight end
  if bias then y = y + bias end
  return y
end

-- Rows of weight at indices; padding_idx (0-based, as the stored index values) gets no
-- gradient, as in PyTorch.
local function back_embedding(g, ctx)
  local D = ctx.dim
  local flat = g:reshape(-1, D):contiguous()
  local z = g:new_zeros({ ctx.num, D })
  lib.check(lib.C.tn_index_add(z._c, 0, ctx.idx._c, flat._c))
  if ctx.padding_idx then z:select(1, ctx.padding_idx + 1):zero_() end
  return z
end

function F.embedding(weight, indices, padding_idx)
  if padding_idx == nil then return ops.embedding(weight, indices) end
  local out = autograd.no_grad(function() return ops.embedding(weight, indices) end)
  if autograd.is_enabled() and autograd.needs(weight) then
    autograd.record(out, "embedding", back_embedding, {
      dim = weight:size(2), num = weight:size(1), idx = indices:reshape(-1),
      padding_idx = padding_idx,
    }, weight)
  end
  return out
end

return F
