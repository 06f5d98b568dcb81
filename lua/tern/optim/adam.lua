-- tn.optim.Adam(params, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8, weight_decay = 0,
-- iter_size = 1}) and tn.optim.AdamW(params, {..., weight_decay = 1e-2}): torch.optim.Adam and
-- AdamW of PyTorch 1.13 (amsgrad off), operation by operation (per element, g = grad /
-- iter_size, t = the step number from 1):
--   Adam:  g = g + weight_decay * p              AdamW: p = p * (1 - lr * weight_decay)
--   m = beta1 * m + (1 - beta1) * g
--   v = beta2 * v + (1 - beta2) * g * g
--   p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
-- One fused C call (tn_optim_adam) per parameter group and dtype. See optimizer.lua for groups,
-- mixed precision, iter_size and state_dict.
local lib = require "tern.lib"
local Optimizer = require "tern.optim.optimizer"

local C, check = lib.C, lib.check
local V = Optimizer.validators

local function spec(weight_decay, decoupled)
  return {
    options = {
      { "lr", 1e-3, V.nonneg },
      { "betas", { 0.9, 0.999 }, V.betas },
      { "eps", 1e-8, V.nonneg },
      { "weight_decay", weight_decay, V.nonneg },
    },
    state = { "exp_avg", "exp_avg_sq" },
    decoupled = decoupled,
  }
end

local function kernel(_, b, lists, grads, h, level)
  local model = b.half and lists.model.arr or nil
  check(C.tn_optim_adam(lists.w.n, lists.w.arr, grads.arr, lists.exp_avg.arr, lists.exp_avg_sq.arr, model, h),
    level)
end

local Adam = Optimizer.extend("Adam", spec(0, false))
Adam._kernel = kernel
local AdamW = Optimizer.extend("AdamW", spec(1e-2, true))
AdamW._kernel = kernel

return { Adam = Adam, AdamW = AdamW }
