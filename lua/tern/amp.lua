-- tern.amp: loss scalers for mixed-precision training (Micikevicius et al. 2018; OpenSeq2Seq's
-- open_seq2seq/optimizers/automatic_loss_scaler.py; PyTorch's torch.cuda.amp.GradScaler).
--
--   local scaler = tn.amp.backoff()              -- or tn.amp.static{scale = 128}, tn.amp.logmax()
--   local loss = criterion(model(x), y)          -- an FP32 scalar
--   scaler:scale(loss):backward()                -- gradients of loss * scale
--   scaler:unscale_(opt)                         -- optional: grads /= scale now (e.g. to clip)
--   tn.optim.clip_grad_norm(opt, 5)              -- sees unscaled gradients
--   local applied = scaler:step(opt)             -- false: inf/NaN found, step skipped
--   opt:zero_grad()
--
-- The optimizer contract: opt:unscale_(inv_scale) multiplies every gradient by inv_scale (into
-- FP32) in one fused pass and returns found_inf (boolean: some gradient is inf or NaN) and amax
-- (the largest finite |g| after unscaling); opt:step() applies the update (to the FP32
-- masters of f16/bf16 parameters); opt:skip_step() (optional) ends a step without an update; opt:will_step()
-- (optional) is false on the micro-batches of a gradient-accumulation window (iter_size).
-- scaler:step(opt) calls unscale_ unless unscale_(opt) was called since the last step, calls
-- opt:skip_step() instead of opt:step() when found_inf (parameters and optimizer state stay
-- untouched), then updates the scale from (found_inf, amax) and returns whether the step was
-- applied. On an accumulation micro-batch (will_step() false) it only calls opt:step(), which
-- counts the micro-batch, and returns false: the scale stays fixed over the window. One
-- optimizer per scaler step; a custom loop (e.g. one that all-reduces found_inf across ranks)
-- can call scaler:update(found_inf, amax) itself instead of scaler:step.
--
-- Scalers (all scales are clamped to [scale_min, scale_max]):
--   static{scale}      a constant scale; overflowing steps are still skipped.
--   backoff{init_scale=2^16, scale_min=1, scale_max=2^24, growth_factor=2, backoff_factor=0.5,
--           growth_interval=2000}
--     GradScaler's rule: on overflow scale *= backoff_factor and the count of clean steps
--     restarts; after growth_interval consecutive clean steps scale *= growth_factor.
--     OpenSeq2Seq's BackoffScaler is the same rule with step_factor (growth_factor = f,
--     backoff_factor = 1/f) and step_window (= growth_interval), starting at scale_max:
--     backoff{step_factor = 2, step_window = 2000} gives it (init_scale defaults to scale_max
--     when step_factor or step_window is given).
--   logmax{scale_min=1, scale_max=2^24, log_max=16, beta1=0.99, beta2=0.999,
--          overflow_std_dev=3.09, init_scale=1 (clamped into the range)}
--     OpenSeq2Seq's LogMaxScaler. Each step, x = log2(amax) of the unscaled gradients, or
--     x = 2^log_max when found_inf (as upstream: a huge log value, so one overflow drives the
--     scale to scale_min and it recovers as the averages forget it, ~1/(1-beta1) steps). Then
--       mu    = EMA_beta1(x) / (1 - beta1^t)                       (fast mean, bias-corrected)
--       m, q  = EMA_beta2(x) / (1 - beta2^t), EMA_beta2(x^2) / (1 - beta2^t)   (slow moments)
--       sigma = sqrt(max(q - m^2, 0))
--       scale = clamp(2^(log_max - (mu + overflow_std_dev * sigma)), scale_min, scale_max)
--     i.e. the scale puts the cutoff (mean + 3.09 sigma, the 99.9th percentile of a normal
--     log2 max-gradient) at 2^log_max. (Upstream writes the 16 in the last line as a literal;
--     it equals the default log_max.) A step whose gradients are all zero (amax = 0, log2 =
--     -inf) leaves the statistics and the scale unchanged: upstream would turn them into NaN.
--
-- scaler:get_scale(), scaler.skipped (steps skipped so far), scaler.steps (scaler steps so
-- far), scaler:state_dict() / load_state_dict(sd): a plain table of numbers and strings.
--
-- Devices: the scaler holds no tensors, so it serves a model on any device unchanged (and its
-- state saves and restores as it is). scale() multiplies on the loss's device; found_inf and
-- amax reach it as host values from opt:unscale_ (tn_amp_unscale_check over the gradients on
-- their device): the one device-to-host read of a mixed-precision step.
local Tensor = require "tern.tensor"

local fmt = string.format
local huge, floor = math.huge, math.floor

local M = {}

local Scaler = {}
Scaler.__index = Scaler

-- Option checks raise at level 0; constructors re-raise at their caller's line (see public).
local function bad(name, key, expected, got)
  error(fmt("tn.amp.%s: %s must be %s, got %s", name, key, expected, tostring(got)), 0)
end

local function finite(v) return type(v) == "number" and v == v and v > -huge and v < huge end

local function positive(name, o, key, default)
  local v = o[key]
  if v == nil then v = default end
  if not finite(v) or v <= 0 then bad(name, key, "a finite number > 0", v) end
  return v
end

local function check_opts(name, o, known)
  if o == nil then return {} end
  if type(o) ~= "table" then
    error(fmt("tn.amp.%s: expected an options table, got %s", name, type(o)), 0)
  end
  for k in pairs(o) do
    if not known[k] then
      local names = {}
      for n in pairs(known) do names[#names + 1] = n end
      table.sort(names)
      error(fmt("tn.amp.%s: unknown option '%s' (options: %s)", name, tostring(k),
        table.concat(names, ", ")), 0)
    end
  end
  return o
end

local function range(name, o, p)
  p.scale_min = positive(name, o, "scale_min", 1)
  p.scale_max = positive(name, o, "scale_max", 2 ^ 24)
  if p.scale_max < p.scale_min then
    bad(name, "scale_max", fmt(">= scale_min (%g)", p.scale_min), p.scale_max)
  end
end

local function check_init(name, p)
  if p._scale < p.scale_min or p._scale > p.scale_max then
    bad(name, "init_scale", fmt("in [scale_min, scale_max] = [%g, %g]", p.scale_min, p.scale_max),
      p._scale)
  end
end

local function clamp(self, s)
  if s < self.scale_min then return self.scale_min end
  if s > self.scale_max then return self.scale_max end
  return s
end

local function new(kind, fields)
  fields.kind = kind
  fields.skipped = 0
  fields.steps = 0
  return setmetatable(fields, Scaler)
end

-- constructors -----------------------------------------------------------------------------------

local function static(o)
  if type(o) ~= "table" then
    error(fmt("tn.amp.static: expected an options table {scale = ...}, got %s", type(o)), 0)
  end
  check_opts("static", o, { scale = true })
  if o.scale == nil then bad("static", "scale", "given (a finite number > 0)", nil) end
  local s = positive("static", o, "scale")
  return new("static", { _scale = s, scale_min = s, scale_max = s })
end

local BACKOFF = { init_scale = true, scale_min = true, scale_max = true, growth_factor = true,
  backoff_factor = true, growth_interval = true, step_factor = true, step_window = true }

local function backoff(o)
  local name = "backoff"
  o = check_opts(name, o, BACKOFF)
  local p = {}
  range(name, o, p)
  local os2s = o.step_factor ~= nil or o.step_window ~= nil
  if o.step_factor ~= nil then
    if o.growth_factor ~= nil or o.backoff_factor ~= nil then
      error("tn.amp.backoff: give step_factor (OpenSeq2Seq) or growth_factor/backoff_factor, not both", 0)
    end
    local f = positive(name, o, "step_factor")
    if f <= 1 then bad(name, "step_factor", "> 1", f) end
    p.growth_factor, p.backoff_factor = f, 1 / f
  else
    p.growth_factor = positive(name, o, "growth_factor", 2)
    if p.growth_factor <= 1 then bad(name, "growth_factor", "> 1", p.growth_factor) end
    p.backoff_factor = positive(name, o, "backoff_factor", 0.5)
    if p.backoff_factor >= 1 then bad(name, "backoff_factor", "in (0, 1)", p.backoff_factor) end
  end
  local key = "growth_interval"
  if o.step_window ~= nil then
    if o.growth_interval ~= nil then
      error("tn.amp.backoff: give step_window (OpenSeq2Seq) or growth_interval, not both", 0)
    end
    key = "step_window"
  end
  local n = o[key]
  if n == nil then n = 2000 end
  if not finite(n) or n ~= floor(n) or n < 1 then bad(name, key, "a positive integer", n) end
  p.growth_interval = n
  p._scale = positive(name, o, "init_scale", os2s and p.scale_max or 2 ^ 16)
  check_init(name, p)
  p.growth_tracker = 0
  return new(name, p)
end

local LOGMAX = { init_scale = true, scale_min = true, scale_max = true, log_max = true,
  beta1 = true, beta2 = true, overflow_std_dev = true }

local function logmax(o)
  local name = "logmax"
  o = check_opts(name, o, LOGMAX)
  local p = {}
  range(name, o, p)
  p.log_max = o.log_max == nil and 16 or o.log_max
  if not finite(p.log_max) or p.log_max <= 0 or p.log_max > 1000 then
    bad(name, "log_max", "a number in (0, 1000]", p.log_max)
  end
  for _, k in ipairs({ "beta1", "beta2" }) do
    local v = o[k]
    if v == nil then v = k == "beta1" and 0.99 or 0.999 end
    if not finite(v) or v <= 0 or v >= 1 then bad(name, k, "in (0, 1)", v) end
    p[k] = v
  end
  p.overflow_std_dev = o.overflow_std_dev == nil and 3.09 or o.overflow_std_dev
  if not finite(p.overflow_std_dev) or p.overflow_std_dev < 0 then
    bad(name, "overflow_std_dev", "a finite number >= 0", p.overflow_std_dev)
  end
  p._scale = positive(name, o, "init_scale", clamp(p, 1))
  check_init(name, p)
  -- OpenSeq2Seq's variables: EMAs of x, x (slow) and x^2, and beta^t for the bias correction.
  p.x_hat, p.slow_x_hat, p.xsquared_hat = 0, 0, 0
  p.b1_correction, p.b2_correction = 1, 1
  return new(name, p)
end

local public = require("tern.lib").at_caller
M.static = public(static)
M.backoff = public(backoff)
M.logmax = public(logmax)

-- methods ----------------------------------------------------------------------------------------

function Scaler:get_scale() return self._scale end

-- loss * scale, recorded by autograd. The loss must be a floating-point tensor with one
-- element; f16/bf16 losses are promoted to f32 first (a scaled f16 loss overflows at 65504).
function Scaler:scale(loss)
  if not Tensor.is_tensor(loss) then
    error(fmt("tn.amp.%s:scale: expected the loss as a tensor, got %s", self.kind, type(loss)), 2)
  end
  if loss:numel() ~= 1 then
    error(fmt("tn.amp.%s:scale: expected a scalar loss (one element), got shape %s", self.kind,
      loss:shape_string()), 2)
  end
  if not loss:is_floating_point() then
    error(fmt("tn.amp.%s:scale: expected a floating-point loss, got dtype %s", self.kind,
      loss:dtype()), 2)
  end
  local dt = loss:dtype()
  if dt == "f16" or dt == "bf16" then loss = loss:to("f32") end
  return loss * self._scale
end

local function check_opt(self, opt, method, level)
  if type(opt) ~= "table" or type(opt.unscale_) ~= "function" or type(opt.step) ~= "function" then
    error(fmt("tn.amp.%s:%s: expected an optimizer (with unscale_ and step), got %s", self.kind,
      method, type(opt)), level + 1)
  end
end

-- Unscale opt's gradients by 1/scale now (once per step); returns found_inf, amax.
function Scaler:unscale_(opt)
  check_opt(self, opt, "unscale_", 2)
  if self._pending and self._pending.opt == opt then
    error(fmt("tn.amp.%s:unscale_: already called for this optimizer since the last step()",
      self.kind), 2)
  end
  local found_inf, amax = opt:unscale_(1 / self._scale)
  if type(found_inf) ~= "boolean" then
    error(fmt("tn.amp.%s:unscale_: opt:unscale_ must return found_inf (a boolean), got %s",
      self.kind, type(found_inf)), 2)
  end
  self._pending = { opt = opt, found_inf = found_inf, amax = amax }
  return found_inf, amax
end

-- Step opt unless its (unscaled) gradients overflowed, then update the scale. Returns whether
-- the step was applied.
function Scaler:step(opt)
  check_opt(self, opt, "step", 2)
  if type(opt.will_step) == "function" and not opt:will_step() then
    -- a micro-batch of a gradient-accumulation window: the optimizer only counts it; the
    -- gradients keep adding up under the same scale
    if self._pending then
      error(fmt("tn.amp.%s:step: unscale_ was called on a micro-batch that does not apply the update",
        self.kind), 2)
    end
    opt:step()
    return false
  end
  local pend = self._pending
  if pend and pend.opt ~= opt then
    error(fmt("tn.amp.%s:step: unscale_ was called for another optimizer since the last step()",
      self.kind), 2)
  end
  if not pend then
    self:unscale_(opt)
    pend = self._pending
  end
  self._pending = nil
  local applied = false
  if pend.found_inf then
    self.skipped = self.skipped + 1
    if type(opt.skip_step) == "function" then opt:skip_step() end
  else
    opt:step()
    applied = true
  end
  self:update(pend.found_inf, pend.amax)
  return applied
end

-- Update the scale from one step's (found_inf, amax); called by step().
function Scaler:update(found_inf, amax)
  if type(found_inf) ~= "boolean" then
    error(fmt("tn.amp.%s:update: found_inf must be a boolean, got %s", self.kind, type(found_inf)), 2)
  end
  self.steps = self.steps + 1
  local kind = self.kind
  if kind == "backoff" then
    if found_inf then
      self._scale = clamp(self, self._scale * self.backoff_factor)
      self.growth_tracker = 0
    else
      self.growth_tracker = self.growth_tracker + 1
      if self.growth_tracker == self.growth_interval then
        self._scale = clamp(self, self._scale * self.growth_factor)
        self.growth_tracker = 0
      end
    end
  elseif kind == "logmax" then
    if type(amax) ~= "number" then
      error(fmt("tn.amp.logmax:update: amax (max |grad| after unscaling) must be a number, got %s",
        type(amax)), 2)
    end
    local nonfinite = found_inf or amax ~= amax or amax == huge
    if not nonfinite and amax <= 0 then return end -- all-zero gradients: no information
    local x = nonfinite and 2 ^ self.log_max or math.log(amax) / math.log(2)
    local b1, b2 = self.beta1, self.beta2
    self.x_hat = b1 * self.x_hat + (1 - b1) * x
    self.b1_correction = self.b1_correction * b1
    local mu = self.x_hat / (1 - self.b1_correction)
    self.slow_x_hat = b2 * self.slow_x_hat + (1 - b2) * x
    self.xsquared_hat = b2 * self.xsquared_hat + (1 - b2) * x * x
    self.b2_correction = self.b2_correction * b2
    local e_x2 = self.xsquared_hat / (1 - self.b2_correction)
    local slow_mu = self.slow_x_hat / (1 - self.b2_correction)
    local sigma = math.sqrt(math.max(e_x2 - slow_mu * slow_mu, 0))
    local cutoff = mu + self.overflow_std_dev * sigma
    self._scale = clamp(self, 2 ^ (self.log_max - cutoff))
  end
end

local STATE = {
  static = { "scale" },
  backoff = { "scale", "growth_tracker" },
  logmax = { "scale", "x_hat", "slow_x_hat", "xsquared_hat", "b1_correction", "b2_correction" },
}

function Scaler:state_dict()
  local sd = { kind = self.kind, skipped = self.skipped, steps = self.steps }
  for _, k in ipairs(STATE[self.kind]) do sd[k] = self[k == "scale" and "_scale" or k] end
  return sd
end

function Scaler:load_state_dict(sd)
  if type(sd) ~= "table" then
    error(fmt("tn.amp.%s:load_state_dict: expected a table, got %s", self.kind, type(sd)), 2)
  end
  if sd.kind ~= self.kind then
    error(fmt("tn.amp.%s:load_state_dict: state is for a '%s' scaler, not '%s'", self.kind,
      tostring(sd.kind), self.kind), 2)
  end
  local keys = { "skipped", "steps" }
  for _, k in ipairs(STATE[self.kind]) do keys[#keys + 1] = k end
  local vals = {}
  for _, k in ipairs(keys) do
    local v = sd[k]
    if not finite(v) then
      error(fmt("tn.amp.%s:load_state_dict: %s must be a finite number, got %s", self.kind, k,
        tostring(v)), 2)
    end
    vals[k] = v
  end
  if vals.scale <= 0 then
    error(fmt("tn.amp.%s:load_state_dict: scale must be > 0, got %s", self.kind, tostring(vals.scale)), 2)
  end
  for k, v in pairs(vals) do self[k == "scale" and "_scale" or k] = v end
  self._pending = nil
  return self
end

function Scaler:__tostring()
  return fmt("tn.amp.%s (scale %g, %d of %d steps skipped)", self.kind, self._scale, self.skipped,
    self.steps)
end

M.Scaler = Scaler
return M
