-- tern.optim.lr: learning-rate policies (OpenSeq2Seq's open_seq2seq/optimizers/lr_policies.py,
-- which wraps tf.train.*_decay). A policy maps the 0-based global step s to a learning rate:
--
--   local policy = tn.optim.lr.poly_decay{lr = 1e-3, decay_steps = 10000, power = 2}
--   policy:value(s)      -- the learning rate at step s (pure; no state)
--   policy:step(opt)     -- sets every param group's lr to value(policy.global_step) * scale,
--                        -- then global_step += 1; returns the lr it set
--   policy:state_dict() / policy:load_state_dict(sd)   -- the position (global_step)
--
-- Formulas (s = step, lr = the `lr` option, b = begin_decay_at, D = decay_steps):
--   fixed{lr}                          lr
--   piecewise_constant{boundaries, values} or {lr, boundaries, decay_rates [, steps_per_epoch]}
--                                      values[1] for s <= boundaries[1], values[i+1] for
--                                      boundaries[i] < s <= boundaries[i+1], values[n+1] after
--                                      (tf.train.piecewise_constant: a boundary step still gets
--                                      the earlier value); with decay_rates, values =
--                                      {lr, lr*decay_rates[1], ...}; with steps_per_epoch the
--                                      boundaries are epochs (boundary * steps_per_epoch).
--   exp_decay{lr, decay_steps, decay_rate, staircase=false, begin_decay_at=0, min_lr=0}
--                                      max(min_lr, lr)                              s < b
--                                      max(min_lr, lr * decay_rate^p)               s >= b
--                                      p = (s - b) / D, floored when staircase
--   poly_decay{lr, decay_steps, power=1, begin_decay_at=0, min_lr=0}
--                                      lr                                           s < b
--                                      (lr - min_lr) * (1 - min(s - b, D) / D)^power + min_lr
--   cosine_decay{lr, decay_steps, begin_decay_at=0, min_lr=0}
--                                      lr                                           s < b
--                                      min_lr + (lr - min_lr) * (1 + cos(pi * min(s - b, D) / D)) / 2
--   noam{d_model, warmup_steps, lr=1, scale=1, max_lr=nil}   (OpenSeq2Seq transformer_policy)
--                                      lr * scale * d_model^-0.5 *
--                                        min((s + 1) * warmup_steps^-1.5, (s + 1)^-0.5),
--                                      capped at max_lr when given
--
-- Linear warm-up: every policy but noam (whose warmup_steps is part of its formula) takes
-- warmup_steps = W (default 0). As OpenSeq2Seq's poly_decay defines it: for s < W the value is
-- policy(s) * s / W (so step 0 has lr 0; min_lr does not apply during the ramp), and decay
-- begins at max(W, begin_decay_at), so the ramp ends at lr and the decay follows it.
--
-- decay_steps is the length of the decay (counted from begin_decay_at), as in OpenSeq2Seq's
-- upstream poly_decay / exp_decay (tf.train.polynomial_decay with cycle=false: the value stays
-- at min_lr after b + D). cosine_decay is not in upstream OpenSeq2Seq: it follows
-- tf.train.cosine_decay with the same begin_decay_at / decay_steps / warm-up conventions and
-- min_lr as an absolute floor (tf's alpha = min_lr / lr).
--
-- Param groups: step(opt) writes opt.param_groups[i].lr = value * (opt.param_groups[i].lr_scale
-- or 1), so a group may carry a constant lr_scale (e.g. 0.1 for a pre-trained encoder); the
-- policy's lr is the base rate. state_dict() = {policy = <name>, global_step = <int>} (a plain
-- table for checkpoints); load_state_dict checks the name and restores the position; the
-- schedule itself comes from the constructor options (the config), so a resumed run may extend
-- decay_steps.
local fmt = string.format
local floor, huge = math.floor, math.huge

local M = {}

local Policy = {}
Policy.__index = Policy

local function is_int(v) return type(v) == "number" and v == floor(v) and v > -huge and v < huge end

-- Option checks raise with level 0 (no position); the public constructors re-raise the message
-- at their caller's line (see `public` below).
local function bad(name, opt, expected, got)
  error(fmt("tn.optim.lr.%s: %s must be %s, got %s", name, opt, expected, tostring(got)), 0)
end

-- o[key], else default; one of them must be given (what names the kind of value).
local function given(name, o, key, default, what)
  local v = o[key]
  if v == nil then v = default end
  if v == nil then bad(name, key, "given (" .. what .. ")", nil) end
  return v
end

local function num(name, o, key, default, lo, lo_open)
  local v = given(name, o, key, default, "a number")
  if type(v) ~= "number" or v ~= v or v == huge or v == -huge then
    bad(name, key, "a finite number", v)
  end
  if lo and (v < lo or (lo_open and v == lo)) then
    bad(name, key, (lo_open and "> " or ">= ") .. lo, v)
  end
  return v
end

local function int(name, o, key, default, lo)
  local v = given(name, o, key, default, "an integer")
  if not is_int(v) or v < lo then
    bad(name, key, lo > 0 and "a positive integer" or "a non-negative integer", v)
  end
  return v
end

local function bool(name, o, key, default)
  local v = o[key]
  if v == nil then return default end
  if type(v) ~= "boolean" then bad(name, key, "a boolean", v) end
  return v
end

-- Options of each policy (anything else is rejected: a typo must not silently do nothing).
local KNOWN = {
  fixed = { lr = 1, warmup_steps = 1 },
  piecewise_constant = { lr = 1, boundaries = 1, values = 1, decay_rates = 1, steps_per_epoch = 1,
    warmup_steps = 1 },
  exp_decay = { lr = 1, decay_steps = 1, decay_rate = 1, staircase = 1, use_staircase_decay = 1,
    begin_decay_at = 1, min_lr = 1, warmup_steps = 1 },
  poly_decay = { lr = 1, decay_steps = 1, power = 1, begin_decay_at = 1, min_lr = 1,
    warmup_steps = 1 },
  cosine_decay = { lr = 1, decay_steps = 1, begin_decay_at = 1, min_lr = 1, warmup_steps = 1 },
  noam = { lr = 1, d_model = 1, warmup_steps = 1, scale = 1, coefficient = 1, max_lr = 1 },
}

local function check_opts(name, o)
  if type(o) ~= "table" then
    error(fmt("tn.optim.lr.%s: expected an options table, got %s", name, type(o)), 0)
  end
  for k in pairs(o) do
    if not KNOWN[name][k] then
      local names = {}
      for n in pairs(KNOWN[name]) do names[#names + 1] = n end
      table.sort(names)
      error(fmt("tn.optim.lr.%s: unknown option '%s' (options: %s)", name, tostring(k),
        table.concat(names, ", ")), 0)
    end
  end
end

-- p: the checked options (policy.options); fn: the value at a step.
local function new(name, p, fn)
  return setmetatable({ name = name, global_step = 0, _fn = fn, options = p }, Policy)
end

-- Common decay options: lr, min_lr <= lr, warmup_steps, begin_decay_at.
local function decay_common(name, o)
  local p = {}
  p.lr = num(name, o, "lr", nil, 0)
  p.min_lr = num(name, o, "min_lr", 0, 0)
  if p.min_lr > p.lr then bad(name, "min_lr", fmt("<= lr (%g)", p.lr), p.min_lr) end
  p.warmup = int(name, o, "warmup_steps", 0, 0)
  p.begin = math.max(int(name, o, "begin_decay_at", 0, 0), p.warmup)
  return p
end

-- The options of exp_decay, poly_decay and cosine_decay: the common ones and decay_steps.
local function decay_opts(name, o)
  check_opts(name, o)
  local p = decay_common(name, o)
  p.decay_steps = int(name, o, "decay_steps", nil, 1)
  return p
end

-- value with warm-up applied: base(s) * s / W for s < W.
local function warm(p, s, v)
  if s < p.warmup then return v * s / p.warmup end
  return v
end

-- poly_decay and cosine_decay: the warmed-up lr before begin_decay_at, then shape(t) of the
-- steps t since then, capped at decay_steps (the value stays where the decay ends).
local function decay_after_begin(p, shape)
  return function(s)
    if s < p.begin then return warm(p, s, p.lr) end
    return shape(math.min(s - p.begin, p.decay_steps))
  end
end

local function fixed(o)
  check_opts("fixed", o)
  local p = { lr = num("fixed", o, "lr", nil, 0), warmup = int("fixed", o, "warmup_steps", 0, 0) }
  return new("fixed", p, function(s) return warm(p, s, p.lr) end)
end

local function piecewise_constant(o)
  local name = "piecewise_constant"
  check_opts(name, o)
  local b = o.boundaries
  if type(b) ~= "table" or #b == 0 then bad(name, "boundaries", "a non-empty list of steps", b) end
  local spe = o.steps_per_epoch
  if spe ~= nil and (not is_int(spe) or spe < 1) then
    bad(name, "steps_per_epoch", "a positive integer", spe)
  end
  local bounds = {}
  for i = 1, #b do
    local v = b[i]
    if type(v) ~= "number" or v ~= v or v < 0 or v == huge then
      bad(name, fmt("boundaries[%d]", i), "a non-negative number", v)
    end
    if i > 1 and v <= b[i - 1] then
      bad(name, "boundaries", fmt("strictly increasing (boundaries[%d] = %g <= boundaries[%d] = %g)",
        i, v, i - 1, b[i - 1]), "a non-increasing list")
    end
    bounds[i] = spe and v * spe or v
  end
  local values = {}
  if o.values ~= nil and o.decay_rates ~= nil then
    error("tn.optim.lr.piecewise_constant: give either values or lr + decay_rates, not both", 0)
  elseif o.values ~= nil then
    if o.lr ~= nil then
      error("tn.optim.lr.piecewise_constant: lr is not used with values (values[1] is the first lr)", 0)
    end
    local v = o.values
    if type(v) ~= "table" or #v ~= #b + 1 then
      bad(name, "values", fmt("a list of #boundaries + 1 = %d numbers", #b + 1),
        type(v) == "table" and fmt("%d values", #v) or v)
    end
    for i = 1, #v do values[i] = num(name, v, i, nil, 0) end
  elseif o.decay_rates ~= nil then
    local r = o.decay_rates
    if type(r) ~= "table" or #r ~= #b then
      bad(name, "decay_rates", fmt("a list of #boundaries = %d numbers", #b),
        type(r) == "table" and fmt("%d rates", #r) or r)
    end
    local lr = num(name, o, "lr", nil, 0)
    values[1] = lr
    for i = 1, #r do values[i + 1] = lr * num(name, r, i, nil, 0) end
  else
    error("tn.optim.lr.piecewise_constant: values (one per interval) or lr + decay_rates is required", 0)
  end
  local p = { boundaries = bounds, values = values, warmup = int(name, o, "warmup_steps", 0, 0) }
  return new(name, p, function(s)
    local i = 1
    while i <= #bounds and s > bounds[i] do i = i + 1 end
    return warm(p, s, values[i])
  end)
end

local function exp_decay(o)
  local name = "exp_decay"
  local p = decay_opts(name, o)
  p.decay_rate = num(name, o, "decay_rate", nil, 0, true)
  if o.staircase ~= nil and o.use_staircase_decay ~= nil then
    error("tn.optim.lr.exp_decay: give staircase or use_staircase_decay (its OpenSeq2Seq name), not both", 0)
  end
  p.staircase = bool(name, o, o.use_staircase_decay ~= nil and "use_staircase_decay" or "staircase", false)
  return new(name, p, function(s)
    local v = p.lr
    if s >= p.begin then
      local e = (s - p.begin) / p.decay_steps
      if p.staircase then e = floor(e) end
      v = p.lr * p.decay_rate ^ e
    end
    if s < p.warmup then return warm(p, s, v) end
    return math.max(p.min_lr, v)
  end)
end

local function poly_decay(o)
  local p = decay_opts("poly_decay", o)
  p.power = num("poly_decay", o, "power", 1, 0, true)
  return new("poly_decay", p, decay_after_begin(p, function(t)
    return (p.lr - p.min_lr) * (1 - t / p.decay_steps) ^ p.power + p.min_lr
  end))
end

local function cosine_decay(o)
  local p = decay_opts("cosine_decay", o)
  return new("cosine_decay", p, decay_after_begin(p, function(t)
    return p.min_lr + (p.lr - p.min_lr) * 0.5 * (1 + math.cos(math.pi * t / p.decay_steps))
  end))
end

local function noam(o)
  local name = "noam"
  check_opts(name, o)
  if o.scale ~= nil and o.coefficient ~= nil then
    error("tn.optim.lr.noam: give scale or coefficient (its OpenSeq2Seq name), not both", 0)
  end
  local p = {
    lr = num(name, o, "lr", 1, 0),
    d_model = int(name, o, "d_model", nil, 1),
    warmup_steps = int(name, o, "warmup_steps", nil, 1),
    scale = num(name, o, o.coefficient ~= nil and "coefficient" or "scale", 1, 0, true),
  }
  if o.max_lr ~= nil then p.max_lr = num(name, o, "max_lr", nil, 0, true) end
  local c = p.lr * p.scale * p.d_model ^ -0.5
  local w = p.warmup_steps ^ -1.5
  return new(name, p, function(s)
    local v = c * math.min((s + 1) * w, (s + 1) ^ -0.5)
    if p.max_lr and v > p.max_lr then v = p.max_lr end
    return v
  end)
end

local public = require("tern.lib").at_caller
M.fixed = public(fixed)
M.piecewise_constant = public(piecewise_constant)
M.exp_decay = public(exp_decay)
M.poly_decay = public(poly_decay)
M.cosine_decay = public(cosine_decay)
M.noam = public(noam)

-- methods ---------------------------------------------------------------------------------------

function Policy:value(s)
  if not is_int(s) or s < 0 then
    error(fmt("tn.optim.lr.%s:value: step must be a non-negative integer, got %s", self.name,
      tostring(s)), 2)
  end
  return self._fn(s)
end

function Policy:step(opt)
  local groups = type(opt) == "table" and opt.param_groups
  if type(groups) ~= "table" then
    error(fmt("tn.optim.lr.%s:step: expected an optimizer with param_groups, got %s", self.name,
      type(opt)), 2)
  end
  local v = self._fn(self.global_step)
  for i, g in ipairs(groups) do
    local scale = g.lr_scale
    if scale == nil then scale = 1 end
    if type(scale) ~= "number" or scale < 0 then
      error(fmt("tn.optim.lr.%s:step: param_groups[%d].lr_scale must be a non-negative number, got %s",
        self.name, i, tostring(scale)), 2)
    end
    g.lr = v * scale
  end
  self.global_step = self.global_step + 1
  return v
end

function Policy:state_dict()
  return { policy = self.name, global_step = self.global_step }
end

function Policy:load_state_dict(sd)
  if type(sd) ~= "table" then
    error(fmt("tn.optim.lr.%s:load_state_dict: expected a table, got %s", self.name, type(sd)), 2)
  end
  if sd.policy ~= self.name then
    error(fmt("tn.optim.lr.%s:load_state_dict: state is for policy '%s', not '%s'", self.name,
      tostring(sd.policy), self.name), 2)
  end
  local s = tonumber(sd.global_step)
  if not is_int(s) or s < 0 then
    error(fmt("tn.optim.lr.%s:load_state_dict: global_step must be a non-negative integer, got %s",
      self.name, tostring(sd.global_step)), 2)
  end
  self.global_step = s
  return self
end

function Policy:__tostring()
  return fmt("tn.optim.lr.%s (global_step %d)", self.name, self.global_step)
end

M.Policy = Policy
return M
