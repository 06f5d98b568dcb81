-- tn.dist.DistributedOptimizer(opt, {fusion_mb = 64, compression = "none", overlap = true,
--   backward_passes_per_step = <opt.iter_size or 1>, predivide = 1}): Horovod's
-- DistributedOptimizer for tern. It wraps any tern optimizer (SGD, Adam, AdamW, NovoGrad,
-- LARC around one of them) and averages the gradients over every rank before the update, so
-- that N ranks at batch B step exactly as one process at batch N*B would (to float rounding).
--
-- Buckets. The gradients an optimizer reads are its grad_buffers(): 1-d views over the flat
-- gradient buffers of nn modules (one per dtype and device). They are cut, at parameter
-- boundaries, into buckets of at most fusion_mb MiB (a bigger parameter is a bucket of its
-- own); each bucket is ONE allreduce, in place on the gradient memory (no copy). fusion_mb = 0
-- turns fusion off: one allreduce per parameter, as without Horovod's fusion buffer.
--
-- Overlap. With overlap (default on) every parameter gets a grad-ready hook
-- (tern.autograd.on_grad_ready): when the last parameter of a bucket has its whole gradient of
-- the backward_passes_per_step-th backward pass, the bucket's allreduce starts
-- (dist.allreduce_async) while backward goes on with the layers below. synchronize() starts
-- the buckets not started yet (parameters backward never reached) and waits for all.
--
-- compression = "fp16": an f32/f64 bucket travels as f16 (converted into a scratch buffer,
-- summed, converted back): half the bytes, f16's rounding and range (gradients beyond 65504
-- become inf, which the loss scaler then sees on every rank alike). predivide = f (Horovod's
-- gradient_predivide_factor): gradients are multiplied by 1/f before the sum and by f/size
-- after it, which keeps large sums in range.
--
-- The step. Call it as the wrapped optimizer: zero_grad, backward, [scaler:unscale_ /
-- clip_grad_norm], step (or scaler:step(dopt)). unscale_, clip_grad_norm and step synchronize
-- first, at most once per applied step, so clipping sees averaged gradients and every rank
-- takes the same inf/NaN skip decision (unscale_ also takes the maximum of found_inf and amax
-- over the ranks: one 2-element allreduce). With gradient accumulation (the wrapped
-- optimizer's iter_size = k, or Horovod's backward_passes_per_step = k with step() once per k
-- passes) gradients are averaged once, on the step that applies.
local lib = require "tern.lib"
local Tensor = require "tern.tensor"
local autograd = require "tern.autograd"

local fmt = string.format
local ipairs, type, tostring = ipairs, type, tostring

local DistributedOptimizer = { __name = "DistributedOptimizer", _is_optimizer = true }
DistributedOptimizer.__index = DistributedOptimizer

local COMPRESSIONS = { none = true, fp16 = true }
local KNOWN = { fusion_mb = true, compression = true, overlap = true, backward_passes_per_step = true,
  predivide = true }

local function fail(level, msg, ...)
  error(fmt("tn.dist.DistributedOptimizer: " .. msg, ...), level + 1)
end

local function dist() return require "tern.dist" end

-- The buckets over the gradient views of opt: each {view = 1-d tensor, params = {...},
-- pending = count of params not yet ready, started = handle or nil}.
local function make_buckets(self, level)
  local opt = self.optimizer
  local views = opt:grad_buffers()
  local params = opt:params()
  local limit = self.fusion_mb * 1024 * 1024
  local buckets, of_param = {}, {}
  for _, v in ipairs(views) do
    local c = v._c
    local es = tonumber(lib.C.tn_dtype_size(c.dtype))
    local lo, n = c.data, v:numel()
    -- the parameters whose gradient lies inside this view, by offset
    local inside = {}
    for _, p in ipairs(params) do
      local g = rawget(p, "grad")
      if g and g._c.storage == c.storage and g:numel() > 0 then
        local off = tonumber(g._c.data - lo) / es
        if off >= 0 and off + g:numel() <= n then inside[#inside + 1] = { p = p, off = off, n = g:numel() } end
      end
    end
    table.sort(inside, function(a, b) return a.off < b.off end)
    local cur
    local function close()
      if cur then
        cur.view = v:narrow(1, cur.off + 1, cur.n)
        cur.pending = #cur.params
        buckets[#buckets + 1] = cur
        cur = nil
      end
    end
    local pos = 0
    for _, e in ipairs(inside) do
      if e.off ~= pos then close() end -- a gap (a parameter this optimizer does not own)
      local bytes = e.n * es
      if cur and (limit == 0 or (cur.n + e.n) * es > limit) then close() end
      if not cur then cur = { off = e.off, n = 0, params = {} } end
      cur.n = cur.n + e.n
      cur.params[#cur.params + 1] = e.p
      pos = e.off + e.n
      if limit == 0 or bytes >= limit then close() end
    end
    close()
  end
  for bi, b in ipairs(buckets) do
    for _, p in ipairs(b.params) do
      if of_param[p] then fail(level, "a parameter's gradient lies in two gradient buffers") end
      of_param[p] = bi
    end
  end
  self._buckets, self._of_param, self._views = buckets, of_param, views
end

-- Are the gradient views still the ones the buckets were cut from (model:to(), a new
-- flat buffer or a replaced .grad re-lays them out)?
local function layout_current(self)
  local views = self.optimizer:grad_buffers()
  local old = self._views
  if #views ~= #old then return false end
  for i, v in ipairs(views) do
    if v._c.data ~= old[i]._c.data or v:numel() ~= old[i]:numel() or v._c.dtype ~= old[i]._c.dtype then
      return false
    end
  end
  return true
end

-- Start bucket b's allreduce (sum; the average is taken at the wait).
local function start(self, b)
  local d = dist()
  local t = b.view
  if self.predivide ~= 1 then t:mul_(1 / self.predivide) end
  if self.compression == "fp16" and (t:dtype() == "f32" or t:dtype() == "f64") then
    b.scratch = b.scratch or Tensor.empty({ t:numel() }, { dtype = "f16", device = t:device() })
    b.scratch:copy_(t)
    b.handle = d.allreduce_async(b.scratch, { op = "sum" })
  else
    b.scratch = nil
    b.handle = d.allreduce_async(t, { op = "sum" })
  end
end

local function finish(self, b)
  b.handle:wait()
  b.handle = nil
  local t = b.view
  if b.scratch and self.compression == "fp16" then t:copy_(b.scratch) end
  local f = self.predivide / self._size
  if f ~= 1 then t:mul_(f) end
end

local function on_ready(self, p)
  if self._synced then return end
  local bi = self._of_param[p]
  if not bi then return end
  local passes = (self._passes[p] or 0) + 1
  self._passes[p] = passes
  if passes < self.backward_passes_per_step then return end
  local b = self._buckets[bi]
  if b.handle or b.done or b.pending == 0 then return end
  b.pending = b.pending - 1
  -- buckets start in one fixed order on every rank (last parameters first, as backward makes
  -- them), never in the order they happen to be ready: collectives must match across ranks
  local bs = self._buckets
  local nx = self._next
  while nx >= 1 and bs[nx].pending == 0 do
    start(self, bs[nx])
    nx = nx - 1
  end
  self._next = nx
  -- MPI moves a started allreduce only inside MPI calls: a test of those in flight lets them
  -- advance while backward goes on
  for i = #bs, nx + 1, -1 do
    local h = bs[i].handle
    if h then h:test() end
  end
end

local function install_hooks(self)
  local hook = function(p) return on_ready(self, p) end
  for _, b in ipairs(self._buckets) do
    for _, p in ipairs(b.params) do autograd.on_grad_ready(p, hook) end
  end
end

local function reset_window(self)
  self._passes = {}
  for _, b in ipairs(self._buckets) do
    b.pending = #b.params
    b.done = false
  end
  self._next = #self._buckets -- the next bucket to start (they start from the last)
  self._synced = false
end

function DistributedOptimizer.new(opt, opts, level)
  level = (level or 1) + 1
  if type(opt) ~= "table" or not opt._is_optimizer or type(opt.grad_buffers) ~= "function" then
    fail(level, "opt must be a tern optimizer (tn.optim.SGD, Adam, ..., LARC), got %s",
      type(opt) == "table" and tostring(opt.__name or "a table") or type(opt))
  end
  if getmetatable(opt) == DistributedOptimizer then fail(level, "opt is already a DistributedOptimizer") end
  opts = opts or {}
  if type(opts) ~= "table" then fail(level, "options must be a table, got %s", type(opts)) end
  for k in pairs(opts) do
    if not KNOWN[k] then
      fail(level, "unknown option '%s' (options: backward_passes_per_step, compression, fusion_mb, overlap, "
        .. "predivide)", tostring(k))
    end
  end
  local fusion_mb = opts.fusion_mb == nil and 64 or opts.fusion_mb
  if type(fusion_mb) ~= "number" or not (fusion_mb >= 0 and fusion_mb < math.huge) then
    fail(level, "fusion_mb must be a non-negative number (0: one allreduce per parameter), got %s", tostring(fusion_mb))
  end
  local compression = opts.compression or "none"
  if not COMPRESSIONS[compression] then
    fail(level, "compression must be \"none\" or \"fp16\", got %s", tostring(compression))
  end
  local iter = opt.iter_size or (opt.optim and opt.optim.iter_size) or 1
  local bpps = opts.backward_passes_per_step
  if bpps == nil then bpps = iter end
  if type(bpps) ~= "number" or bpps < 1 or bpps ~= math.floor(bpps) then
    fail(level, "backward_passes_per_step must be a positive integer, got %s", tostring(bpps))
  end
  if iter > 1 and bpps ~= iter then
    fail(level, "backward_passes_per_step = %d differs from the optimizer's iter_size = %d (leave it out: it "
      .. "follows iter_size)", bpps, iter)
  end
  local predivide = opts.predivide == nil and 1 or opts.predivide
  if type(predivide) ~= "number" or not (predivide > 0 and predivide < math.huge) then
    fail(level, "predivide must be a positive number, got %s", tostring(predivide))
  end
  local overlap = opts.overlap == nil and true or opts.overlap
  if type(overlap) ~= "boolean" then fail(level, "overlap must be a boolean, got %s", type(overlap)) end
  local d = dist()
  if not d.is_initialized() then
    fail(level, "tn.dist.init() must come first (it says which ranks take part)")
  end
  local self = setmetatable({
    optimizer = opt,
    param_groups = opt.param_groups,
    iter_size = opt.iter_size,
    fusion_mb = fusion_mb,
    compression = compression,
    backward_passes_per_step = bpps,
    predivide = predivide,
    overlap = overlap,
    _size = d.size(),
  }, DistributedOptimizer)
  make_buckets(self, level)
  reset_window(self)
  if overlap then install_hooks(self) end
  return self
end

-- Number of allreduce buckets and their sizes in elements (for logs and the benchmark).
function DistributedOptimizer:buckets()
  local r = {}
  for i, b in ipairs(self._buckets) do r[i] = b.view:numel() end
  return r
end

-- Average the gradients over the ranks now (starting what the hooks have not started) and wait
-- for every bucket. At most once per applied step; later calls in the same step do nothing.
function DistributedOptimizer:synchronize()
  if self._synced then return end
  if not layout_current(self) then
    -- parameters re-bound since the buckets were cut: nothing can be in flight on the old views
    for _, b in ipairs(self._buckets) do
      if b.handle then finish(self, b) end
    end
    if self.overlap then
      for _, b in ipairs(self._buckets) do
        for _, p in ipairs(b.params) do autograd.on_grad_ready(p, nil) end
      end
    end
    make_buckets(self, 3)
    reset_window(self)
    if self.overlap then install_hooks(self) end
  end
  local bs = self._buckets
  for i = self._next, 1, -1 do -- the rest, in the same fixed order
    if not bs[i].handle then start(self, bs[i]) end
  end
  self._next = 0
  for i = #bs, 1, -1 do
    finish(self, bs[i])
    bs[i].done = true
  end
  self._synced = true
end

local function applies(self)
  local o = self.optimizer
  return type(o.will_step) ~= "function" or o:will_step()
end

function DistributedOptimizer:will_step() return applies(self) end

function DistributedOptimizer:unscale_(inv_scale)
  if applies(self) then self:synchronize() end
  local found, amax = self.optimizer:unscale_(inv_scale)
  if self._size > 1 then
    -- every rank takes the same decision, whatever the rounding of its own sums
    local dev = #self._views > 0 and self._views[1]:device() or "cpu"
    local flags = Tensor.tensor({ found and 1 or 0, amax }, { dtype = "f64", device = dev })
    dist().allreduce(flags, { op = "max" })
    local v = flags:tolist()
    found, amax = v[1] ~= 0, v[2]
  end
  return found, amax
end

function DistributedOptimizer:clip_grad_norm(max_norm)
  if applies(self) then self:synchronize() end
  return self.optimizer:clip_grad_norm(max_norm)
end

-- Averages (when this step applies), then steps the wrapped optimizer. Returns what it returns.
function DistributedOptimizer:step()
  local will = applies(self)
  if will then self:synchronize() end
  local r = self.optimizer:step()
  if will then reset_window(self) end
  return r
end

function DistributedOptimizer:skip_step()
  -- the skipped step's gradients were averaged (or are dropped): a new window starts
  for _, b in ipairs(self._buckets) do
    if b.handle then finish(self, b) end
  end
  if type(self.optimizer.skip_step) == "function" then self.optimizer:skip_step() end
  reset_window(self)
end

function DistributedOptimizer:zero_grad()
  for _, b in ipairs(self._buckets) do -- nothing may still write into the gradients
    if b.handle then finish(self, b) end
  end
  return self.optimizer:zero_grad()
end

function DistributedOptimizer:grad_buffers() return self.optimizer:grad_buffers() end
function DistributedOptimizer:params() return self.optimizer:params() end
function DistributedOptimizer:state_dict() return self.optimizer:state_dict() end
function DistributedOptimizer:load_state_dict(sd) return self.optimizer:load_state_dict(sd) end

function DistributedOptimizer:repr()
  local inner = type(self.optimizer.repr) == "function" and self.optimizer:repr() or tostring(self.optimizer)
  return fmt("DistributedOptimizer(%d ranks, %d buckets, fusion_mb = %s, compression = %s, overlap = %s) of %s",
    self._size, #self._buckets, tostring(self.fusion_mb), self.compression, tostring(self.overlap), inner)
end
DistributedOptimizer.__tostring = DistributedOptimizer.repr

return DistributedOptimizer
