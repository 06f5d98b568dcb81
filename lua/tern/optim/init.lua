-- tern.optim: optimizers over the flat parameter buffers, gradient clipping, LR policies.
--
--   local opt = tn.optim.Adam(model, {lr = 1e-3})        -- or model:parameters(), or groups
--   for _, batch in ipairs(batches) do
--     opt:zero_grad()
--     loss(model, batch):backward()
--     tn.optim.clip_grad_norm(opt, 5.0)
--     opt:step()
--   end
--
-- SGD, Adam, AdamW, NovoGrad, LARC (a wrapper), the Optimizer base (optimizer.lua: groups,
-- FP32 masters of f16/bf16 parameters, unscale_, iter_size, state_dict), clip_grad_norm, and
-- tn.optim.lr (learning-rate policies, loaded on first use).
local Optimizer = require "tern.optim.optimizer"
local adam = require "tern.optim.adam"

local M = {
  Optimizer = Optimizer,
  SGD = require "tern.optim.sgd",
  Adam = adam.Adam,
  AdamW = adam.AdamW,
  NovoGrad = require "tern.optim.novograd",
  LARC = require "tern.optim.larc",
}

-- tn.optim.clip_grad_norm(params_or_optimizer, max_norm) -> total norm (a number).
-- The global L2 norm of the gradients (FP32 accumulation, in C) of a list of tensors, a module
-- or an optimizer; when it exceeds max_norm every gradient is multiplied by
-- max_norm / (norm + 1e-6) in place (torch.nn.utils.clip_grad_norm_). With an optimizer it
-- clips what the next update uses: the FP32 master gradients of f16/bf16 parameters (unscaled
-- when unscale_ ran), the accumulated gradient divided by iter_size. A non-finite norm (inf or
-- NaN gradients) is returned as it is and the gradients are left untouched (torch would
-- multiply them by NaN); a loss scaler skips such a step.
function M.clip_grad_norm(x, max_norm)
  local n = Optimizer.clip_grad_norm_of(x, max_norm, 2)
  return n
end

-- tn.optim.lr is required on first use.
return setmetatable(M, {
  __index = function(t, k)
    if k == "lr" then
      local lr = require "tern.optim.lr"
      rawset(t, "lr", lr)
      return lr
    end
  end,
})
