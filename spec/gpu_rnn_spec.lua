-- Specs of the recurrences on CUDA (cuda/sru.cu and cuda/lstm.cu behind core/sru.c and
-- core/lstm.c): tn_sru_* and tn_lstm_* through tern.nn.recurrence and the modules nn.SRU /
-- nn.LSTM moved with :cuda(), each compared with the CPU on the same inputs — forward outputs
-- and every gradient — for every option the CPU specs (rnn_spec.lua) exercise: SRU with three
-- or four matrices, with and without the skip term, identity or tanh, v1 (no weight_c),
-- bidirectional, c0, the dropout mask on h, mask_pad, scale_x, zero steps; LSTM forward and
-- reverse, with and without h0 / c0, a projection, lengths. f64 and f32 (TF32 off for the
-- LSTM's GEMMs) against the CPU in the same dtype, f16 / bf16 against the CPU's f32 run on the
-- same rounded inputs; f64 finite-difference gradient checks on the GPU; errors equal to the
-- CPU's, and the error for tensors on two devices.
--
-- The #gpu blocks need a GPU and are skipped (and counted) without one. The device checks of
-- the last block use a cpu tensor whose header says cuda (as errors_spec.lua does) and run on
-- every build.
local h = require "helpers.init"
local g = require "helpers.gpu"
local tn = h.tn
local nn = tn.nn
local R = require "tern.nn.recurrence"

local contains = h.contains

-- Largest |x| of a CPU tensor (0 for an empty one).
local function max_abs(t)
  if t:numel() == 0 then return 0 end
  return t:double():abs():max():item()
end

-- got (any device, any float dtype) is close to expected (CPU): |diff| <= rel * (max |expected|
-- + 1e-3) + rel * |expected| elementwise.
local function near(expected, got, rel, what)
  got = got:cpu():double()
  expected = expected:cpu():double()
  local atol = rel * (max_abs(expected) + 1e-3)
  local ok, msg = h.compare(expected, got, { atol = atol, rtol = rel })
  assert(ok, (what or "tensor") .. ": " .. tostring(msg))
end

-- relative tolerances of a GPU run against the CPU's, by the GPU run's dtype
local TOL = { f64 = 1e-10, f32 = 2e-5, f16 = 3e-2, bf16 = 1.2e-1 }
local GTOL = { f64 = 1e-10, f32 = 1e-4, f16 = 6e-2, bf16 = 2.5e-1 } -- gradients

local pad_mask = h.pad_mask

-- a deterministic 0 / 2 dropout mask (B, n) (p = 0.5, scaled)
local function drop_mask(B, n)
  local rows = {}
  for b = 1, B do
    rows[b] = {}
    for j = 1, n do rows[b][j] = ((b * 7 + j * 3) % 5 < 2) and 0 or 2 end
  end
  return tn.tensor(rows, { dtype = "f64" })
end

local function with_tf32_off(fn)
  local was = tn.cuda.get_tf32()
  tn.cuda.set_tf32(false)
  local ok, err = pcall(fn)
  tn.cuda.set_tf32(was)
  if not ok then error(err, 0) end
end

-- Runs fn(inputs) with every float tensor of the table `inputs` converted to dtype, moved to
-- device and (names listed in `wrt`) made a leaf that requires grad; fn returns the outputs;
-- the loss is sum_i <out_i, seed_i>. Returns the outputs and the gradients by name (CPU).
local function run(fn, inputs, wrt, seeds, dtype, device)
  local x = {}
  for k, v in pairs(inputs) do
    if tn.is_tensor(v) then
      local t = v
      if t:is_floating_point() then t = t:to(dtype) end
      t = t:to(device):contiguous()
      if wrt[k] then t = t:detach():requires_grad(true) end
      x[k] = t
    else
      x[k] = v
    end
  end
  local outs = { fn(x) }
  local loss
  for i, o in ipairs(outs) do
    if seeds[i] and o:numel() > 0 then
      local term = (o:to("f64") * seeds[i]:to(device)):sum()
      loss = loss and loss + term or term
    end
  end
  if loss then loss:backward() end
  local grads = {}
  for k in pairs(wrt) do
    if x[k] then grads[k] = rawget(x[k], "grad") end
  end
  local res = {}
  for i, o in ipairs(outs) do res[i] = o:detach():cpu() end
  return res, grads
end

-- Compares a GPU run in dtype with the CPU's: in the same dtype for f32 / f64, in f32 on the
-- same rounded inputs for f16 / bf16. Outputs must be on cuda, of dtype.
local function compare(fn, inputs, wrt, seeds, dtype, what)
  local ref_inputs, ref_dtype = inputs, dtype
  if dtype == "f16" or dtype == "bf16" then
    ref_inputs, ref_dtype = {}, "f32"
    for k, v in pairs(inputs) do
      ref_inputs[k] = (tn.is_tensor(v) and v:is_floating_point()) and v:to(dtype):to("f32") or v
    end
  end
  local eo, eg = run(fn, ref_inputs, wrt, seeds, ref_dtype, "cpu")
  local go, gg = run(fn, ref_inputs, wrt, seeds, dtype, "cuda")
  for i = 1, #eo do
    assert.are.same(eo[i]:shape(), go[i]:shape())
    near(eo[i], go[i], TOL[dtype], what .. ": output " .. i)
  end
  for k in pairs(wrt) do
    if eg[k] or gg[k] then
      assert.truthy(eg[k] and gg[k], what .. ": gradient of " .. k .. " on one device only")
      assert.are.equal("cuda", gg[k]:device(), what .. ": gradient of " .. k)
      near(eg[k], gg[k], GTOL[dtype], what .. ": gradient of " .. k)
    end
  end
end

-- Per dtype, an `it` per configuration of cases comparing fn_of(cfg) on the GPU with the CPU
-- (compare) on inputs_of(cfg); wrap(fn), when given, runs each comparison (the LSTM's turns
-- TF32 off).
local function it_equals_cpu(what, cases, inputs_of, fn_of, wrt, wrap)
  wrap = wrap or function(fn) fn() end
  for _, dt in ipairs({ "f64", "f32", "f16", "bf16" }) do
    describe(dt, function()
      for _, cfg in ipairs(cases) do
        it("equals the cpu, forward and every gradient: " .. cfg.name, function()
          local inputs, seeds = inputs_of(cfg)
          wrap(function()
            compare(fn_of(cfg), inputs, wrt, seeds, dt, what .. " " .. dt .. " " .. cfg.name)
          end)
        end)
      end
    end)
  end
end

-- The reference of a module comparison: make(5, 4, o) in eval mode, o a copy of opts with
-- dtype f64 (the compared modules are built from o too and load the reference's state).
local function f64_ref(make, opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.dtype = "f64"
  local ref = make(5, 4, o)
  ref:eval()
  return ref, o
end

-- The CPU module's gradients eg all exist on the GPU (gg) and agree within twice GTOL[dt].
local function near_grads(eg, gg, dt)
  for k, v in pairs(eg) do
    assert.truthy(gg[k], "no gradient of " .. k .. " on cuda")
    near(v, gg[k], GTOL[dt] * 2, "gradient of " .. k)
  end
end

-- ---- SRU ---------------------------------------------------------------------------------

-- The inputs of one SRU configuration: cfg = {L, B, d, k, bidir, skip, act, v1, c0, mask_c,
-- lengths (mask_pad), scale_x}.
local function sru_inputs(cfg)
  tn.manual_seed(cfg.seed or 7)
  local L, B, d, k = cfg.L or 5, cfg.B or 3, cfg.d or 4, cfg.k or 3
  local D = cfg.bidir and 2 or 1
  local Dd = D * d
  local skip = cfg.skip ~= false
  local f64 = { dtype = "f64" }
  return {
    U = tn.randn({ L, B, Dd * k }, f64),
    x = (k == 3 and skip) and tn.randn({ L, B, Dd }, f64) or nil,
    weight_c = (not cfg.v1) and tn.randn({ 2 * Dd }, f64) * 0.5 or nil,
    bias = tn.randn({ 2 * Dd }, f64) * 0.3,
    c0 = cfg.c0 and tn.randn({ B, Dd }, f64) or nil,
    mask_c = cfg.mask_c and drop_mask(B, Dd) or nil,
    mask_pad = cfg.lengths and pad_mask(cfg.lengths, L) or nil,
  }, {
    tn.randn({ L, B, Dd }, f64),
    cfg.no_c_seed and nil or tn.randn({ B, Dd }, f64),
  }
end

local function sru_fn(cfg)
  return function(x)
    return R.sru(x.U, x.x, x.weight_c, x.bias, x.c0, x.mask_c, x.mask_pad, {
      scale_x = cfg.scale_x or 1, activation = cfg.act or 0, has_skip = cfg.skip ~= false,
      bidirectional = cfg.bidir == true,
    })
  end
end

local SRU_WRT = { U = true, x = true, weight_c = true, bias = true, c0 = true }

local SRU_CASES = {
  { name = "k = 3 with the skip term" },
  { name = "k = 4", k = 4 },
  { name = "no skip term, k = 3", skip = false },
  { name = "no skip term, k = 4", skip = false, k = 4 },
  { name = "tanh", act = 1, c0 = true },
  { name = "v1 (no weight_c)", v1 = true },
  { name = "bidirectional with c0", bidir = true, c0 = true },
  { name = "bidirectional, k = 4, tanh", bidir = true, k = 4, act = 1 },
  { name = "the dropout mask on h", mask_c = true, c0 = true },
  { name = "mask_pad", lengths = { 5, 2, 4 }, c0 = true },
  { name = "mask_pad, bidirectional, k = 4", lengths = { 3, 5, 1 }, bidir = true, k = 4, c0 = true },
  { name = "scale_x", scale_x = 1.7, c0 = true },
  { name = "only h's gradient", no_c_seed = true, bidir = true },
  { name = "a long sequence and many columns", L = 40, B = 5, d = 70, bidir = true, c0 = true, lengths = { 40, 17, 1, 33, 40 } },
}

describe("sru on cuda #gpu", function()
  it_equals_cpu("sru", SRU_CASES, sru_inputs, sru_fn, SRU_WRT)

  it("of zero steps gives c_last = c0 (zeros without c0) and grad_c0 = grad_c_last", function()
    for _, with_c0 in ipairs({ true, false }) do
      local inputs, seeds = sru_inputs({ L = 0, c0 = with_c0 })
      compare(sru_fn({}), inputs, SRU_WRT, seeds, "f32", "sru, zero steps")
    end
  end)

  it("gives h and c_last in the input's f16 / bf16 dtype on cuda", function()
    local inputs = sru_inputs({ c0 = true })
    for _, dt in ipairs({ "f16", "bf16" }) do
      local x = {}
      for k, v in pairs(inputs) do x[k] = v:is_floating_point() and v:to(dt):cuda() or v:cuda() end
      local hh, cl = sru_fn({})(x)
      assert.are.equal(dt, hh:dtype())
      assert.are.equal(dt, cl:dtype())
      assert.are.equal("cuda", hh:device())
    end
  end)

  it("gives bit-identical parameter gradients on every run (no atomics)", function()
    local cfg = { L = 30, B = 16, d = 33, bidir = true, c0 = true }
    local inputs, seeds = sru_inputs(cfg)
    for _, dt in ipairs({ "f32", "f16" }) do
      local _, g1 = run(sru_fn(cfg), inputs, SRU_WRT, seeds, dt, "cuda")
      local _, g2 = run(sru_fn(cfg), inputs, SRU_WRT, seeds, dt, "cuda")
      g.same_bits(g1.weight_c:cpu(), g2.weight_c:cpu(), "weight_c gradient")
      g.same_bits(g1.bias:cpu(), g2.bias:cpu(), "bias gradient")
    end
  end)

  it("adds into grad_weight_c and grad_bias (+=) and writes grad_U (=)", function()
    local inputs = sru_inputs({ c0 = true })
    local C = tn.C
    local x = {}
    for k, v in pairs(inputs) do x[k] = v:cuda() end
    local L, B, Dd = 5, 3, 4
    local hh, c, cl = tn.empty({ L, B, Dd }, { dtype = "f64", device = "cuda" }),
      tn.empty({ L, B, Dd }, { dtype = "f64", device = "cuda" }), tn.empty({ B, Dd }, { dtype = "f64", device = "cuda" })
    assert.are.equal(0, C.tn_sru_forward(hh._c, c._c, cl._c, x.U._c, x.x._c, x.weight_c._c, x.bias._c, x.c0._c,
      nil, nil, 1, 0, 1, 0))
    local gh = tn.ones({ L, B, Dd }, { dtype = "f64", device = "cuda" })
    local function backward(gw, gb)
      local gU = tn.full({ L, B, 3 * Dd }, 7, { dtype = "f64", device = "cuda" })
      assert.are.equal(0, C.tn_sru_backward(gU._c, nil, gw._c, gb._c, nil, gh._c, nil, x.U._c, x.x._c,
        x.weight_c._c, x.bias._c, x.c0._c, c._c, nil, nil, 1, 0, 1, 0))
      return gU
    end
    local gw0, gb0 = tn.zeros({ 2 * Dd }, { dtype = "f64", device = "cuda" }), tn.zeros({ 2 * Dd }, { dtype = "f64", device = "cuda" })
    local gU1 = backward(gw0, gb0)
    local gw1, gb1 = tn.full({ 2 * Dd }, 1.5, { dtype = "f64", device = "cuda" }), tn.full({ 2 * Dd }, -2, { dtype = "f64", device = "cuda" })
    local gU2 = backward(gw1, gb1)
    g.same_bits(gU1:cpu(), gU2:cpu(), "grad_U")
    near(gw0:cpu() + 1.5, gw1:cpu(), 1e-14, "grad_weight_c +=")
    near(gb0:cpu() - 2, gb1:cpu(), 1e-14, "grad_bias +=")
  end)
end)

-- f64 finite differences on the GPU of fn(x): x holds fixed (tensors already on the GPU, or
-- host values) and, as the inputs differentiated, CUDA copies of inputs[k] for each k of keys
-- that inputs has.
local function gradcheck_cuda(fn, inputs, keys, fixed)
  local names, list = {}, {}
  for _, k in ipairs(keys) do
    if inputs[k] then
      names[#names + 1] = k
      list[#list + 1] = inputs[k]:cuda():requires_grad(true)
    end
  end
  assert.gradcheck(function(...)
    local x = {}
    for k, v in pairs(fixed) do x[k] = v end
    local args = { ... }
    for i, k in ipairs(names) do x[k] = args[i] end
    return fn(x)
  end, list)
end

-- An `it` per configuration of cases: gradcheck_cuda of fn_of(cfg) over the keys of
-- inputs_of(cfg), with fixed_of(inputs) held fixed.
local function it_gradchecks(cases, inputs_of, fn_of, keys, fixed_of)
  for _, cfg in ipairs(cases) do
    it("are right: " .. cfg.name, function()
      local inputs = inputs_of(cfg)
      gradcheck_cuda(fn_of(cfg), inputs, keys, fixed_of(inputs))
    end)
  end
end

describe("sru gradients on cuda (f64 finite differences) #gpu", function()
  local cases = {
    { name = "k = 3, skip, c0", L = 3, B = 2, d = 2, c0 = true },
    { name = "k = 4, tanh, bidirectional", L = 3, B = 2, d = 2, k = 4, act = 1, bidir = true, c0 = true },
    { name = "mask_pad and the dropout mask, bidirectional", L = 3, B = 2, d = 2, bidir = true, c0 = true,
      lengths = { 3, 1 }, mask_c = true },
    { name = "no skip term, v1, scale_x", L = 3, B = 2, d = 2, skip = false, v1 = true, scale_x = 1.3 },
    { name = "k = 3, scale_x", L = 3, B = 2, d = 2, scale_x = 0.7 },
  }
  it_gradchecks(cases, sru_inputs, sru_fn, { "U", "x", "weight_c", "bias", "c0" }, function(inputs)
    return { mask_c = inputs.mask_c and inputs.mask_c:cuda(), mask_pad = inputs.mask_pad and inputs.mask_pad:cuda() }
  end)
end)

describe("nn.SRU on cuda #gpu", function()
  local configs = {
    { name = "two bidirectional layers, c0 and mask_pad", opts = { num_layers = 2, bidirectional = true },
      c0 = true, lengths = { 6, 3, 1 } },
    { name = "a projection, layer norm, rescale and a highway bias",
      opts = { num_layers = 2, projection_size = 3, layer_norm = true, rescale = true, highway_bias = -1 } },
    { name = "v1, use_tanh, no skip term, batch_first", opts = { v1 = true, use_tanh = true, has_skip_term = false,
      batch_first = true } },
  }
  for _, dt in ipairs({ "f64", "f32", "f16", "bf16" }) do
    for _, c in ipairs(configs) do
      it("equals the module on the cpu (" .. dt .. "): " .. c.name, function()
        tn.manual_seed(3)
        local ref, o = f64_ref(nn.SRU, c.opts)
        local L, B = 6, 3
        local xin = c.opts.batch_first and tn.randn({ B, L, 5 }, { dtype = "f64" }) or tn.randn({ L, B, 5 }, { dtype = "f64" })
        local c0 = c.c0 and tn.randn({ ref.num_layers, B, ref.output_size }, { dtype = "f64" }) or nil
        local mask = c.lengths and pad_mask(c.lengths, L) or nil
        if mask and c.opts.batch_first then mask = mask:t():contiguous() end
        local cpu_dt = (dt == "f16" or dt == "bf16") and "f32" or dt
        local function go(device, mdt, idt)
          local m = nn.SRU(5, 4, o)
          m:load_state_dict(ref:state_dict())
          m:eval()
          m:to(idt)
          if idt ~= mdt then -- the reference of a half model: its rounded weights in f32
            m:to(mdt)
          end
          m:to(device)
          -- (detach: to() returns the very tensor when nothing changes)
          local x = xin:to(dt):to(mdt):to(device):detach():requires_grad(true)
          local s = c0 and c0:to(dt):to(mdt):to(device):detach():requires_grad(true) or nil
          local hh, cc = m(x, s, { mask_pad = mask and mask:to(device) })
          local loss = hh:to("f64"):sum() + (cc:to("f64") * cc:to("f64")):sum()
          loss:backward()
          local grads = { x = x.grad, c0 = s and s.grad }
          for name, p in m:named_parameters() do grads[name] = p.grad end
          return hh, cc, grads
        end
        local eh, ec, eg = go("cpu", cpu_dt, dt)
        local gh, gc, gg = go("cuda", dt, dt)
        assert.are.equal("cuda", gh:device())
        assert.are.equal(dt, gh:dtype())
        near(eh, gh, TOL[dt] * 2, "h")
        near(ec, gc, TOL[dt] * 2, "c")
        near_grads(eg, gg, dt)
      end)
    end
  end
end)

-- ---- LSTM --------------------------------------------------------------------------------

-- cfg = {L, B, H, P (projection or nil), h0, c0, lengths, reverse}
local function lstm_inputs(cfg)
  tn.manual_seed(cfg.seed or 9)
  local L, B, H = cfg.L or 5, cfg.B or 3, cfg.H or 4
  local P = cfg.P or H
  local f64 = { dtype = "f64" }
  return {
    xproj = tn.randn({ L, B, 4 * H }, f64),
    w_hh = tn.randn({ 4 * H, P }, f64) * 0.4,
    w_hr = cfg.P and tn.randn({ P, H }, f64) * 0.5 or nil,
    h0 = cfg.h0 and tn.randn({ B, P }, f64) or nil,
    c0 = cfg.c0 and tn.randn({ B, H }, f64) or nil,
    lengths = cfg.lengths and tn.tensor(cfg.lengths, { dtype = "i64" }) or nil,
  }, {
    (not cfg.no_out_seed) and tn.randn({ L, B, P }, f64) or nil,
    tn.randn({ B, P }, f64),
    tn.randn({ B, H }, f64),
  }
end

local function lstm_fn(cfg)
  return function(x)
    -- lengths stay on the CPU (nn.LSTM keeps them there); the device copy is tested apart
    local len = x.lengths and x.lengths:cpu() or nil
    return R.lstm(x.xproj, x.w_hh, x.w_hr, x.h0, x.c0, len, cfg.reverse == true)
  end
end

local LSTM_WRT = { xproj = true, w_hh = true, w_hr = true, h0 = true, c0 = true }

local LSTM_CASES = {
  { name = "forward, no initial state" },
  { name = "forward with h0 and c0", h0 = true, c0 = true },
  { name = "reverse with h0 and c0", reverse = true, h0 = true, c0 = true },
  { name = "a projection", P = 3, h0 = true, c0 = true },
  { name = "a projection, reverse, lengths", P = 2, reverse = true, h0 = true, c0 = true, lengths = { 5, 2, 3 } },
  { name = "lengths", lengths = { 5, 1, 3 }, h0 = true, c0 = true },
  { name = "lengths, reverse", lengths = { 2, 5, 4 }, reverse = true, h0 = true, c0 = true },
  { name = "lengths, reverse, no initial state", lengths = { 2, 5, 4 }, reverse = true },
  { name = "lengths shorter than L everywhere", lengths = { 2, 3, 1 }, h0 = true },
  { name = "only the state's gradients", no_out_seed = true, h0 = true, c0 = true },
  { name = "many units", L = 12, B = 7, H = 40, h0 = true, c0 = true, lengths = { 12, 5, 1, 12, 9, 3, 7 } },
}

describe("lstm on cuda #gpu", function()
  it_equals_cpu("lstm", LSTM_CASES, lstm_inputs, lstm_fn, LSTM_WRT, with_tf32_off)

  it("takes lengths on the gpu too (copied to the host)", function()
    local cfg = { lengths = { 5, 2, 3 }, h0 = true, c0 = true, reverse = true }
    local inputs = lstm_inputs(cfg)
    local x = {}
    for k, v in pairs(inputs) do x[k] = v:cuda() end
    local o1 = R.lstm(x.xproj, x.w_hh, nil, x.h0, x.c0, x.lengths, true)
    local o2 = R.lstm(x.xproj, x.w_hh, nil, x.h0, x.c0, x.lengths:cpu(), true)
    g.same_bits(o2:cpu(), o1:cpu(), "out")
  end)

  it("runs f32 with TF32 GEMMs within TF32 rounding of the cpu", function()
    local was = tn.cuda.get_tf32()
    tn.cuda.set_tf32(true)
    local inputs, seeds = lstm_inputs({ h0 = true, c0 = true, H = 16 })
    local eo = run(lstm_fn({}), inputs, LSTM_WRT, seeds, "f32", "cpu")
    local go = run(lstm_fn({}), inputs, LSTM_WRT, seeds, "f32", "cuda")
    tn.cuda.set_tf32(was)
    near(eo[1], go[1], 1e-2, "out")
  end)
end)

describe("lstm gradients on cuda (f64 finite differences) #gpu", function()
  local cases = {
    { name = "forward with h0, c0", L = 3, B = 2, H = 2, h0 = true, c0 = true },
    { name = "reverse with lengths", L = 3, B = 2, H = 2, h0 = true, c0 = true, lengths = { 3, 1 }, reverse = true },
    { name = "a projection and lengths", L = 3, B = 2, H = 3, P = 2, h0 = true, c0 = true, lengths = { 2, 3 } },
  }
  it_gradchecks(cases, lstm_inputs, lstm_fn, { "xproj", "w_hh", "w_hr", "h0", "c0" }, function(inputs)
    return { lengths = inputs.lengths }
  end)
end)

describe("nn.LSTM on cuda #gpu", function()
  local configs = {
    { name = "two bidirectional layers with lengths", opts = { num_layers = 2, bidirectional = true },
      lengths = { 6, 2, 4 } },
    { name = "proj_size, bidirectional, batch_first", opts = { proj_size = 2, bidirectional = true, batch_first = true } },
    { name = "no bias, one layer", opts = { bias = false } },
  }
  for _, dt in ipairs({ "f64", "f32", "f16", "bf16" }) do
    for _, c in ipairs(configs) do
      it("equals the module on the cpu (" .. dt .. "): " .. c.name, function()
        with_tf32_off(function()
          tn.manual_seed(5)
          local ref, o = f64_ref(nn.LSTM, c.opts)
          local L, B = 6, 3
          local D = o.bidirectional and 2 or 1
          local P = (o.proj_size or 0) > 0 and o.proj_size or 4
          local xin = o.batch_first and tn.randn({ B, L, 5 }, { dtype = "f64" }) or tn.randn({ L, B, 5 }, { dtype = "f64" })
          local h0 = tn.randn({ (o.num_layers or 1) * D, B, P }, { dtype = "f64" })
          local c0 = tn.randn({ (o.num_layers or 1) * D, B, 4 }, { dtype = "f64" })
          local cpu_dt = (dt == "f16" or dt == "bf16") and "f32" or dt
          local function go(device, mdt)
            local m = nn.LSTM(5, 4, o)
            m:load_state_dict(ref:state_dict())
            m:eval()
            m:to(dt)
            m:to(mdt)
            m:to(device)
            local x = xin:to(dt):to(mdt):to(device):detach():requires_grad(true)
            local s0 = h0:to(dt):to(mdt):to(device):detach():requires_grad(true)
            local s1 = c0:to(dt):to(mdt):to(device):detach():requires_grad(true)
            local out, st = m(x, { s0, s1 }, { lengths = c.lengths })
            local loss = out:to("f64"):sum() + st[1]:to("f64"):sum() + (st[2]:to("f64") * 0.5):sum()
            loss:backward()
            local grads = { x = x.grad, h0 = s0.grad, c0 = s1.grad }
            for name, p in m:named_parameters() do grads[name] = p.grad end
            return out, st, grads
          end
          local eo, es, eg = go("cpu", cpu_dt)
          local go_, gs, gg = go("cuda", dt)
          assert.are.equal("cuda", go_:device())
          assert.are.equal(dt, go_:dtype())
          near(eo, go_, TOL[dt] * 2, "output")
          near(es[1], gs[1], TOL[dt] * 2, "h_n")
          near(es[2], gs[2], TOL[dt] * 2, "c_n")
          near_grads(eg, gg, dt)
        end)
      end)
    end
  end
end)

-- ---- errors ------------------------------------------------------------------------------

describe("the recurrences' errors on cuda #gpu", function()
  local function sru_call(x)
    return R.sru(x.U, x.x, x.weight_c, x.bias, x.c0, nil, x.mask_pad, { bidirectional = x.bidir })
  end
  local function sru_base()
    local inputs = sru_inputs({ c0 = true })
    inputs.bidir = false
    return inputs
  end

  it("are the cpu's for bad SRU shapes and dtypes", function()
    local x = sru_base()
    x.c0 = tn.zeros({ 2, 4 }, { dtype = "f64" })
    g.same_error(sru_call, x, "'c0' has shape [2, 4], expected (B, D*d) = [3, 4]")
    x = sru_base()
    x.mask_pad = tn.zeros({ 3, 5 }, { dtype = "u8" })
    g.same_error(sru_call, x, "'mask_pad' has shape [3, 5], expected (L, B) = [5, 3]")
    x = sru_base()
    x.weight_c = tn.zeros({ 10 }, { dtype = "f64" })
    g.same_error(sru_call, x, "argument 'weight_c' has shape [10], expected (2*D*d) = [8]")
    x = sru_base()
    x.c0 = x.c0:float()
    g.same_error(sru_call, x, "has dtype f32 but U")
    x = sru_base()
    x.U = tn.zeros({ 5, 3, 10 }, { dtype = "f64" })
    g.same_error(sru_call, x, "U's last dim must be D*d*k")
    x = sru_base() -- D*d = 3 (from bias) cannot split in two directions
    x.bidir = true
    x.U = tn.zeros({ 5, 3, 9 }, { dtype = "f64" })
    x.x = tn.zeros({ 5, 3, 3 }, { dtype = "f64" })
    x.bias = tn.zeros({ 6 }, { dtype = "f64" })
    x.weight_c = tn.zeros({ 6 }, { dtype = "f64" })
    x.c0 = nil
    g.same_error(sru_call, x, "an even last dim (bidirectional)")
  end)

  it("are the cpu's for bad LSTM lengths and shapes", function()
    local inputs = lstm_inputs({ h0 = true, c0 = true })
    local function call(x) return R.lstm(x.xproj, x.w_hh, nil, x.h0, x.c0, x.lengths, false) end
    local x = {}
    for k, v in pairs(inputs) do x[k] = v end
    x.lengths = tn.tensor({ 5, 6, 1 }, { dtype = "i64" })
    local msg = g.same_error(function(y) return call({ xproj = y.xproj, w_hh = y.w_hh, h0 = y.h0, c0 = y.c0,
      lengths = x.lengths }) end, x, "lengths[1] = 6 is out of range 1..5")
    contains(msg, "lstm_forward")
    x.lengths = nil
    x.c0 = tn.zeros({ 3, 5 }, { dtype = "f64" })
    g.same_error(call, x, "argument 'c0' has shape [3, 5] but (B, H) = [3, 4] was expected")
    x.c0 = inputs.c0:float()
    g.same_error(call, x, "argument 'c0' [3, 4] is f32 but xproj is f64")
  end)

  it("name the devices for tensors on two devices", function()
    local x = sru_base()
    local gx = g.to_gpu(x)
    gx.bias = x.bias -- on the cpu
    contains(h.error_of(sru_call, gx), "argument 'bias' (shape [8]) is on cpu:0 but U (shape [5, 3, 12]) is on cuda:0")
    x.c0 = x.c0:cuda()
    contains(h.error_of(sru_call, x), "all tensors must be on one device")
    local li = lstm_inputs({ h0 = true })
    contains(h.error_of(R.lstm, li.xproj:cuda(), li.w_hh, nil, li.h0:cuda(), nil, nil, false),
      "argument 'w_hh' [16, 4] is on cpu:0 but xproj is on cuda:0")
  end)

  it("come from the modules for inputs on another device than the parameters", function()
    local m = nn.SRU(5, 4, { num_layers = 1 }):cuda()
    contains(h.error_of(m, tn.randn(3, 2, 5)), "SRU: input is on cpu but the parameters are on cuda")
    local l = nn.LSTM(5, 4):cuda()
    contains(h.error_of(l, tn.randn(3, 2, 5)), "LSTM: input is on cpu but the parameters are on cuda")
  end)
end)

-- ---- device checks on every build --------------------------------------------------------

describe("the recurrences' device checks", function()
  -- a fake cuda tensor: a view of a cpu tensor whose header says cuda (errors_spec.lua); the
  -- checks must refuse it before any kernel reads its memory
  local function fake_cuda(t)
    local f = t:view(t:shape())
    f._c.device = 1
    return f
  end
  local function unfake(f) f._c.device = 0 end

  it("refuse an SRU call mixing devices, naming the argument and both devices", function()
    local x = sru_inputs({ c0 = true })
    local f = fake_cuda(x.bias)
    local msg = h.error_of(R.sru, x.U, x.x, x.weight_c, f, x.c0, nil, nil, {})
    unfake(f)
    contains(msg, "sru_forward: argument 'bias' (shape [8]) is on cuda:0 but U (shape [5, 3, 12]) is on cpu:0; "
      .. "all tensors must be on one device")
  end)

  -- (through the C entry points: the Lua layer would first allocate its outputs on cuda)
  local ffi = require "ffi"
  local C = tn.C

  it("refuse an SRU call on cuda tensors without cuda memory behind them", function()
    local x = sru_inputs({})
    local fx = {}
    for _, k in ipairs({ "U", "x", "weight_c", "bias" }) do fx[k] = fake_cuda(x[k]) end
    local hh, c, cl = tn.empty({ 5, 3, 4 }, { dtype = "f64" }), tn.empty({ 5, 3, 4 }, { dtype = "f64" }),
      tn.empty({ 3, 4 }, { dtype = "f64" })
    local st = C.tn_sru_forward(hh._c, c._c, cl._c, fx.U._c, fx.x._c, fx.weight_c._c, fx.bias._c, nil, nil, nil,
      1, 0, 1, 0)
    for _, f in pairs(fx) do unfake(f) end
    assert.are_not.equal(0, st)
    contains(ffi.string(C.tn_last_error()), "sru_forward: not implemented for cuda tensors")
  end)

  it("refuse an LSTM call mixing devices, naming the argument and both devices", function()
    local x = lstm_inputs({ h0 = true })
    local f = fake_cuda(x.h0)
    local msg = h.error_of(R.lstm, x.xproj, x.w_hh, nil, f, nil, nil, false)
    unfake(f)
    contains(msg, "lstm_forward: argument 'h0' [3, 4] is on cuda:0 but xproj is on cpu:0; all tensors must be on "
      .. "one device")
  end)

  it("refuse an LSTM call on cuda tensors without cuda memory behind them", function()
    local x = lstm_inputs({})
    local fx, fw = fake_cuda(x.xproj), fake_cuda(x.w_hh)
    local out, hn, cn = tn.empty({ 5, 3, 4 }, { dtype = "f64" }), tn.empty({ 3, 4 }, { dtype = "f64" }),
      tn.empty({ 3, 4 }, { dtype = "f64" })
    local gates, cells = tn.empty({ 5, 3, 16 }, { dtype = "f64" }), tn.empty({ 5, 3, 4 }, { dtype = "f64" })
    local st = C.tn_lstm_forward(out._c, hn._c, cn._c, gates._c, cells._c, nil, fx._c, fw._c, nil, nil, nil, nil, 0)
    unfake(fx)
    unfake(fw)
    assert.are_not.equal(0, st)
    contains(ffi.string(C.tn_last_error()), "lstm_forward: not implemented for cuda tensors")
  end)

  it("keep refusing f16 SRU tensors on the cpu", function()
    local x = sru_inputs({})
    -- R.sru converts cpu halves to f32 itself; the C entry point refuses them
    local U = x.U:half()
    local hh, c, cl = tn.empty({ 5, 3, 4 }, { dtype = "f16" }), tn.empty({ 5, 3, 4 }, { dtype = "f16" }),
      tn.empty({ 3, 4 }, { dtype = "f16" })
    local st = C.tn_sru_forward(hh._c, c._c, cl._c, U._c, x.x:half()._c, x.weight_c:half()._c, x.bias:half()._c,
      nil, nil, nil, 1, 0, 1, 0)
    assert.are_not.equal(0, st)
    contains(ffi.string(C.tn_last_error()), "sru_forward: argument 'U' (shape [5, 3, 12]) must be f32 or f64, got f16")
  end)
end)
