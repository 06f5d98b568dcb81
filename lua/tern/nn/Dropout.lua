-- tern.nn.Dropout(p=0.5): zero elements with probability p in training mode (scaling the
-- others by 1/(1-p)); the identity in eval mode.
local Module = require "tern.nn.Module"
local F = require "tern.nn.functional"

local Dropout = Module:extend("Dropout")

function Dropout:init(p)
  p = p or 0.5
  if type(p) ~= "number" or p < 0 or p > 1 then
    error("Dropout: p must be a number in [0, 1], got " .. tostring(p), 3)
  end
  self.p = p
end

function Dropout:forward(x) return F.dropout(x, self.p, self.training) end

function Dropout:extra_repr() return string.format("p=%g", self.p) end

return Dropout
