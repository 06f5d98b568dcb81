-- tern.nn.Linear(in_features, out_features, {bias=true, dtype="f32"}): y = x W^T + b with
-- PyTorch's layout (weight (out, in)) and initialisation (both U(-1/sqrt(in), 1/sqrt(in))).
local Module = require "tern.nn.Module"
local Tensor = require "tern.tensor"
local F = require "tern.nn.functional"

local Linear = Module:extend("Linear")

function Linear:init(in_features, out_features, opts)
  opts = opts or {}
  Module.check_int("Linear", "in_features", in_features, 1)
  Module.check_int("Linear", "out_features", out_features, 1)
  self.in_features, self.out_features = in_features, out_features
  local bound = 1 / math.sqrt(in_features)
  local dt = opts.dtype or "f32"
  self:register_parameter("weight", Tensor.empty({ out_features, in_features }, { dtype = dt }):uniform_(-bound, bound))
  if opts.bias ~= false then
    self:register_parameter("bias", Tensor.empty({ out_features }, { dtype = dt }):uniform_(-bound, bound))
  end
end

function Linear:forward(x) return F.linear(x, self.weight, self.bias) end

function Linear:extra_repr()
  return string.format("in_features=%d, out_features=%d, bias=%s", self.in_features,
    self.out_features, tostring(self.bias ~= nil))
end

return Linear
