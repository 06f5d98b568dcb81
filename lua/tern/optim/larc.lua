-- tn.optim.LARC(optimizer, {eta = 0.02, mode = "clip", eps = 1e-8}): layer-wise adaptive rate
-- control wrapped around any tern optimizer, as NVIDIA apex's apex.parallel.LARC (eta is apex's
-- trust_coefficient; mode "clip" is apex's clip=True, "scale" clip=False). At each applied
-- step, per parameter tensor, with w the (master) weights, g = grad / iter_size and wd the
-- group's weight_decay:
--   when ||w|| != 0 and ||g|| != 0:
--     trust = eta * ||w|| / (||g|| + wd * ||w|| + eps)
--     mode "clip":  trust = min(trust / lr, 1)     (so that lr * trust = min(lr_larc, lr))
--     g = (g + wd * w) * trust
--   else g stays g (apex then drops the weight decay of that tensor too)
-- and the wrapped optimizer steps on g with its weight decay switched off (apex sets the
-- group's weight_decay to 0 around the inner step). Norms and rescale are one C call
-- (tn_optim_larc) per parameter group and dtype.
--
-- The wrapper shares the optimizer's param_groups (LR policies set param_groups[i].lr on it)
-- and forwards zero_grad, unscale_, clip_grad_norm, will_step, skip_step, grad_buffers and
-- params. state_dict() = {type = "LARC", eta =, mode =, eps =, optimizer = <the wrapped
-- optimizer's state_dict>}.
local lib = require "tern.lib"
local Optimizer = require "tern.optim.optimizer"

local C, check = lib.C, lib.check
local fmt = string.format

local LARC = { __name = "LARC", _is_optimizer = true }
LARC.__index = LARC

local MODES = { clip = true, scale = true }
local huge = math.huge

local function check_opts(eta, mode, eps)
  if type(eta) ~= "number" or not (eta > 0 and eta < huge) then
    return fmt("eta must be a positive number, got %s", tostring(eta))
  end
  if not MODES[mode] then return fmt("mode must be \"clip\" or \"scale\", got %s", tostring(mode)) end
  if type(eps) ~= "number" or not (eps >= 0 and eps < huge) then
    return fmt("eps must be a non-negative number, got %s", tostring(eps))
  end
end

function LARC.new(optim, opts)
  if not Optimizer.is_optimizer(optim) or getmetatable(optim) == LARC then
    error(fmt("tn.optim.LARC: expected a tern optimizer (SGD, Adam, AdamW, NovoGrad) to wrap, got %s",
      getmetatable(optim) == LARC and "a LARC" or type(optim)), 3)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("tn.optim.LARC: options must be a table, got " .. type(opts), 3) end
  for k in pairs(opts) do
    if k ~= "eta" and k ~= "mode" and k ~= "eps" then
      error(fmt("tn.optim.LARC: unknown option '%s' (options: eta, mode, eps)", tostring(k)), 3)
    end
  end
  local eta = opts.eta == nil and 0.02 or opts.eta
  local mode = opts.mode == nil and "clip" or opts.mode
  local eps = opts.eps == nil and 1e-8 or opts.eps
  local msg = check_opts(eta, mode, eps)
  if msg then error("tn.optim.LARC: " .. msg, 3) end
  -- the wrapped optimizer now also keeps one list entry per parameter tensor
  optim._per_param_lists = true
  for _, b in ipairs(optim._buckets) do optim:_layout(b, 4) end
  optim:_global_lists()
  return setmetatable({ optim = optim, eta = eta, mode = mode, eps = eps, param_groups = optim.param_groups,
    iter_size = optim.iter_size }, LARC)
end

setmetatable(LARC, {
  __call = function(_, optim, opts)
    local o = LARC.new(optim, opts)
    return o -- no tail call: new raises at level 3
  end,
  __tostring = function() return "tn.optim.LARC" end,
})

-- Applies the update on every iter_size-th call, as the wrapped optimizer; true when it did.
function LARC:step()
  local o = self.optim
  if not o:_tick() then return false end
  o:_ensure_layout(3)
  o:_check_groups(3)
  o:_sync_masters(3)
  o:_f32_grads()
  local clip = self.mode == "clip" and 1 or 0
  for _, b in ipairs(o._buckets) do
    local g = o.param_groups[b.group]
    local pp = b.pp
    local grads = (b.half and o._grads ~= nil) and pp.wg or pp.g
    check(C.tn_optim_larc(pp.w.n, grads.arr, pp.w.arr, self.eta, self.eps, g.weight_decay or 0, g.lr, clip,
      1 / o.iter_size), 2)
  end
  o:_update(1, true, 3)
  o._grads = nil
  return true
end

function LARC:zero_grad() return self.optim:zero_grad() end
function LARC:unscale_(inv_scale) return self.optim:unscale_(inv_scale) end
function LARC:clip_grad_norm(max_norm) return self.optim:clip_grad_norm(max_norm) end
function LARC:will_step() return self.optim:will_step() end
function LARC:skip_step() return self.optim:skip_step() end
function LARC:grad_buffers() return self.optim:grad_buffers() end
function LARC:params() return self.optim:params() end

function LARC:state_dict()
  return { type = "LARC", eta = self.eta, mode = self.mode, eps = self.eps, optimizer = self.optim:state_dict() }
end

function LARC:load_state_dict(sd)
  if type(sd) ~= "table" then
    error("tn.optim.LARC: load_state_dict: expected a table from state_dict(), got " .. type(sd), 2)
  end
  if sd.type ~= "LARC" then
    error(fmt("tn.optim.LARC: load_state_dict: the state is of a %s optimizer, this is LARC", tostring(sd.type)), 2)
  end
  local msg = check_opts(sd.eta, sd.mode, sd.eps)
  if msg then error("tn.optim.LARC: load_state_dict: " .. msg, 2) end
  self.optim:load_state_dict(sd.optimizer, 3)
  self.eta, self.mode, self.eps = sd.eta, sd.mode, sd.eps
  self.iter_size = self.optim.iter_size
end

function LARC:repr()
  return fmt("LARC (eta = %g, mode = %s, eps = %g) of\n%s", self.eta, self.mode, self.eps, self.optim:repr())
end
LARC.__tostring = LARC.repr

return LARC
