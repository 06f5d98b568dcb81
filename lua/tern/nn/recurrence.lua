-- tern.nn.recurrence: the fused recurrences as differentiable ops (multi-output autograd nodes
-- over the C entry points tn_lstm_* and tn_sru_*). The modules LSTM and SRU build on these;
-- the input projections stay ordinary matmuls (one GEMM over all steps).
local lib = require "tern.lib"
local Tensor = require "tern.tensor"
local autograd = require "tern.autograd"

local C, check = lib.C, lib.check
local fmt = string.format
local M = {}

local function cptr(t) return t and t._c or nil end
local function shape_str(t) return "{" .. table.concat(t:shape(), ", ") .. "}" end

-- LSTM --------------------------------------------------------------------------------------

local function back_lstm(gs, ctx)
  local s = ctx.saved
  local w_hh, w_hr, h0, c0 = s.w_hh, s.w_hr, s.h0, s.c0
  local gx = s.xproj:empty_like()
  local gw_hh = w_hh:zeros_like()
  local gw_hr = w_hr and w_hr:zeros_like() or nil
  local gh0 = h0 and autograd.needs(h0) and h0:empty_like() or nil
  local gc0 = c0 and autograd.needs(c0) and c0:empty_like() or nil
  local go, ghn, gcn = gs[1], gs[2], gs[3]
  if go then go = go:contiguous() end
  if ghn then ghn = ghn:contiguous() end
  if gcn then gcn = gcn:contiguous() end
  check(C.tn_lstm_backward(gx._c, gw_hh._c, cptr(gw_hr), cptr(gh0), cptr(gc0),
    cptr(go), cptr(ghn), cptr(gcn), s.out._c, s.gates._c, s.cells._c, cptr(s.hraw),
    w_hh._c, cptr(w_hr), cptr(h0), cptr(c0), cptr(s.lengths), ctx.reverse))
  return gx, gw_hh, gw_hr, gh0, gc0
end

-- out (L, B, P), h_n (B, P), c_n (B, H) of one direction of one layer.
-- xproj (L, B, 4H) = x W_ih^T + b; w_hh (4H, P); w_hr (P, H) or nil; h0, c0 or nil;
-- lengths (B) i64 or nil; reverse boolean.
local HALF = { f16 = true, bf16 = true }
local function f32(t) return t and t:to("f32") or nil end

function M.lstm(xproj, w_hh, w_hr, h0, c0, lengths, reverse)
  -- f16 / bf16: the recurrence runs in f32 (autograd-aware conversions), outputs in xproj's dtype
  if HALF[xproj:dtype()] then
    local dt = xproj:dtype()
    local out, h_n, c_n = M.lstm(f32(xproj), f32(w_hh), f32(w_hr), f32(h0), f32(c0), lengths, reverse)
    return out:to(dt), h_n:to(dt), c_n:to(dt)
  end
  local L, B, H4 = xproj:size(1), xproj:size(2), xproj:size(3)
  local H = H4 / 4
  local P = w_hr and w_hr:size(1) or H
  local opts = { dtype = xproj:dtype(), device = xproj:device() }
  xproj = xproj:contiguous()
  local out = Tensor.empty({ L, B, P }, opts)
  local h_n = Tensor.empty({ B, P }, opts)
  local c_n = Tensor.empty({ B, H }, opts)
  local gates = Tensor.empty({ L, B, H4 }, opts)
  local cells = Tensor.empty({ L, B, H }, opts)
  local hraw = w_hr and Tensor.empty({ L, B, H }, opts) or nil
  w_hh = w_hh:contiguous()
  if w_hr then w_hr = w_hr:contiguous() end
  if h0 then h0 = h0:contiguous() end
  if c0 then c0 = c0:contiguous() end
  check(C.tn_lstm_forward(out._c, h_n._c, c_n._c, gates._c, cells._c, cptr(hraw), xproj._c,
    w_hh._c, cptr(w_hr), cptr(h0), cptr(c0), cptr(lengths), reverse and 1 or 0), 2)
  if autograd.is_enabled() then
    autograd.record_multi({ out, h_n, c_n }, "lstm", back_lstm, {
      reverse = reverse and 1 or 0,
      saved = { xproj = xproj, w_hh = w_hh, w_hr = w_hr, h0 = h0, c0 = c0, lengths = lengths,
        out = out, gates = gates, cells = cells, hraw = hraw },
    }, xproj, w_hh, w_hr or false, h0 or false, c0 or false)
  end
  return out, h_n, c_n
end

-- SRU ---------------------------------------------------------------------------------------

local function back_sru(gs, ctx)
  local s = ctx.saved
  local gU = s.U:empty_like()
  local gx = s.x and autograd.needs(s.x) and s.x:empty_like() or nil
  local gwc = s.weight_c and s.weight_c:zeros_like() or nil
  local gb = s.bias:zeros_like()
  local gc0 = s.c0 and autograd.needs(s.c0) and s.c0:empty_like() or nil
  local gh = gs[1] and gs[1]:contiguous() or s.h:zeros_like()
  local gcl = gs[2] and gs[2]:contiguous() or nil
  check(C.tn_sru_backward(gU._c, cptr(gx), cptr(gwc), gb._c, cptr(gc0), gh._c, cptr(gcl),
    s.U._c, cptr(s.x), cptr(s.weight_c), s.bias._c, cptr(s.c0), s.c._c, cptr(s.mask_c),
    cptr(s.mask_pad), ctx.scale_x, ctx.activation, ctx.has_skip, ctx.bidir))
  return gU, gx, gwc, gb, gc0
end

-- h (L, B, D*d), c_last (B, D*d). U (L, B, D*d*k); x (L, B, D*d) or nil; weight_c (2*D*d) or
-- nil (v1); bias (2*D*d); c0 (B, D*d) or nil; mask_c (B, D*d) or nil; mask_pad (L, B) u8 or
-- nil; opts: scale_x, activation (0|1), has_skip, bidirectional.
function M.sru(U, x, weight_c, bias, c0, mask_c, mask_pad, opts)
  -- f16 / bf16 on the CPU: the recurrence runs in f32 (autograd-aware conversions; gradients
  -- go back in the half dtype), h and c_last come back in U's dtype. On CUDA the kernels take
  -- f16 / bf16 tensors as they are and run the recurrence in f32 themselves (cuda/sru.cu).
  if HALF[U:dtype()] and U:device() == "cpu" then
    local dt = U:dtype()
    local h, c = M.sru(f32(U), f32(x), f32(weight_c), f32(bias), f32(c0), f32(mask_c), mask_pad, opts)
    return h:to(dt), c:to(dt)
  end
  local L, B = U:size(1), U:size(2)
  local D = opts.bidirectional and 2 or 1
  local Dd = bias:numel() / 2
  local dt = { dtype = U:dtype(), device = U:device() }
  U = U:contiguous()
  if x then x = x:contiguous() end
  if c0 then c0 = c0:contiguous() end
  local h = Tensor.empty({ L, B, Dd }, dt)
  local c = Tensor.empty({ L, B, Dd }, dt)
  local c_last = Tensor.empty({ B, Dd }, dt)
  local ctx = {
    scale_x = opts.scale_x or 1, activation = opts.activation or 0,
    has_skip = opts.has_skip == false and 0 or 1, bidir = D == 2 and 1 or 0,
  }
  check(C.tn_sru_forward(h._c, c._c, c_last._c, U._c, cptr(x), cptr(weight_c), bias._c, cptr(c0),
    cptr(mask_c), cptr(mask_pad), ctx.scale_x, ctx.activation, ctx.has_skip, ctx.bidir), 2)
  if autograd.is_enabled() then
    ctx.saved = { U = U, x = x, weight_c = weight_c, bias = bias, c0 = c0, mask_c = mask_c,
      mask_pad = mask_pad, c = c, h = h }
    autograd.record_multi({ h, c_last }, "sru", back_sru, ctx, U, x or false,
      weight_c or false, bias, c0 or false)
  end
  return h, c_last
end

-- argument checks shared by the modules ------------------------------------------------------

-- lengths given as a Lua table or a tensor -> i64 tensor (B) on device (default: the CPU),
-- checked against L and B. The checks read the values on the CPU (a tensor on a device is
-- copied there once: that waits for the device; pass lengths from the CPU, e.g. the loader's
-- batch or a Lua table, to keep the step free of it). tn_lstm_* take CPU lengths for CUDA
-- tensors too (the kernels upload them without waiting), so LSTM keeps them on the CPU.
function M.check_lengths(name, lengths, L, B, level, device)
  if lengths == nil then return nil end
  if type(lengths) == "table" and not Tensor.is_tensor(lengths) then
    -- as f64 first: a fractional length must not be truncated silently
    lengths = Tensor.tensor(lengths, { dtype = "f64" })
  end
  if not Tensor.is_tensor(lengths) then
    error(fmt("%s: lengths must be a tensor or a table of numbers, got %s", name, type(lengths)), level + 1)
  end
  lengths = lengths:detach()
  if lengths:device() ~= "cpu" then lengths = lengths:cpu() end
  if lengths:dim() ~= 1 or lengths:size(1) ~= B then
    error(fmt("%s: lengths must have shape {%d} (one per sequence), got %s", name, B,
      shape_str(lengths)), level + 1)
  end
  if lengths:is_floating_point() then
    for i, v in ipairs(lengths:totable()) do
      if v ~= math.floor(v) then
        error(fmt("%s: lengths must be whole numbers, got %s at index %d", name, tostring(v), i), level + 1)
      end
    end
  end
  lengths = lengths:to("i64"):contiguous()
  local mn, mx = lengths:min():item(), lengths:max():item()
  if mn <= 0 then error(fmt("%s: lengths must be >= 1, got %d", name, mn), level + 1) end
  if mx > L then
    error(fmt("%s: lengths must be <= the sequence length %d, got %d", name, L, mx), level + 1)
  end
  if device ~= nil and device ~= "cpu" then lengths = lengths:to(device) end
  return lengths
end

-- A recurrent state argument (h0, c0) of a module: a tensor of exactly the shape want.
function M.check_state(name, what, t, want, level)
  if not Tensor.is_tensor(t) or table.concat(t:shape(), ",") ~= table.concat(want, ",") then
    error(fmt("%s: %s must have shape {%s}, got %s", name, what, table.concat(want, ", "),
      Tensor.is_tensor(t) and shape_str(t) or type(t)), level + 1)
  end
end

-- The sequence input of a recurrent module: a 3-d tensor with input_size features, of the
-- parameters' dtype (and device, when given). Returns the time-major view x (L, B, in), L and B.
function M.check_input(name, input, batch_first, input_size, dtype, level, device)
  level = (level or 2) + 1
  if not Tensor.is_tensor(input) then
    error(fmt("%s: input must be a tensor, got %s", name, type(input)), level)
  end
  if input:dim() ~= 3 then
    error(fmt("%s: input must be 3-d (%s), got shape %s", name,
      batch_first and "B, L, input_size" or "L, B, input_size", shape_str(input)), level)
  end
  local x = batch_first and input:transpose(1, 2) or input
  if x:size(3) ~= input_size then
    error(fmt("%s: input has %d features in shape %s, expected input_size = %d", name, x:size(3),
      shape_str(input), input_size), level)
  end
  if input:dtype() ~= dtype then
    error(fmt("%s: input is %s but the parameters are %s", name, input:dtype(), dtype), level)
  end
  if device ~= nil and input:device() ~= device then
    error(fmt("%s: input is on %s but the parameters are on %s; move one of them (input:to(\"%s\") or "
      .. "module:to(\"%s\"))", name, input:device(), device, device, input:device()), level)
  end
  return x, x:size(1), x:size(2)
end

M.shape_str = shape_str
return M
