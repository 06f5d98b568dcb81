-- tn.optim.NovoGrad(params, {lr, betas = {0.95, 0.98}, eps = 1e-8, weight_decay = 0,
-- grad_averaging = false, iter_size = 1}): NovoGrad (Ginsburg et al. 2019, "Stochastic
-- Gradient Methods with Layer-wise Adaptive Moments"; OpenSeq2Seq's NovoGrad) with the
-- second moment per layer, i.e. per parameter tensor, as a running average:
--   v = ||g||^2 at the first step, else beta2 * v + (1 - beta2) * ||g||^2   (one number per tensor)
--   m = beta1 * m + (g / (sqrt(v) + eps) + weight_decay * p) [* (1 - beta1) with grad_averaging]
--   p = p - lr * m
-- with g = grad / iter_size (eps outside the square root, as the paper writes it). The norms and
-- the update are one C call (tn_optim_novograd) per parameter group and dtype, over one entry
-- per tensor. See optimizer.lua for groups, mixed precision, iter_size and state_dict.
local lib = require "tern.lib"
local Optimizer = require "tern.optim.optimizer"

local C, check = lib.C, lib.check
local V = Optimizer.validators

local NovoGrad = Optimizer.extend("NovoGrad", {
  options = {
    { "lr", nil, V.nonneg },
    { "betas", { 0.95, 0.98 }, V.betas },
    { "eps", 1e-8, V.nonneg },
    { "weight_decay", 0, V.nonneg },
    { "grad_averaging", false, V.boolean },
  },
  state = { "exp_avg" },
  per_tensor_state = { "grad_ema" },
  per_param = true,
})

function NovoGrad._kernel(_, b, lists, grads, h, level)
  local model = b.half and lists.model.arr or nil
  check(C.tn_optim_novograd(lists.w.n, lists.w.arr, grads.arr, lists.exp_avg.arr, b.state.grad_ema._c, model, h),
    level)
end

return NovoGrad
