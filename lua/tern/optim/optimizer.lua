-- tern.optim.Optimizer: the base of SGD, Adam, AdamW and NovoGrad. It owns the parameter
-- groups, the flat optimizer state, the FP32 master weights of f16/bf16 parameters, gradient
-- accumulation (iter_size) and the mixed-precision hooks; a subclass names its options and
-- state and makes the one C call of its update.
--
-- Layout. The parameters of a group are split into buckets by (dtype, device); a bucket's
-- state (momentum, exp_avg, ..., the masters and their gradients) is one flat tensor per kind.
-- Parameters that lie back to back in one storage, with their gradients back to back too (an
-- nn module's flat buffer), are coalesced into segments, so an update is ONE fused C call per
-- bucket over a handful of segments (one per flat buffer). The segment lists are built once
-- and cached as FFI arrays; step() only checks, with pointer comparisons, that no parameter
-- was re-bound (model:to(), flat_buffers()) and no gradient replaced (p.grad = nil, a new
-- tensor) since, and rebuilds the lists when one was. A parameter without a gradient gets a
-- zero gradient (as flat-buffer parameters always have one).
--
-- Mixed precision. A bucket of f16/bf16 parameters keeps an FP32 master copy and an FP32
-- master gradient. step() updates the masters and writes them back to the model dtype
-- (round to nearest even, saturating at the largest finite value instead of inf). Model
-- weights changed from outside (model:load_state_dict after the optimizer was built) win: an
-- element whose model value no longer equals its rounded master is re-read from the model
-- before the update. opt:unscale_(inv_scale) multiplies every gradient by inv_scale into FP32
-- (the master gradient; f32 gradients in place) in one fused pass, and returns found_inf,
-- amax (the largest finite |g| after unscaling). step() after unscale_ uses those FP32
-- gradients; without it, the gradients as they are (f16/bf16 converted on the fly). unscale_
-- at most once per step; zero_grad(), step() and skip_step() end the step.
--
-- Gradient accumulation (iter_size = k, default 1): call step() after every micro-batch;
-- only every k-th call applies an update (and returns true), with the accumulated gradient
-- divided by k; zero_grad() does nothing between those calls, so the gradients of the k
-- micro-batches add up. Both `zero_grad(); backward(); step()` and `backward(); step();
-- zero_grad()` loops work unchanged. opt:will_step() says whether the next step() applies
-- (call unscale_ and clip_grad_norm only then); opt:skip_step() ends an accumulation window
-- without an update (an AMP step skipped for inf/NaN).
--
-- state_dict() is a plain nested table (numbers, strings, booleans, tern tensors; the state
-- tensors themselves, not copies): {type, iter_size, param_groups = {{lr =, ..., param_shapes
-- = {"3x4", ...}}}, state = {{group =, dtype =, numel =, step =, <state kinds> = tensor,
-- master = tensor (f16/bf16)}}}. load_state_dict(sd) checks the type, the groups, the shapes
-- and every state tensor, then copies the values (and the hyperparameters) in.
local lib = require "tern.lib"
local Tensor = require "tern.tensor"
local Module = require "tern.nn.Module"

local ffi, C = lib.ffi, lib.C
local check = lib.check
local fmt = string.format
local rawget, type, ipairs, tostring = rawget, type, ipairs, tostring

local Optimizer = { __name = "Optimizer", _is_optimizer = true }
Optimizer.__index = Optimizer

local list_t = ffi.typeof("tn_tensor *[?]")
local SHAPE1, STRIDE1 = ffi.new("int64_t[1]"), ffi.new("int64_t[1]", 1)
local OUT = lib.OUT

-- option validators -------------------------------------------------------------------------
-- Each returns true when v is acceptable; the name is the expectation in error messages.

local huge = math.huge
local function finite(v) return type(v) == "number" and v == v and v > -huge and v < huge end

local V = {}
V.nonneg = { "a non-negative number", function(v) return finite(v) and v >= 0 end }
V.positive = { "a positive number", function(v) return finite(v) and v > 0 end }
V.number = { "a finite number", finite }
V.boolean = { "a boolean", function(v) return type(v) == "boolean" end }
V.unit = { "a number in [0, 1)", function(v) return finite(v) and v >= 0 and v < 1 end }
V.betas = { "a pair {beta1, beta2} of numbers in [0, 1)", function(v)
  return type(v) == "table" and not Tensor.is_tensor(v) and #v == 2 and V.unit[2](v[1]) and V.unit[2](v[2])
end }
V.iter_size = { "a positive integer", function(v) return finite(v) and v >= 1 and v == math.floor(v) end }
V.lr_scale = V.nonneg
V.name = { "a string", function(v) return type(v) == "string" end }
Optimizer.validators = V

local function show(v)
  if type(v) == "table" and not Tensor.is_tensor(v) then
    local parts = {}
    for i = 1, #v do parts[i] = tostring(v[i]) end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  if Tensor.is_tensor(v) then return "a tensor" end
  return tostring(v)
end

-- Extra keys a parameter group may carry (read by others: lr policies scale by lr_scale).
local GROUP_EXTRAS = { lr_scale = V.lr_scale, name = V.name }

-- class construction ------------------------------------------------------------------------

-- local Adam = Optimizer.extend("Adam", {
--   options = { {"lr", 1e-3, V.nonneg}, {"betas", {0.9, 0.999}, V.betas}, ... },  -- default nil: required
--   state = { "exp_avg", "exp_avg_sq" },        -- flat per bucket, zeros, the masters' dtype
--   per_param = false,                           -- true: the update takes one entry per parameter
--   check = function(name, opts_or_group, where) ... end,   -- extra cross-option checks
-- })  and then  function Adam:_kernel(b, lists, grads, h, level) ... end
function Optimizer.extend(name, spec)
  local cls = setmetatable({ __name = name, _spec = spec, _parent = Optimizer }, {
    __index = Optimizer,
    __call = function(c, params, opts)
      local o = c.new(c, params, opts)
      return o -- no tail call: new raises at level 3
    end,
    __tostring = function() return "tn.optim." .. name end,
  })
  cls.__index = cls
  cls.__tostring = function(self) return self:repr() end
  return cls
end

function Optimizer.is_optimizer(x)
  return type(x) == "table" and x._is_optimizer == true
end

-- Raise "tn.optim.<Name>: <msg>" at `level` (counted from the caller of fail).
local function fail(self_or_name, level, msg, ...)
  local name = type(self_or_name) == "string" and self_or_name or self_or_name.__name
  error(fmt("tn.optim.%s: " .. msg, name, ...), level + 1)
end

-- Check group/option table o (where = "" or "param_groups[2]."); fill missing options from
-- defaults when fill. Returns nil, or the problem (without the "tn.optim.X: " prefix).
local function check_options(cls, o, where, defaults, fill)
  local spec = cls._spec
  for _, opt in ipairs(spec.options) do
    local key, v = opt[1], o[opt[1]]
    if v == nil and fill then
      v = defaults[key]
      if type(v) == "table" then v = { v[1], v[2] } end
      o[key] = v
    end
    if v == nil then return fmt("%s%s is required (%s)", where, key, opt[3][1]) end
    if not opt[3][2](v) then return fmt("%s%s must be %s, got %s", where, key, opt[3][1], show(v)) end
  end
  for key, val in pairs(GROUP_EXTRAS) do
    if o[key] ~= nil and not val[2](o[key]) then
      return fmt("%s%s must be %s, got %s", where, key, val[1], show(o[key]))
    end
  end
  if spec.check then
    local msg = spec.check(o)
    if msg then return where .. msg end
  end
  return nil
end

local function known_names(cls, extra)
  local names = {}
  for _, opt in ipairs(cls._spec.options) do names[#names + 1] = opt[1] end
  for _, e in ipairs(extra) do names[#names + 1] = e end
  return table.concat(names, ", ")
end

-- parameters --------------------------------------------------------------------------------

local function is_group_list(x)
  local first = x[1]
  return type(first) == "table" and not Tensor.is_tensor(first) and not Module.is_module(first)
    and first.params ~= nil
end

-- A list of tensors from a tensor, a list of tensors or a module (its flat buffers are built
-- first so that its parameters coalesce).
local function param_list(cls, x, where, level)
  if Tensor.is_tensor(x) then return { x } end
  if Module.is_module(x) then
    x:flat_buffers()
    return x:parameters()
  end
  if type(x) ~= "table" then
    fail(cls.__name, level + 1, "%sparams must be a list of tensors, a module or a list of parameter groups, got %s",
      where, type(x))
  end
  local r = {}
  for i = 1, #x do r[i] = x[i] end
  return r
end

local function check_param(cls, p, where, i, level)
  if not Tensor.is_tensor(p) then
    fail(cls.__name, level + 1, "%sparams[%d] must be a float leaf tensor, got %s", where, i, type(p))
  end
  if not p:is_floating_point() then
    fail(cls.__name, level + 1, "%sparams[%d] must be a float leaf tensor, got a %s tensor", where, i, p:dtype())
  end
  if not p:is_leaf() then
    fail(cls.__name, level + 1, "%sparams[%d] must be a float leaf tensor, got a tensor computed by '%s' "
      .. "(use :detach():requires_grad(true))", where, i, p:grad_fn())
  end
end

-- construction ---------------------------------------------------------------------------------

local HALF = { [2] = true, [3] = true }

function Optimizer.new(cls, params, opts)
  local level = 3 -- the caller of tn.optim.X(...) (through __call)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then fail(cls.__name, level, "options must be a table, got %s", type(opts)) end
  for k in pairs(opts) do
    local known = k == "iter_size"
    for _, opt in ipairs(cls._spec.options) do if opt[1] == k then known = true end end
    if not known then
      fail(cls.__name, level, "unknown option '%s' (options: %s)", tostring(k), known_names(cls, { "iter_size" }))
    end
  end
  local iter_size = opts.iter_size == nil and 1 or opts.iter_size
  if not V.iter_size[2](iter_size) then
    fail(cls.__name, level, "iter_size must be a positive integer, got %s", show(iter_size))
  end
  -- defaults: the class's, overridden by opts
  local defaults = {}
  for _, opt in ipairs(cls._spec.options) do
    local v = opts[opt[1]]
    if v == nil then v = opt[2] end
    defaults[opt[1]] = v
  end
  if params == nil then
    fail(cls.__name, level, "params is required (a list of tensors, a module or a list of groups)")
  end
  -- groups
  local raw_groups
  if type(params) == "table" and not Tensor.is_tensor(params) and not Module.is_module(params)
      and is_group_list(params) then
    raw_groups = params
  else
    raw_groups = { { params = params } }
  end
  local groups, seen = {}, {}
  for gi, rg in ipairs(raw_groups) do
    local where = raw_groups == params and fmt("param_groups[%d].", gi) or ""
    if type(rg) ~= "table" or rg.params == nil then
      fail(cls.__name, level, "param_groups[%d] must be a table with a params field", gi)
    end
    local g = {}
    for k, v in pairs(rg) do
      if k ~= "params" then
        local known = GROUP_EXTRAS[k] ~= nil
        for _, opt in ipairs(cls._spec.options) do if opt[1] == k then known = true end end
        if not known then
          fail(cls.__name, level, "%s: unknown option '%s' (options: %s)", where:sub(1, -2), tostring(k),
            known_names(cls, { "lr_scale", "name" }))
        end
        g[k] = type(v) == "table" and { v[1], v[2] } or v
      end
    end
    local msg = check_options(cls, g, where, defaults, true)
    if msg then fail(cls.__name, level, "%s", msg) end
    local ps = param_list(cls, rg.params, where, level)
    if #ps == 0 then fail(cls.__name, level, "%sparams is an empty list", where) end
    for i, p in ipairs(ps) do
      check_param(cls, p, where, i, level)
      if seen[p] then
        fail(cls.__name, level, "%sparams[%d] appears in more than one place (a parameter may be optimized once)",
          where, i)
      end
      seen[p] = true
    end
    g.params = ps
    groups[gi] = g
  end
  local self = setmetatable({
    param_groups = groups,
    defaults = defaults,
    iter_size = iter_size,
    _micro = 0,          -- step() calls since the last applied update
    _grads = nil,        -- nil: model grads as backward left them; "unscaled" / "converted": FP32 copies
    _h = ffi.new("tn_optim_hparams"),
    _found = ffi.new("int32_t[1]"),
    _amax = ffi.new("double[1]"),
    _norm = ffi.new("double[1]"),
  }, cls)
  self:_make_buckets(level + 1)
  return self
end

-- One bucket per (group, dtype, device): parameters, offsets, flat state and masters.
function Optimizer:_make_buckets(level)
  local buckets = {}
  for gi, g in ipairs(self.param_groups) do
    local by_key, order = {}, {}
    for _, p in ipairs(g.params) do
      local c = p._c
      local key = c.dtype * 16 + c.device
      local b = by_key[key]
      if not b then
        b = { group = gi, dtype = tonumber(c.dtype), device = tonumber(c.device), params = {}, numel = {},
          offset = {}, N = 0 }
        by_key[key] = b
        order[#order + 1] = b
      end
      b.params[#b.params + 1] = p
      b.offset[#b.params] = b.N
      b.numel[#b.params] = p:numel()
      b.N = b.N + p:numel()
    end
    for _, b in ipairs(order) do buckets[#buckets + 1] = b end
  end
  for _, b in ipairs(buckets) do
    b.half = HALF[b.dtype] or false
    b.mdtype = b.dtype == 1 and "f64" or "f32" -- the dtype of masters and state
    local topts = { dtype = b.mdtype, device = lib.device_names[b.device] }
    b.state = { step = 0 }
    for _, kind in ipairs(self._spec.state) do
      b.state[kind] = Tensor.zeros({ b.N }, topts)
    end
    if self._spec.per_tensor_state then
      for _, kind in ipairs(self._spec.per_tensor_state) do
        b.state[kind] = Tensor.zeros({ #b.params }, topts)
      end
    end
    if b.half then
      b.state.master = Tensor.empty({ b.N }, topts)
      b.master_grad = Tensor.zeros({ b.N }, topts)
      for i, p in ipairs(b.params) do
        if b.numel[i] > 0 then
          b.state.master:narrow(1, b.offset[i] + 1, b.numel[i]):copy_(p:detach():reshape(-1))
        end
      end
    end
    self:_layout(b, level + 1)
  end
  self._buckets = buckets
  self:_global_lists()
end

-- A raw 1-d view of len elements starting at tensor p's first element (no autograd).
local function flat_view(p, len)
  SHAPE1[0] = len
  OUT[0] = nil
  check(C.tn_as_strided(OUT, p._c, 1, SHAPE1, STRIDE1, p._c.offset), 4)
  return lib.wrap(OUT[0])
end

local function make_list(ts)
  local arr = list_t(math.max(#ts, 1))
  for i, t in ipairs(ts) do arr[i - 1] = t._c end
  return { n = #ts, arr = arr, ts = ts }
end

-- When every parameter of bucket b moved to one other device with dtype and sizes unchanged
-- (model:to("cuda") after the optimizer was built, or a checkpoint restored onto a moved
-- model), the bucket's state, masters and master gradients follow them there (one copy each).
local function follow_device(b)
  local c1 = rawget(b.params[1], "_c")
  if c1 == nil or c1.device == b.device then return end
  local dev = tonumber(c1.device)
  for i, p in ipairs(b.params) do
    local c = rawget(p, "_c")
    if c == nil or c.device ~= dev or c.dtype ~= b.dtype or p:numel() ~= b.numel[i] then return end
  end
  local name = lib.device_names[dev]
  local state = {}
  for k, t in pairs(b.state) do state[k] = k == "step" and t or t:to(name) end -- every copy first
  local mg = b.master_grad and b.master_grad:to(name)
  b.state, b.master_grad, b.device = state, mg, dev
end

-- (Re)build the segment and per-parameter lists of bucket b from the current parameters and
-- gradients. Raises when a parameter changed dtype, size or contiguity since construction.
function Optimizer:_layout(b, level)
  local pc, pg, pgc = {}, {}, {}
  local where = fmt("param_groups[%d].", b.group)
  follow_device(b)
  for i, p in ipairs(b.params) do
    local c = rawget(p, "_c")
    if c == nil then fail(self, level, "%sparams[%d] was freed", where, i) end
    if c.dtype ~= b.dtype or c.device ~= b.device or p:numel() ~= b.numel[i] then
      fail(self, level, "%sparams[%d] is now a %s %s tensor of %d elements; it was %s %s with %d when the "
        .. "optimizer was built (build the optimizer after model:to())", where, i, p:dtype(), p:device(),
        p:numel(), lib.dtype_names[b.dtype], lib.device_names[b.device], b.numel[i])
    end
    if not p:is_contiguous() then fail(self, level, "%sparams[%d] is not contiguous", where, i) end
    local g = rawget(p, "grad")
    if g == nil then
      g = Tensor.zeros(p:shape(), { dtype = p:dtype(), device = p:device() })
      rawset(p, "grad", g)
    end
    if not Tensor.is_tensor(g) or g._c.dtype ~= c.dtype or g:numel() ~= b.numel[i] or not g:is_contiguous() then
      fail(self, level, "%sparams[%d].grad must be a contiguous %s tensor of %d elements, got %s", where, i,
        p:dtype(), b.numel[i], Tensor.is_tensor(g) and (g:dtype() .. " " .. g:shape_string()) or type(g))
    end
    pc[i], pg[i], pgc[i] = c, g, g._c
  end
  b.pc, b.pg, b.pgc = pc, pg, pgc
  -- segments: maximal runs of non-empty parameters adjacent in storage, gradients adjacent too
  local es = tonumber(C.tn_dtype_size(b.dtype))
  local runs = {}
  local cur
  for i = 1, #b.params do
    local n = b.numel[i]
    if n > 0 then
      local c, gc = pc[i], pgc[i]
      if cur and c.storage == pc[cur.last].storage and gc.storage == pgc[cur.last].storage
          and c.data == pc[cur.last].data + b.numel[cur.last] * es
          and gc.data == pgc[cur.last].data + b.numel[cur.last] * es then
        cur.last, cur.len = i, cur.len + n
      else
        cur = { first = i, last = i, len = n }
        runs[#runs + 1] = cur
      end
    end
  end
  local seg = { w = {}, g = {}, model = {}, wg = {} }
  local pp = { w = {}, g = {}, model = {}, wg = {} }
  for _, kind in ipairs(self._spec.state) do seg[kind], pp[kind] = {}, {} end
  for _, r in ipairs(runs) do
    local off = b.offset[r.first]
    local mp, mg = flat_view(b.params[r.first], r.len), flat_view(pg[r.first], r.len)
    seg.g[#seg.g + 1] = mg
    for _, kind in ipairs(self._spec.state) do
      seg[kind][#seg[kind] + 1] = b.state[kind]:narrow(1, off + 1, r.len)
    end
    if b.half then
      seg.w[#seg.w + 1] = b.state.master:narrow(1, off + 1, r.len)
      seg.wg[#seg.wg + 1] = b.master_grad:narrow(1, off + 1, r.len)
      seg.model[#seg.model + 1] = mp
    else
      seg.w[#seg.w + 1] = mp
      seg.wg[#seg.wg + 1] = mg
    end
  end
  local want_pp = self._spec.per_param or self._per_param_lists
  local empty_opts = { dtype = b.mdtype, device = lib.device_names[b.device] } -- state of an empty parameter
  if want_pp then
    for i, p in ipairs(b.params) do
      local off, n = b.offset[i], b.numel[i]
      pp.g[i] = pg[i]
      for _, kind in ipairs(self._spec.state) do
        pp[kind][i] = n > 0 and b.state[kind]:narrow(1, off + 1, n) or Tensor.empty({ 0 }, empty_opts)
      end
      if b.half then
        pp.w[i] = n > 0 and b.state.master:narrow(1, off + 1, n) or Tensor.empty({ 0 }, empty_opts)
        pp.wg[i] = n > 0 and b.master_grad:narrow(1, off + 1, n) or Tensor.empty({ 0 }, empty_opts)
        pp.model[i] = p
      else
        pp.w[i], pp.wg[i] = p, pg[i]
      end
    end
  end
  local function lists(t)
    local r = {}
    for k, ts in pairs(t) do r[k] = make_list(ts) end
    return r
  end
  b.seg = lists(seg)
  b.pp = want_pp and lists(pp) or nil
  b.stale = false
end

-- The lists over every bucket: model gradients (unscale input, zero_grad) and their FP32
-- destinations (master gradients, or the model gradients themselves).
function Optimizer:_global_lists()
  local gin, gout = {}, {}
  for _, b in ipairs(self._buckets) do
    for i, t in ipairs(b.seg.g.ts) do
      gin[#gin + 1] = t
      gout[#gout + 1] = b.seg.wg.ts[i]
    end
  end
  self._gin, self._gout = make_list(gin), make_list(gout)
end

-- Rebuild the lists of buckets whose parameters were re-bound or gradients replaced.
function Optimizer:_ensure_layout(level)
  local changed = false
  for _, b in ipairs(self._buckets) do
    local params, pc, pg, pgc = b.params, b.pc, b.pg, b.pgc
    for i = 1, #params do
      local p = params[i]
      local g = rawget(p, "grad")
      if rawget(p, "_c") ~= pc[i] or g ~= pg[i] or rawget(g, "_c") ~= pgc[i] then
        self:_layout(b, level + 1)
        changed = true
        break
      end
    end
  end
  if changed then self:_global_lists() end
end

-- the update --------------------------------------------------------------------------------

-- Fill the C hyperparameters of bucket b from its group g.
function Optimizer:_hparams(g, b, grad_scale, no_wd)
  local h = self._h
  h.lr = g.lr
  h.beta1, h.beta2 = g.betas and g.betas[1] or 0, g.betas and g.betas[2] or 0
  h.eps = g.eps or 0
  h.weight_decay = no_wd and 0 or (g.weight_decay or 0)
  h.momentum, h.dampening = g.momentum or 0, g.dampening or 0
  h.nesterov = g.nesterov and 1 or 0
  h.decoupled = self._spec.decoupled and 1 or 0
  h.grad_averaging = g.grad_averaging and 1 or 0
  h.step = b.state.step
  h.grad_scale = grad_scale
  return h
end

-- Check every group's options (they are writable between steps); raises at level.
function Optimizer:_check_groups(level)
  local cls = getmetatable(self)
  for gi, g in ipairs(self.param_groups) do
    local msg = check_options(cls, g, fmt("param_groups[%d].", gi), nil, false)
    if msg then fail(self, level, "%s", msg) end
  end
end

-- Apply the update to every bucket with gradients multiplied by grad_scale; no_wd: weight
-- decay off (LARC folded it into the gradients). Options are checked before any bucket moves.
function Optimizer:_update(grad_scale, no_wd, level)
  self:_check_groups(level + 1)
  local converted = self._grads ~= nil
  for _, b in ipairs(self._buckets) do
    b.state.step = b.state.step + 1
    local h = self:_hparams(self.param_groups[b.group], b, grad_scale, no_wd)
    local lists = self._spec.per_param and b.pp or b.seg
    local grads = (b.half and converted) and lists.wg or lists.g
    self:_kernel(b, lists, grads, h, level + 1)
  end
end

-- Count a micro-batch; true when this step() call applies the update.
function Optimizer:_tick()
  self._micro = self._micro + 1
  if self._micro < self.iter_size then return false end
  self._micro = 0
  return true
end

-- Applies the update on every iter_size-th call (see the top of this file); returns true
-- when it did.
function Optimizer:step()
  if not self:_tick() then return false end
  self:_ensure_layout(3)
  self:_update(1 / self.iter_size, false, 3)
  self._grads = nil
  return true
end

function Optimizer:will_step() return self._micro + 1 >= self.iter_size end

-- End the current step (and accumulation window) without an update: parameters and state
-- stay as they are; the next zero_grad() clears the gradients.
function Optimizer:skip_step()
  self._micro = 0
  self._grads = nil
  return false
end

-- Zero every gradient (one C call), except between the micro-batches of an accumulation
-- window, where it does nothing (see iter_size). Returns true when it zeroed.
function Optimizer:zero_grad()
  if self._micro > 0 then return false end
  self:_ensure_layout(3)
  check(C.tn_optim_zero(self._gin.n, self._gin.arr), 2)
  self._grads = nil
  return true
end

-- mixed precision ----------------------------------------------------------------------------

-- Multiply every gradient by inv_scale into FP32 (see the top of this file). Returns found_inf
-- (boolean), amax (number).
function Optimizer:unscale_(inv_scale)
  if not finite(inv_scale) then
    fail(self, 2, "unscale_: inv_scale must be a finite number, got %s", show(inv_scale))
  end
  if not self:will_step() then
    fail(self, 2, "unscale_: called on micro-batch %d of iter_size %d; unscale only before the step that "
      .. "applies (opt:will_step() is true then)", self._micro + 1, self.iter_size)
  end
  if self._grads ~= nil then
    fail(self, 2, "unscale_: the gradients of this step were already %s (unscale_ at most once per step, "
      .. "before clip_grad_norm)", self._grads)
  end
  self:_ensure_layout(3)
  check(C.tn_amp_unscale_check(self._found, self._amax, self._gin.n, self._gout.arr, self._gin.arr, inv_scale), 2)
  self._grads = "unscaled"
  return self._found[0] ~= 0, self._amax[0]
end

-- Make the FP32 working gradients (master gradients of f16/bf16 buckets) current: converts
-- the model gradients when unscale_ has not run in this step.
function Optimizer:_f32_grads()
  if self._grads ~= nil then return end
  local any_half = false
  for _, b in ipairs(self._buckets) do any_half = any_half or b.half end
  if any_half then
    check(C.tn_amp_unscale_check(self._found, self._amax, self._gin.n, self._gout.arr, self._gin.arr, 1.0), 3)
    self._grads = "converted"
  end
end

-- Re-read the masters of f16/bf16 buckets where the model weights were changed from outside
-- (the updates do it themselves; LARC needs it before its norms).
function Optimizer:_sync_masters(level)
  for _, b in ipairs(self._buckets) do
    if b.half then
      check(C.tn_amp_sync_masters(b.seg.w.n, b.seg.w.arr, b.seg.model.arr), level)
    end
  end
end

-- Global-norm clipping of the gradients the next update uses (FP32 masters for f16/bf16
-- parameters; the accumulated gradient divided by iter_size). Returns the norm; a non-finite
-- norm leaves the gradients untouched.
function Optimizer:clip_grad_norm(max_norm)
  if not finite(max_norm) or max_norm <= 0 then
    fail(self, 2, "clip_grad_norm: max_norm must be a positive number, got %s", show(max_norm))
  end
  self:_ensure_layout(3)
  self:_f32_grads()
  check(C.tn_grad_clip_norm(self._norm, self._gout.n, self._gout.arr, max_norm, 1 / self.iter_size), 2)
  return self._norm[0]
end

-- lists ----------------------------------------------------------------------------------------

-- The model gradient tensors the optimizer reads: 1-d views, one per segment (one per flat
-- buffer for nn modules), in bucket order.
function Optimizer:grad_buffers()
  self:_ensure_layout(3)
  local r = {}
  for i, t in ipairs(self._gin.ts) do r[i] = t end
  return r
end

-- Every parameter, in group order.
function Optimizer:params()
  local r = {}
  for _, g in ipairs(self.param_groups) do
    for _, p in ipairs(g.params) do r[#r + 1] = p end
  end
  return r
end

-- state ------------------------------------------------------------------------------------------

local function shape_key(p) return table.concat(p:shape(), "x") end

local function copy_opt(v)
  if type(v) == "table" then return { v[1], v[2] } end
  return v
end

function Optimizer:state_dict()
  local groups, state = {}, {}
  for gi, g in ipairs(self.param_groups) do
    local sg = { param_shapes = {} }
    for _, opt in ipairs(self._spec.options) do sg[opt[1]] = copy_opt(g[opt[1]]) end
    for k in pairs(GROUP_EXTRAS) do sg[k] = g[k] end
    for i, p in ipairs(g.params) do sg.param_shapes[i] = shape_key(p) end
    groups[gi] = sg
  end
  for bi, b in ipairs(self._buckets) do
    local s = { group = b.group, dtype = lib.dtype_names[b.dtype], numel = b.N, step = b.state.step }
    for k, v in pairs(b.state) do
      if k ~= "step" then s[k] = v end
    end
    state[bi] = s
  end
  return { type = self.__name, iter_size = self.iter_size, param_groups = groups, state = state }
end

-- Validate sd against this optimizer, then copy it in. Raises naming the first mismatch.
function Optimizer:load_state_dict(sd, level)
  level = level or 2
  local name = self.__name
  local function bad(msg, ...) fail(self, level + 1, "load_state_dict: " .. msg, ...) end
  if type(sd) ~= "table" then bad("expected a table from state_dict(), got %s", type(sd)) end
  if sd.type ~= name then bad("the state is of a %s optimizer, this is %s", tostring(sd.type), name) end
  if type(sd.param_groups) ~= "table" or #sd.param_groups ~= #self.param_groups then
    bad("the state has %s parameter groups, this optimizer %d",
      type(sd.param_groups) == "table" and tostring(#sd.param_groups) or "no", #self.param_groups)
  end
  if sd.iter_size ~= nil and not V.iter_size[2](sd.iter_size) then
    bad("iter_size must be a positive integer, got %s", show(sd.iter_size))
  end
  local cls = getmetatable(self)
  for gi, g in ipairs(self.param_groups) do
    local sg = sd.param_groups[gi]
    local where = fmt("param_groups[%d]", gi)
    if type(sg) ~= "table" then bad("%s is missing", where) end
    local shapes = sg.param_shapes
    if type(shapes) ~= "table" or #shapes ~= #g.params then
      bad("%s has %s parameters in the state, %d here", where, type(shapes) == "table" and tostring(#shapes) or "no",
        #g.params)
    end
    for i, p in ipairs(g.params) do
      if shapes[i] ~= shape_key(p) then
        bad("%s.params[%d] has shape %s in the state, %s here", where, i, tostring(shapes[i]), shape_key(p))
      end
    end
    local msg = check_options(cls, sg, where .. ".", nil, false)
    if msg then bad("%s", msg) end
  end
  if type(sd.state) ~= "table" or #sd.state ~= #self._buckets then
    bad("the state has %s buckets (parameter groups x dtypes), this optimizer %d",
      type(sd.state) == "table" and tostring(#sd.state) or "no", #self._buckets)
  end
  for bi, b in ipairs(self._buckets) do
    local s = sd.state[bi]
    local where = fmt("state[%d]", bi)
    if type(s) ~= "table" then bad("%s is missing", where) end
    if s.group ~= b.group or s.dtype ~= lib.dtype_names[b.dtype] or s.numel ~= b.N then
      bad("%s is group %s, %s, %s elements in the state; here group %d, %s, %d elements", where,
        tostring(s.group), tostring(s.dtype), tostring(s.numel), b.group, lib.dtype_names[b.dtype], b.N)
    end
    if not (V.nonneg[2](s.step) and s.step == math.floor(s.step)) then
      bad("%s.step must be a non-negative integer, got %s", where, show(s.step))
    end
    for k, t in pairs(b.state) do
      if k ~= "step" then
        local src = s[k]
        if src == nil then bad("%s.%s is missing", where, k) end
        if not Tensor.is_tensor(src) or not src:is_floating_point() or src:numel() ~= t:numel() then
          bad("%s.%s must be a float tensor of %d elements, got %s", where, k, t:numel(),
            Tensor.is_tensor(src) and (src:dtype() .. " " .. src:shape_string()) or type(src))
        end
      end
    end
  end
  -- all checked: copy
  for gi, g in ipairs(self.param_groups) do
    local sg = sd.param_groups[gi]
    for _, opt in ipairs(self._spec.options) do g[opt[1]] = copy_opt(sg[opt[1]]) end
    for k in pairs(GROUP_EXTRAS) do g[k] = sg[k] end
  end
  for bi, b in ipairs(self._buckets) do
    local s = sd.state[bi]
    b.state.step = s.step
    for k, t in pairs(b.state) do
      if k ~= "step" and s[k] ~= t then t:copy_(s[k]:reshape(-1)) end
    end
  end
  if sd.iter_size ~= nil then self.iter_size = sd.iter_size end
  self._micro, self._grads = 0, nil
end

-- printing ------------------------------------------------------------------------------------

function Optimizer:repr()
  local lines = { self.__name .. " (" }
  for gi, g in ipairs(self.param_groups) do
    local n = 0
    for _, p in ipairs(g.params) do n = n + p:numel() end
    local parts = {}
    for _, opt in ipairs(self._spec.options) do parts[#parts + 1] = opt[1] .. " = " .. show(g[opt[1]]) end
    lines[#lines + 1] = fmt("  group %d: %d tensors, %d elements; %s", gi, #g.params, n, table.concat(parts, ", "))
  end
  if self.iter_size > 1 then lines[#lines + 1] = "  iter_size = " .. self.iter_size end
  lines[#lines + 1] = ")"
  return table.concat(lines, "\n")
end

-- Global-norm clipping of a parameter list, a module or an optimizer (tn.optim.clip_grad_norm).
function Optimizer.clip_grad_norm_of(x, max_norm, level)
  level = (level or 1) + 1
  if type(x) == "table" and type(x.clip_grad_norm) == "function" and not Module.is_module(x)
      and not Tensor.is_tensor(x) then
    if not finite(max_norm) or max_norm <= 0 then
      error(fmt("tn.optim.clip_grad_norm: max_norm must be a positive number, got %s", show(max_norm)), level)
    end
    return x:clip_grad_norm(max_norm)
  end
  if not finite(max_norm) or max_norm <= 0 then
    error(fmt("tn.optim.clip_grad_norm: max_norm must be a positive number, got %s", show(max_norm)), level)
  end
  local ps
  if Tensor.is_tensor(x) then ps = { x }
  elseif Module.is_module(x) then ps = x:parameters()
  elseif type(x) == "table" then ps = x
  else
    error(fmt("tn.optim.clip_grad_norm: expected a list of tensors, a module or an optimizer, got %s", type(x)), level)
  end
  local gs = {}
  for i, p in ipairs(ps) do
    if not Tensor.is_tensor(p) then
      error(fmt("tn.optim.clip_grad_norm: params[%d] must be a tensor, got %s", i, type(p)), level)
    end
    local g = rawget(p, "grad")
    if g ~= nil then
      if not g:is_contiguous() then
        error(fmt("tn.optim.clip_grad_norm: params[%d].grad is not contiguous", i), level)
      end
      gs[#gs + 1] = g
    end
  end
  local l = make_list(gs)
  local norm = ffi.new("double[1]")
  check(C.tn_grad_clip_norm(norm, l.n, l.arr, max_norm, 1), level)
  return norm[0]
end

return Optimizer
