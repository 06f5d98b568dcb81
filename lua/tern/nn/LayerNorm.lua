-- tern.nn.LayerNorm(normalized_shape, {eps=1e-5, elementwise_affine=true, dtype="f32"}):
-- normalise over the trailing dims, then scale (weight, init 1) and shift (bias, init 0).
local Module = require "tern.nn.Module"
local Tensor = require "tern.tensor"
local F = require "tern.nn.functional"

local LayerNorm = Module:extend("LayerNorm")

function LayerNorm:init(shape, opts)
  opts = opts or {}
  if type(shape) == "number" then shape = { shape } end
  if type(shape) ~= "table" or #shape == 0 then
    error("LayerNorm: normalized_shape must be a number or a non-empty table of numbers", 3)
  end
  self.normalized_shape = shape
  self.eps = opts.eps or 1e-5
  self.elementwise_affine = opts.elementwise_affine ~= false
  if self.elementwise_affine then
    local dt = opts.dtype or "f32"
    self:register_parameter("weight", Tensor.ones(shape, { dtype = dt }))
    self:register_parameter("bias", Tensor.zeros(shape, { dtype = dt }))
  end
end

function LayerNorm:forward(x)
  return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
end

function LayerNorm:extra_repr()
  return string.format("{%s}, eps=%g, elementwise_affine=%s", table.concat(self.normalized_shape, ", "),
    self.eps, tostring(self.elementwise_affine))
end

return LayerNorm
