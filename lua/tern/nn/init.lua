-- tern.nn: modules (layers with parameters) and their functional forms (tn.nn.F).
local acts = require "tern.nn.activations"

local nn = {
  Module = require "tern.nn.Module",
  F = require "tern.nn.functional",
  Linear = require "tern.nn.Linear",
  Embedding = require "tern.nn.Embedding",
  LayerNorm = require "tern.nn.LayerNorm",
  Dropout = require "tern.nn.Dropout",
  Sequential = require "tern.nn.Sequential",
  ModuleList = require "tern.nn.ModuleList",
  LSTM = require "tern.nn.LSTM",
  SRU = require "tern.nn.SRU",
  Joiner = require "tern.nn.Joiner",
}
nn.SRUCell = nn.SRU.Cell
for name, cls in pairs(acts) do nn[name] = cls end

return nn
