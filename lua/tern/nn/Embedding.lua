-- tern.nn.Embedding(num_embeddings, embedding_dim, {padding_idx=nil, dtype="f32"}): rows of a
-- (num, dim) weight at integer indices (0-based values, as PyTorch). Init N(0, 1); the
-- padding_idx row starts at zero and receives no gradient.
local Module = require "tern.nn.Module"
local Tensor = require "tern.tensor"
local F = require "tern.nn.functional"

local Embedding = Module:extend("Embedding")

function Embedding:init(num, dim, opts)
  opts = opts or {}
  Module.check_int("Embedding", "num_embeddings", num, 1)
  Module.check_int("Embedding", "embedding_dim", dim, 1)
  local pad = opts.padding_idx
  if pad ~= nil then
    if pad < 0 then pad = num + pad end
    if pad < 0 or pad >= num then
      error(string.format("Embedding: padding_idx %d is out of range for %d embeddings", opts.padding_idx, num), 3)
    end
  end
  self.num_embeddings, self.embedding_dim, self.padding_idx = num, dim, pad
  local w = Tensor.randn({ num, dim }, { dtype = opts.dtype or "f32" })
  if pad then w:select(1, pad + 1):zero_() end
  self:register_parameter("weight", w)
end

function Embedding:forward(indices)
  return F.embedding(self.weight, indices, self.padding_idx)
end

function Embedding:extra_repr()
  return string.format("%d, %d%s", self.num_embeddings, self.embedding_dim,
    self.padding_idx and (", padding_idx=" .. self.padding_idx) or "")
end

return Embedding
