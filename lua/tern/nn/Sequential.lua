-- tern.nn.Sequential(m1, m2, ...): applies its children in order. Children are named "0",
-- "1", ... as in PyTorch (so state_dict keys match); seq[i] is the i-th child, 1-based.
local Module = require "tern.nn.Module"

local Sequential = Module:extend("Sequential")

function Sequential:init(...)
  local mods = select("#", ...) == 1 and not Module.is_module(...) and ... or { ... }
  for i, m in ipairs(mods) do
    if not Module.is_module(m) then
      error(string.format("Sequential: argument %d is a %s, not a module", i, type(m)), 3)
    end
    self:add_module(tostring(i - 1), m)
  end
end

function Sequential:add(m)
  self:add_module(tostring(#self._module_names), m)
  return self
end

function Sequential:forward(x, ...)
  for _, m in self:named_children() do x = m(x, ...) end
  return x
end

function Sequential:len() return #self._module_names end
function Sequential:get(i) return self._modules[tostring(i - 1)] end

Sequential._mt.__index = function(self, k)
  if type(k) == "number" then return self._modules[tostring(k - 1)] end
  return Sequential[k]
end

return Sequential
