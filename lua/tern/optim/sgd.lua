-- tn.optim.SGD(params, {lr, momentum = 0, dampening = 0, nesterov = false, weight_decay = 0,
-- iter_size = 1}): torch.optim.SGD of PyTorch 1.13, operation by operation (per element,
-- g = grad / iter_size):
--   d = g + weight_decay * p
--   buf = d at the first step, else momentum * buf + (1 - dampening) * d   (momentum != 0)
--   d = d + momentum * buf (nesterov) or buf
--   p = p - lr * d
-- One fused C call (tn_optim_sgd) per parameter group and dtype. See optimizer.lua for groups,
-- mixed precision, iter_size and state_dict.
local lib = require "tern.lib"
local Optimizer = require "tern.optim.optimizer"

local C, check = lib.C, lib.check
local V = Optimizer.validators

local SGD = Optimizer.extend("SGD", {
  options = {
    { "lr", nil, V.nonneg },
    { "momentum", 0, V.nonneg },
    { "dampening", 0, V.number },
    { "nesterov", false, V.boolean },
    { "weight_decay", 0, V.nonneg },
  },
  state = { "momentum_buffer" },
  check = function(g)
    if g.nesterov and (g.momentum <= 0 or g.dampening ~= 0) then
      return string.format("nesterov needs momentum > 0 and dampening = 0, got momentum %s, dampening %s",
        tostring(g.momentum), tostring(g.dampening))
    end
  end,
})

function SGD._kernel(_, b, lists, grads, h, level)
  local buf = h.momentum ~= 0 and lists.momentum_buffer.arr or nil
  local model = b.half and lists.model.arr or nil
  check(C.tn_optim_sgd(lists.w.n, lists.w.arr, grads.arr, buf, model, h), level)
end

return SGD
