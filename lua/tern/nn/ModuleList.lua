-- tern.nn.ModuleList({m1, m2, ...}): holds modules (named "0", "1", ... as PyTorch) without a
-- forward of its own; list[i] is the i-th module (1-based), #list via list:len().
local Module = require "tern.nn.Module"

local ModuleList = Module:extend("ModuleList")

function ModuleList:init(mods)
  for i, m in ipairs(mods or {}) do
    if not Module.is_module(m) then
      error(string.format("ModuleList: element %d is a %s, not a module", i, type(m)), 3)
    end
    self:add_module(tostring(i - 1), m)
  end
end

function ModuleList:append(m)
  self:add_module(tostring(#self._module_names), m)
  return self
end

function ModuleList:len() return #self._module_names end

function ModuleList:forward()
  error("ModuleList: has no forward(); call its modules", 2)
end

ModuleList._mt.__index = function(self, k)
  if type(k) == "number" then return self._modules[tostring(k - 1)] end
  return ModuleList[k]
end

return ModuleList
