-- tern.rnnt: the pruned RNN-T loss family with fast_rnnt's Python API (k2 / fast_rnnt
-- rnnt_loss.py and mutual_information.py), over the C kernels of core/rnnt.c and
-- core/rnnt_prune.c. Every function takes one keyword table:
--
--   tn.rnnt.get_logprobs{lm, am, symbols, termination_symbol, boundary=nil, rnnt_type="regular"}
--       -> px (B, S, T+1) regular / (B, S, T) otherwise, py (B, S+1, T)
--   tn.rnnt.loss_simple{lm, am, symbols, termination_symbol, boundary=nil, rnnt_type="regular",
--       delay_penalty=0, reduction="mean", return_grad=false} -> loss [, px_grad, py_grad]
--   tn.rnnt.loss_smoothed{..., lm_only_scale=0.1, am_only_scale=0.1, ...}   (as loss_simple)
--   tn.rnnt.get_prune_ranges{px_grad, py_grad, boundary=nil, s_range} -> ranges i64 (B, T, R)
--   tn.rnnt.do_pruning{am, lm, ranges} -> am_pruned, lm_pruned (B, T, R, D)
--   tn.rnnt.pruned_tanh{am, lm, ranges} -> tanh(am_pruned + lm_pruned) (B, T, R, D), fused:
--       the joiner's hidden unit without lm_pruned or the sum (tn.nn.Joiner:pruned uses it)
--   tn.rnnt.loss_pruned{logits, symbols, ranges, termination_symbol, boundary=nil,
--       rnnt_type="regular", delay_penalty=0, reduction="mean", return_grad=false,
--       overwrite_logits=false} -> loss [, px_grad, py_grad]
--   tn.rnnt.loss{logits, symbols, termination_symbol, boundary=nil, rnnt_type="regular",
--       delay_penalty=0, reduction="mean", return_grad=false, overwrite_logits=false}
--   tn.rnnt.mutual_information_recursion{px, py, boundary=nil, return_grad=false}
--       -> scores (B) [, px_grad, py_grad]
--
-- Shapes: lm (B, S+1, C), am (B, T, C), symbols (B, S) i64 (or i32), boundary (B, 4) i64 =
-- [begin_symbol, begin_frame, end_symbol, end_frame] per utterance (0-based values, nil =
-- [0, 0, S, T]; symbols and boundary may be Lua tables of rows), logits (B, T, S+1, C) for
-- the full loss and (B, T, R, C) for the pruned one. Losses are -log p(symbols | inputs) per utterance,
-- then reduced ("none" (B), "mean" over B, "sum"). return_grad also returns the occupation
-- probabilities px_grad = d sum_b(scores[b]) / d px, py_grad likewise (what get_prune_ranges
-- takes); they are computed by the same pass as the loss, and autograd reuses them.
--
-- Autograd: gradients flow to lm, am, logits, px and py. f16 / bf16 logits of loss and
-- loss_pruned are read by the kernels in their dtype (log-softmax and recursion in f32, px / py
-- f32, the logits' gradient written in their dtype: no f32 copy of the logits); other f16 / bf16
-- inputs are converted to f32 for the kernels (their gradients are converted back); f32 and f64
-- mixed give f64. overwrite_logits=true lets the backward write the gradient of the logits into
-- the logits tensor itself (saves one B x T x (S+1) x C tensor; the logits' values are gone
-- afterwards, and a second backward through the loss is refused); it is ignored for a leaf.
-- Logits that the call had to copy (non-contiguous) are always overwritten, being private to
-- the loss.
--
-- Devices: every tensor of a call must be on one device (the C kernels run there); symbols,
-- boundary and ranges given as Lua tables are made on the device of the float inputs. Outputs
-- and gradients are made on that device. On CUDA nothing here reads device values back: the
-- kernels check symbols, boundaries, ranges and finiteness on the device and a bad value is
-- raised, with the CPU's message, at the next synchronisation (tn.cuda.synchronize(), a copy to
-- the host, item()). The one exception is get_prune_ranges with a boundary *tensor* on CUDA:
-- s_range sizes the ranges tensor and depends on the boundary rows, so they are read back once
-- ((B, 4) values); give the boundary as a Lua table of rows and it is computed on the host.
--
-- Errors name the function, the argument and the shapes; checks of values (symbols in [0, C),
-- boundaries inside the tensors, T_b >= S_b for modified / constrained, finiteness) come from
-- the C kernels, with the same prefix.
local ffi = require "ffi"
local lib = require "tern.lib"
local Tensor = require "tern.tensor"
local autograd = require "tern.autograd"

local C = lib.C
local fmt = string.format
local is_tensor = Tensor.is_tensor
local needs, record, record_multi = autograd.needs, autograd.record, autograd.record_multi
local grad_enabled = autograd.is_enabled

local M = {}

local TYPES = { regular = 0, modified = 1, constrained = 2 }
local REDUCTIONS = { none = true, mean = true, sum = true }

local function cptr(t) return t and t._c or nil end
local function shape_str(t) return "{" .. table.concat(t:shape(), ", ") .. "}" end

-- Raise without a position: api() below re-raises at the caller's line.
local function fail(fname, msg, ...)
  error(fname .. ": " .. fmt(msg, ...), 0)
end

local function ccheck(fname, status)
  if status ~= 0 then error(fname .. ": " .. ffi.string(C.tn_last_error()), 0) end
end

-- Public entry: run impl(args) and raise its error at the caller's line.
local function api(fname, allowed, impl)
  local set = {}
  for _, k in ipairs(allowed) do set[k] = true end
  return function(args)
    if type(args) ~= "table" or is_tensor(args) then
      error(fmt("rnnt.%s: expected a keyword table, e.g. tn.rnnt.%s{%s = ...}, got %s", fname,
        fname, allowed[1], is_tensor(args) and "a tensor" or type(args)), 2)
    end
    for k in pairs(args) do
      if not set[k] then
        error(fmt("rnnt.%s: unknown argument '%s' (expected %s)", fname, tostring(k),
          table.concat(allowed, ", ")), 2)
      end
    end
    local ok, a, b, c = pcall(impl, "rnnt." .. fname, args)
    if not ok then error(a, 2) end
    return a, b, c
  end
end

-- argument parsing -------------------------------------------------------------------------------

-- A float tensor of ndim dims (desc names them, e.g. "(B, S+1, C)").
local function float_arg(fname, args, key, ndim, desc)
  local t = args[key]
  if t == nil then fail(fname, "argument '%s' %s is required", key, desc) end
  if not is_tensor(t) then fail(fname, "'%s' must be a tensor %s, got %s", key, desc, type(t)) end
  if not t:is_floating_point() then
    fail(fname, "'%s' must be a float tensor (f32, f64, f16 or bf16), got %s of shape %s", key,
      t:dtype(), shape_str(t))
  end
  if t:dim() ~= ndim then
    fail(fname, "'%s' must be %d-d %s, got shape %s", key, ndim, desc, shape_str(t))
  end
  return t
end

-- t (argument key) must be on the device of ref (argument ref_key).
local function same_device(fname, key, t, ref_key, ref)
  if t._c.device ~= ref._c.device then
    fail(fname, "'%s' is on %s but '%s' is on %s; put every tensor of the call on one device",
      key, t:device(), ref_key, ref:device())
  end
end

-- The dtype the kernels run in for these float tensors: f64 if any is f64, else f32.
local function kernel_dtype(...)
  for i = 1, select("#", ...) do
    local t = select(i, ...)
    if t and t:dtype() == "f64" then return "f64" end
  end
  return "f32"
end

-- t converted to dtype dt and made contiguous (autograd-aware); private = a new tensor.
local function prepare(t, dt)
  local r = t
  if r:dtype() ~= dt then r = r:to(dt) end
  r = r:contiguous()
  return r, r ~= t
end

-- An index tensor (i64 or i32; a Lua table becomes i64) of the given shape, on the device of
-- the float argument on (named on_key).
local function index_arg(fname, key, t, shape, desc, ref, on_key, on)
  if t == nil then fail(fname, "argument '%s' %s is required", key, desc) end
  if type(t) == "table" and not is_tensor(t) then
    local ok, r = pcall(Tensor.tensor, t, { dtype = "i64", device = on._c.device })
    if not ok then fail(fname, "'%s' must be an i64 tensor %s: %s", key, desc, tostring(r)) end
    t = r
  end
  if not is_tensor(t) then fail(fname, "'%s' must be an i64 tensor %s, got %s", key, desc, type(t)) end
  same_device(fname, key, t, on_key, on)
  local dt = t:dtype()
  if dt ~= "i64" and dt ~= "i32" then
    fail(fname, "'%s' must be an i64 (or i32) tensor %s, got %s of shape %s", key, desc, dt, shape_str(t))
  end
  local ok = t:dim() == #shape
  for i = 1, #shape do ok = ok and t:size(i) == shape[i] end
  if not ok then
    fail(fname, "'%s' has shape %s, expected {%s} %s%s", key, shape_str(t), table.concat(shape, ", "),
      desc, ref or "")
  end
  return t:contiguous()
end

local function boundary_arg(fname, args, B, ref, on_key, on)
  if args.boundary == nil then return nil end
  return index_arg(fname, "boundary", args.boundary, { B, 4 },
    "(B, 4) = [begin_symbol, begin_frame, end_symbol, end_frame] per utterance", ref, on_key, on)
end

local function int_arg(fname, args, key, default)
  local v = args[key]
  if v == nil then
    if default == nil then fail(fname, "argument '%s' is required (an integer)", key) end
    return default
  end
  if type(v) ~= "number" or v ~= math.floor(v) then
    fail(fname, "'%s' must be an integer, got %s", key, tostring(v))
  end
  return v
end

local function number_arg(fname, args, key, default)
  local v = args[key]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v then fail(fname, "'%s' must be a number, got %s", key, tostring(v)) end
  return v
end

local function bool_arg(fname, args, key)
  local v = args[key]
  if v == nil then return false end
  if type(v) ~= "boolean" then fail(fname, "'%s' must be a boolean, got %s", key, tostring(v)) end
  return v
end

local function type_arg(fname, args)
  local v = args.rnnt_type
  if v == nil then return TYPES.regular end
  local n = TYPES[v]
  if n == nil then
    fail(fname, "unknown rnnt_type %s (expected \"regular\", \"modified\" or \"constrained\")",
      type(v) == "string" and ("'" .. v .. "'") or tostring(v))
  end
  return n
end

local function reduction_arg(fname, args)
  local v = args.reduction
  if v == nil then return "mean" end
  if not REDUCTIONS[v] then
    fail(fname, "unknown reduction %s (expected \"none\", \"mean\" or \"sum\")",
      type(v) == "string" and ("'" .. v .. "'") or tostring(v))
  end
  return v
end

local function tensors_of(...) -- "lm {2, 5, 7}, am {2, 9, 7}"
  local parts = {}
  for i = 1, select("#", ...), 2 do
    local name, t = select(i, ...)
    parts[#parts + 1] = name .. " " .. shape_str(t)
  end
  return table.concat(parts, ", ")
end

-- differentiable kernels --------------------------------------------------------------------------

local function px_shape(B, S, T, rtype)
  return { B, S, rtype == TYPES.regular and T + 1 or T }
end

-- a gradient reaching px or py (nil: zeros of shape on device), contiguous, in dtype dt
local function grad_or_zeros(g, shape, dt, device)
  if g == nil then return Tensor.zeros(shape, { dtype = dt, device = device }) end
  if g:dtype() ~= dt then g = g:to(dt) end
  return g:contiguous()
end

-- simple / smoothed logprobs: px, py of the additive joiner lm + am
local function back_simple(gs, ctx)
  local gpx = grad_or_zeros(gs[1], ctx.px_shape, ctx.dtype, ctx.device)
  local gpy = grad_or_zeros(gs[2], ctx.py_shape, ctx.dtype, ctx.device)
  local glm = ctx.need_lm and ctx.lm:empty_like() or nil
  local gam = ctx.need_am and ctx.am:empty_like() or nil
  ccheck("rnnt backward", C.tn_rnnt_logprobs_simple_backward(cptr(glm), cptr(gam), gpx._c, gpy._c,
    ctx.lm._c, ctx.am._c, ctx.symbols._c, cptr(ctx.boundary), ctx.term, ctx.rtype, ctx.lm_only,
    ctx.am_only))
  return glm, gam
end

local function logprobs_simple(fname, lm, am, symbols, boundary, term, rtype, lm_only, am_only, dp)
  local B, S, T = lm:size(1), lm:size(2) - 1, am:size(2)
  local dt = { dtype = lm:dtype(), device = lm:device() }
  local px = Tensor.empty(px_shape(B, S, T, rtype), dt)
  local py = Tensor.empty({ B, S + 1, T }, dt)
  ccheck(fname, C.tn_rnnt_logprobs_simple(px._c, py._c, lm._c, am._c, symbols._c, cptr(boundary),
    term, rtype, lm_only, am_only, dp))
  if grad_enabled() and (needs(lm) or needs(am)) then
    record_multi({ px, py }, "rnnt_logprobs_simple", back_simple, {
      lm = lm, am = am, symbols = symbols, boundary = boundary, term = term, rtype = rtype,
      lm_only = lm_only, am_only = am_only, need_lm = needs(lm), need_am = needs(am),
      px_shape = px:shape(), py_shape = py:shape(), dtype = px:dtype(), device = px:device(),
    }, lm, am)
  end
  return px, py
end

-- joint (full) and pruned logprobs: fused log-softmax over the logits
local OVERWRITTEN = "rnnt backward: the logits of this loss were overwritten by its gradient "
  .. "in an earlier backward (overwrite_logits, or f16/bf16/non-contiguous logits that the loss "
  .. "converted); a second backward through it is not possible"

local function back_band(gs, ctx)
  local lg = ctx.logits
  if lg == nil then error(OVERWRITTEN, 0) end
  local gpx = grad_or_zeros(gs[1], ctx.px_shape, ctx.dtype, ctx.device)
  local gpy = grad_or_zeros(gs[2], ctx.py_shape, ctx.dtype, ctx.device)
  local gl
  if ctx.inplace then
    gl = lg
    ctx.logits = nil
  else
    gl = lg:empty_like()
  end
  if ctx.ranges then
    ccheck("rnnt backward", C.tn_rnnt_logprobs_pruned_backward(gl._c, gpx._c, gpy._c, lg._c,
      ctx.lse._c, ctx.symbols._c, ctx.ranges._c, cptr(ctx.boundary), ctx.term, ctx.rtype))
  else
    ccheck("rnnt backward", C.tn_rnnt_logprobs_joint_backward(gl._c, gpx._c, gpy._c, lg._c,
      ctx.lse._c, ctx.symbols._c, cptr(ctx.boundary), ctx.term, ctx.rtype))
  end
  return gl
end

-- ranges nil: the joint version (logits (B, T, S+1, C)); else pruned (logits (B, T, R, C)).
-- f16 / bf16 logits go to the kernels as they are (read as f32); px, py and lse are then f32.
local function logprobs_band(fname, logits, symbols, ranges, boundary, term, rtype, dp, inplace)
  local B, T, R = logits:size(1), logits:size(2), logits:size(3)
  local S = symbols:size(2)
  local dt = { dtype = logits:dtype() == "f64" and "f64" or "f32", device = logits:device() }
  local px = Tensor.empty(px_shape(B, S, T, rtype), dt)
  local py = Tensor.empty({ B, S + 1, T }, dt)
  local need = grad_enabled() and needs(logits)
  local lse = need and Tensor.empty({ B, T, R }, dt) or nil
  if ranges then
    ccheck(fname, C.tn_rnnt_logprobs_pruned(px._c, py._c, cptr(lse), logits._c, symbols._c,
      ranges._c, cptr(boundary), term, rtype, dp))
  else
    ccheck(fname, C.tn_rnnt_logprobs_joint(px._c, py._c, cptr(lse), logits._c, symbols._c,
      cptr(boundary), term, rtype, dp))
  end
  if need then
    record_multi({ px, py }, ranges and "rnnt_logprobs_pruned" or "rnnt_logprobs_joint", back_band, {
      logits = logits, lse = lse, symbols = symbols, ranges = ranges, boundary = boundary,
      term = term, rtype = rtype, inplace = inplace and logits._node ~= nil,
      px_shape = px:shape(), py_shape = py:shape(), dtype = px:dtype(), device = px:device(),
    }, logits)
  end
  return px, py
end

-- mutual information: scores (B); occupations px_grad, py_grad when asked or needed
local function back_mi(g, ctx)
  local gb = g:contiguous():reshape(g:numel(), 1, 1)
  local gx = ctx.need_px and ctx.px_grad * gb or nil
  local gy = ctx.need_py and ctx.py_grad * gb or nil
  return gx, gy
end

local function mutual_information(fname, px, py, boundary, want_grads)
  local B = px:size(1)
  local scores = Tensor.empty({ B }, { dtype = px:dtype(), device = px:device() })
  local need = grad_enabled() and (needs(px) or needs(py))
  local pxg, pyg
  if need or want_grads then
    pxg, pyg = px:empty_like(), py:empty_like()
  end
  ccheck(fname, C.tn_rnnt_mutual_information(scores._c, cptr(pxg), cptr(pyg), nil, px._c, py._c,
    cptr(boundary)))
  if need then
    record(scores, "rnnt_mutual_information", back_mi, {
      px_grad = pxg, py_grad = pyg, need_px = needs(px), need_py = needs(py),
    }, px, py)
  end
  return scores, pxg, pyg
end

local function reduce(scores, reduction)
  if reduction == "none" then return -scores end
  if reduction == "sum" then return -scores:sum() end
  return -scores:mean()
end

-- lm half of do_pruning: lm_pruned[b, t, k] = lm[b, ranges[b, t, k]]
local function back_pruning(g, ctx)
  local gk = g
  local gdt = gk:dtype()
  if gdt ~= "f32" and gdt ~= "f64" then gk = gk:to("f32") end
  gk = gk:contiguous()
  local gl = Tensor.empty(ctx.lm_shape, { dtype = gk:dtype(), device = gk:device() })
  ccheck("rnnt backward", C.tn_rnnt_do_pruning_backward(gl._c, gk._c, ctx.ranges._c))
  if gl:dtype() ~= ctx.dtype then gl = gl:to(ctx.dtype) end
  return gl
end

-- public functions -----------------------------------------------------------------------------------

-- lm, am, symbols, boundary of the simple / smoothed losses, checked and prepared
local function simple_inputs(fname, args)
  local lm = float_arg(fname, args, "lm", 3, "(B, S+1, C)")
  local am = float_arg(fname, args, "am", 3, "(B, T, C)")
  if lm:size(1) ~= am:size(1) or lm:size(3) ~= am:size(3) then
    fail(fname, "lm (B, S+1, C) and am (B, T, C) must agree in B and C, got %s", tensors_of("lm", lm, "am", am))
  end
  same_device(fname, "am", am, "lm", lm)
  local B, S = lm:size(1), lm:size(2) - 1
  local ref = " (from " .. tensors_of("lm", lm, "am", am) .. ")"
  local symbols = index_arg(fname, "symbols", args.symbols, { B, S }, "(B, S)", ref, "lm", lm)
  local boundary = boundary_arg(fname, args, B, ref, "lm", lm)
  local term = int_arg(fname, args, "termination_symbol")
  local rtype = type_arg(fname, args)
  local dt = kernel_dtype(lm, am)
  return prepare(lm, dt), prepare(am, dt), symbols, boundary, term, rtype
end

M.get_logprobs = api("get_logprobs",
  { "lm", "am", "symbols", "termination_symbol", "boundary", "rnnt_type" },
  function(fname, args)
    local lm, am, symbols, boundary, term, rtype = simple_inputs(fname, args)
    return logprobs_simple(fname, lm, am, symbols, boundary, term, rtype, 0, 0, 0)
  end)

local function simple_loss(fname, args, lm_only, am_only)
  local lm, am, symbols, boundary, term, rtype = simple_inputs(fname, args)
  local dp = number_arg(fname, args, "delay_penalty", 0)
  local reduction = reduction_arg(fname, args)
  local want = bool_arg(fname, args, "return_grad")
  local px, py = logprobs_simple(fname, lm, am, symbols, boundary, term, rtype, lm_only, am_only, dp)
  local scores, pxg, pyg = mutual_information(fname, px, py, boundary, want)
  if want then return reduce(scores, reduction), pxg, pyg end
  return reduce(scores, reduction)
end

local SIMPLE_KEYS = { "lm", "am", "symbols", "termination_symbol", "boundary", "rnnt_type",
  "delay_penalty", "reduction", "return_grad" }

M.loss_simple = api("loss_simple", SIMPLE_KEYS, function(fname, args)
  return simple_loss(fname, args, 0, 0)
end)

M.loss_smoothed = api("loss_smoothed", { "lm", "am", "symbols", "termination_symbol",
  "lm_only_scale", "am_only_scale", "boundary", "rnnt_type", "delay_penalty", "reduction",
  "return_grad" }, function(fname, args)
  local lm_only = number_arg(fname, args, "lm_only_scale", 0.1)
  local am_only = number_arg(fname, args, "am_only_scale", 0.1)
  return simple_loss(fname, args, lm_only, am_only)
end)

-- px (B, S, T+1) or (B, S, T) and py (B, S+1, T) given under keys kx, ky: B, S, T
local function px_py_shapes(fname, px, py, kx, ky)
  local B, S, T = py:size(1), py:size(2) - 1, py:size(3)
  if px:size(1) ~= B or px:size(2) ~= S or (px:size(3) ~= T + 1 and px:size(3) ~= T) then
    fail(fname, "%s must be (B, S, T+1) (regular) or (B, S, T) (modified / constrained) for %s "
      .. "(B, S+1, T), got %s", kx, ky, tensors_of(kx, px, ky, py))
  end
  return B, S, T
end

M.mutual_information_recursion = api("mutual_information_recursion",
  { "px", "py", "boundary", "return_grad" },
  function(fname, args)
    local px = float_arg(fname, args, "px", 3, "(B, S, T+1) or (B, S, T)")
    local py = float_arg(fname, args, "py", 3, "(B, S+1, T)")
    local B = px_py_shapes(fname, px, py, "px", "py")
    same_device(fname, "py", py, "px", px)
    local boundary = boundary_arg(fname, args, B, " (from " .. tensors_of("px", px, "py", py) .. ")", "px", px)
    local want = bool_arg(fname, args, "return_grad")
    local dt = kernel_dtype(px, py)
    local scores, pxg, pyg = mutual_information(fname, prepare(px, dt), prepare(py, dt), boundary, want)
    if want then return scores, pxg, pyg end
    return scores
  end)

-- s_range warning: once per process (fast_rnnt warns on every call). tn.rnnt.warn(msg) writes
-- it to stderr (replace it to route it elsewhere); tn.rnnt.warned = false re-arms it.
M.warned = false
function M.warn(msg) io.stderr:write("tern: ", msg, "\n") end

-- tn_rnnt_prune_s_range's rule (core/rnnt_prune.c prune_s_range_of) over boundary rows given
-- as a Lua table {{begin_symbol, begin_frame, end_symbol, end_frame}, ...}.
local function host_s_range(rows, S, regular, s_range)
  if S == 0 then return 1 end
  if regular then
    local mn = 2
    for _, r in ipairs(rows) do
      local s1, t1 = tonumber(r[3]), tonumber(r[4])
      if t1 and s1 and t1 > 0 then
        local q = (s1 - 1) / t1
        q = q >= 0 and math.floor(q) or math.ceil(q) -- C's truncating division
        if q + 2 > mn then mn = q + 2 end
      end
    end
    if s_range < mn then s_range = mn end
  elseif s_range < 1 then
    s_range = 1
  end
  if s_range > S then s_range = S + 1 end
  return s_range
end

M.get_prune_ranges = api("get_prune_ranges", { "px_grad", "py_grad", "boundary", "s_range" },
  function(fname, args)
    local pxg = float_arg(fname, args, "px_grad", 3, "(B, S, T+1) or (B, S, T)")
    local pyg = float_arg(fname, args, "py_grad", 3, "(B, S+1, T)")
    local B, _, T = px_py_shapes(fname, pxg, pyg, "px_grad", "py_grad")
    same_device(fname, "py_grad", pyg, "px_grad", pxg)
    local boundary = boundary_arg(fname, args, B,
      " (from " .. tensors_of("px_grad", pxg, "py_grad", pyg) .. ")", "px_grad", pxg)
    local s_range = int_arg(fname, args, "s_range")
    if s_range < 1 then fail(fname, "s_range must be a positive integer, got %d", s_range) end
    local dt = kernel_dtype(pxg, pyg)
    pxg = prepare(pxg:detach(), dt)
    pyg = prepare(pyg:detach(), dt)
    local R
    local rows = args.boundary
    if type(rows) == "table" and not is_tensor(rows) and pxg._c.device ~= 0 then
      -- host rows of a device call: the C rule here, so nothing is read back from the device
      -- (the rows themselves are checked by tn_rnnt_prune_ranges on the device)
      R = host_s_range(rows, pyg:size(2) - 1, pxg:size(3) == T + 1, s_range)
    else
      local out = ffi.new("int64_t[1]")
      -- a CUDA boundary tensor is read back once here (s_range sizes the ranges tensor)
      ccheck(fname, C.tn_rnnt_prune_s_range(out, pxg._c, pyg._c, cptr(boundary), s_range))
      R = tonumber(out[0])
    end
    if R > s_range and not M.warned then
      M.warned = true
      M.warn(fmt("%s: s_range = %d cannot cover every utterance (regular RNN-T needs "
        .. "(s_range - 1) * T_b + 1 >= S_b + 1); using s_range = %d (warned once)", fname, s_range, R))
    end
    local ranges = Tensor.empty({ B, T, R }, { dtype = "i64", device = pxg:device() })
    ccheck(fname, C.tn_rnnt_prune_ranges(ranges._c, pxg._c, pyg._c, cptr(boundary)))
    return ranges
  end)

-- am (B, T, D), lm (B, S+1, D) and ranges (B, T, R) of do_pruning / pruned_tanh, checked
local function pruning_args(fname, args)
  local am = float_arg(fname, args, "am", 3, "(B, T, D)")
  local lm = float_arg(fname, args, "lm", 3, "(B, S+1, D)")
  local B, T, D = am:size(1), am:size(2), am:size(3)
  if lm:size(1) ~= B or lm:size(3) ~= D then
    fail(fname, "am (B, T, D) and lm (B, S+1, D) must agree in B and D, got %s", tensors_of("am", am, "lm", lm))
  end
  same_device(fname, "lm", lm, "am", am)
  local r = args.ranges
  if not is_tensor(r) or r:dim() ~= 3 then
    fail(fname, "'ranges' must be an i64 tensor (B, T, s_range), got %s",
      is_tensor(r) and shape_str(r) or type(r))
  end
  local ranges = index_arg(fname, "ranges", r, { B, T, r:size(3) }, "(B, T, s_range)",
    " (from " .. tensors_of("am", am, "lm", lm) .. ")", "am", am)
  return am, lm, ranges, B, T, D
end

M.do_pruning = api("do_pruning", { "am", "lm", "ranges" }, function(fname, args)
  local am, lm, ranges, B, T, D = pruning_args(fname, args)
  local R = ranges:size(3)
  if am:dtype() ~= lm:dtype() then
    fail(fname, "am is %s but lm is %s; convert one of them", am:dtype(), lm:dtype())
  end
  local am_pruned = am:unsqueeze(3):expand(B, T, R, D)
  local lmc = lm:contiguous()
  local lm_pruned = Tensor.empty({ B, T, R, D }, { dtype = lmc:dtype(), device = lmc:device() })
  ccheck(fname, C.tn_rnnt_do_pruning(lm_pruned._c, lmc._c, ranges._c))
  if grad_enabled() and needs(lmc) then
    record(lm_pruned, "rnnt_do_pruning", back_pruning, {
      ranges = ranges, lm_shape = lmc:shape(), dtype = lmc:dtype(),
    }, lmc)
  end
  return am_pruned, lm_pruned
end)

-- h = tanh(am[b, t] + lm[b, ranges[b, t, k]]): one C pass each way (core/rnnt_prune.c)
local function back_pruned_tanh(g, ctx)
  local h = ctx.h
  local gk = g
  if gk:dtype() ~= h:dtype() then gk = gk:to(h:dtype()) end
  gk = gk:contiguous()
  local o = { dtype = h:dtype(), device = h:device() }
  local ga = ctx.need_am and Tensor.empty(ctx.am:shape(), o) or nil
  local gl = ctx.need_lm and Tensor.empty(ctx.lm:shape(), o) or nil
  ccheck("rnnt backward", C.tn_rnnt_pruned_tanh_backward(cptr(ga), cptr(gl), gk._c, h._c,
    ctx.am._c, ctx.lm._c, ctx.ranges._c))
  return ga, gl
end

M.pruned_tanh = api("pruned_tanh", { "am", "lm", "ranges" }, function(fname, args)
  local am, lm, ranges, B, T, D = pruning_args(fname, args)
  local dt = kernel_dtype(am, lm)
  local amc, lmc = prepare(am, dt), prepare(lm, dt)
  local h = Tensor.empty({ B, T, ranges:size(3), D }, { dtype = dt, device = am:device() })
  ccheck(fname, C.tn_rnnt_pruned_tanh(h._c, amc._c, lmc._c, ranges._c))
  if grad_enabled() and (needs(amc) or needs(lmc)) then
    record(h, "rnnt_pruned_tanh", back_pruned_tanh, {
      h = h, am = amc, lm = lmc, ranges = ranges:contiguous(), need_am = needs(amc), need_lm = needs(lmc),
    }, amc, lmc)
  end
  -- f16 / bf16 inputs of one dtype get their dtype back (the kernel ran in f32)
  if am:dtype() == lm:dtype() and am:dtype() ~= dt then return h:to(am:dtype()) end
  return h
end)

local function band_loss(fname, args, pruned)
  local logits = float_arg(fname, args, "logits", 4, pruned and "(B, T, s_range, C)" or "(B, T, S+1, C)")
  local B, T, R = logits:size(1), logits:size(2), logits:size(3)
  local sym = args.symbols
  if type(sym) == "table" and not is_tensor(sym) then
    local ok, r = pcall(Tensor.tensor, sym, { dtype = "i64", device = logits:device() })
    if not ok then fail(fname, "'symbols' must be an i64 tensor (B, S): %s", tostring(r)) end
    sym = r
  end
  if not is_tensor(sym) or sym:dim() ~= 2 then
    fail(fname, "'symbols' must be an i64 tensor (B, S), got %s", is_tensor(sym) and shape_str(sym) or type(sym))
  end
  local S = sym:size(2)
  local ref = " (from logits " .. shape_str(logits) .. ")"
  local symbols = index_arg(fname, "symbols", sym, { B, S }, "(B, S)", ref, "logits", logits)
  if not pruned and R ~= S + 1 then
    fail(fname, "logits must be (B, T, S+1, C) with S+1 = %d for symbols %s, got logits %s", S + 1,
      shape_str(symbols), shape_str(logits))
  end
  local ranges
  if pruned then
    ranges = index_arg(fname, "ranges", args.ranges, { B, T, R }, "(B, T, s_range)", ref, "logits", logits)
  end
  local boundary = boundary_arg(fname, args, B, ref, "logits", logits)
  local term = int_arg(fname, args, "termination_symbol")
  local rtype = type_arg(fname, args)
  local dp = number_arg(fname, args, "delay_penalty", 0)
  local reduction = reduction_arg(fname, args)
  local want = bool_arg(fname, args, "return_grad")
  local overwrite = bool_arg(fname, args, "overwrite_logits")
  local ldt = logits:dtype()
  -- f16 / bf16 logits are read in their dtype by the kernels (log-softmax in f32): no f32 copy
  local lg, private = prepare(logits, (ldt == "f16" or ldt == "bf16") and ldt or kernel_dtype(logits))
  local px, py = logprobs_band(fname, lg, symbols, ranges, boundary, term, rtype, dp, overwrite or private)
  local scores, pxg, pyg = mutual_information(fname, px, py, boundary, want)
  if want then return reduce(scores, reduction), pxg, pyg end
  return reduce(scores, reduction)
end

M.loss_pruned = api("loss_pruned", { "logits", "symbols", "ranges", "termination_symbol", "boundary",
  "rnnt_type", "delay_penalty", "reduction", "return_grad", "overwrite_logits" },
  function(fname, args) return band_loss(fname, args, true) end)

M.loss = api("loss", { "logits", "symbols", "termination_symbol", "boundary", "rnnt_type",
  "delay_penalty", "reduction", "return_grad", "overwrite_logits" },
  function(fname, args) return band_loss(fname, args, false) end)

return M
