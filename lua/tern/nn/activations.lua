-- tern.nn activations: ReLU, Tanh, Sigmoid, Identity, Softmax(dim), LogSoftmax(dim). Six
-- one-line modules share this file instead of one file each (STYLE.md: one class per file,
-- unless that does not fit).
local Module = require "tern.nn.Module"

local M = {}

local function simple(name, fn)
  local cls = Module:extend(name)
  cls.forward = function(_, x) return fn(x) end
  M[name] = cls
end

simple("ReLU", function(x) return x:relu() end)
simple("Tanh", function(x) return x:tanh() end)
simple("Sigmoid", function(x) return x:sigmoid() end)
simple("Identity", function(x) return x end)

local function with_dim(name, method)
  local cls = Module:extend(name)
  function cls:init(dim)
    if type(dim) ~= "number" then error(name .. ": dim is required (a number)", 3) end
    self.dim = dim
  end
  function cls:forward(x) return x[method](x, self.dim) end
  function cls:extra_repr() return "dim=" .. self.dim end
  M[name] = cls
end

with_dim("Softmax", "softmax")
with_dim("LogSoftmax", "log_softmax")

return M
