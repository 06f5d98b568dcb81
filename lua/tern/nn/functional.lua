-- tern.nn.functional: stateless forms of the layers (tn.nn.F): linear, dropout, layer_norm,
-- embedding. All are compositions of differentiable tensor ops, so their gradients are
-- the ops' gradients.
local Tensor = require "tern.tensor"
local ops = require "tern.ops"
local autograd = require "tern.autograd"
local lib = require "tern.lib"

local fmt = string.format
local F = {}

local function shape_str(t) return "{" .. table.concat(t:shape(), ", ") .. "}" end

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
  local y = x:matmul(weight:t())
  if bias then y = y + bias end
  return y
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
