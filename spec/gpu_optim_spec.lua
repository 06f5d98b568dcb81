-- Specs of the CUDA backend of the optimizers and mixed precision (cuda/optim.cu behind
-- core/optim.c): SGD (plain, momentum, nesterov, weight decay), Adam, AdamW, NovoGrad, LARC
-- (clip and scale), clip_grad_norm, opt:unscale_ with and without inf / NaN, zero_grad, f32
-- and f64 parameters, f32 masters of f16 / bf16 models. The same model is built on the CPU and
-- on the GPU from the same values, given the same gradients for a few steps, and parameters,
-- optimizer state, gradients and the host outputs (norms, found_inf, amax) must agree within
-- the dtype's rounding (the GPU contracts a * b + c into FMAs and sums squares in another
-- order). Lists longer than one multi-tensor launch (40 separate tensors) and tensors longer
-- than one chunk (30000 elements) are covered; GPU results repeat bit for bit.
--
-- Every block is #gpu: a machine without a GPU filters them out and counts them as skipped.
-- Nothing here touches the GPU outside an `it`, so the file loads and lists anywhere.
local h = require "helpers.init"
local tn = h.tn
local optim = tn.optim

local TOL = {
  f32 = { atol = 2e-5, rtol = 1e-4 },
  f64 = { atol = 1e-12, rtol = 1e-11 },
  f16 = { atol = 2e-3, rtol = 2e-3 }, -- one f16 ulp where the masters round differently
  bf16 = { atol = 1.6e-2, rtol = 1.6e-2 },
}

local Bare = tn.nn.Module:extend("Bare")

-- Parameter shapes: small ones, one spanning two 16384-element chunks, an empty one.
local SHAPES = { { 3, 4 }, { 7 }, { 300, 100 }, { 1 }, { 0 }, { 5, 5, 2 } }
local MANY = 40 -- separate tensors: more than one launch of the multi-tensor kernels

local function on(t, dev) return dev == "cuda" and t:cuda() or t end

-- Parameters (dtype) of the given shapes from seed, on dev ("cpu" when nil); flat: in one
-- module's flat buffer (built on the CPU, then moved with Module:to as a user would).
local function make_params(shapes, dtype, seed, flat, dev)
  tn.manual_seed(seed)
  local ps = {}
  for i, s in ipairs(shapes) do
    local v = tn.randn(s):mul(0.5):to(dtype)
    ps[i] = (flat and v or on(v, dev)):requires_grad(true)
  end
  if not flat then return ps end
  local m = Bare()
  for i, p in ipairs(ps) do m:register_parameter("p" .. i, p) end
  m:flat_buffers()
  if dev == "cuda" then
    m:to("cuda")
    for i = 1, #shapes do ps[i] = m["p" .. i] end
  end
  return ps
end

-- The same parameters on the CPU and on the GPU: cpu list, gpu list.
local function twin_params(shapes, dtype, seed, flat)
  return make_params(shapes, dtype, seed, flat, "cpu"), make_params(shapes, dtype, seed, flat, "cuda")
end

local function many_shapes()
  local s = {}
  for i = 1, MANY do s[i] = { 1 + (i * 7) % 23, 1 + i % 3 } end
  return s
end

-- Gradients of step k (f32 values, magnitude ~scale) into p.grad on its device and dtype.
local function set_grads(ps, dev, k, scale)
  tn.manual_seed(1000 + k)
  for _, p in ipairs(ps) do
    local g = tn.randn(p:shape()):mul(scale or 1)
    local dt = p.grad and p.grad:dtype() or p:dtype()
    g = on(g:to(dt), dev)
    if p.grad then p.grad:copy_(g) else rawset(p, "grad", g) end
  end
end

local function near(e, a, tol, what)
  assert(a:device() == "cuda" or a:device():find("cuda", 1, true), (what or "") .. ": not on the GPU")
  assert.tensor_near(e, a:cpu(), tol)
end

-- Parameters and every tensor of the optimizer state agree.
local function compare(pc, pg, oc, og, tol_of)
  for i = 1, #pc do near(pc[i], pg[i], tol_of(pc[i]:dtype()), "param " .. i) end
  local sc, sg = oc:state_dict(), og:state_dict()
  if sc.optimizer then sc, sg = sc.optimizer, sg.optimizer end -- LARC wraps its optimizer
  assert.are.equal(#sc.state, #sg.state)
  for k, st in ipairs(sc.state) do
    for name, v in pairs(st) do
      if tn.is_tensor(v) then
        assert.is_true(tn.is_tensor(sg.state[k][name]), "state " .. name .. " missing on the GPU")
        near(v, sg.state[k][name], tol_of(v:dtype()), "state " .. name)
      end
    end
  end
end

local function tol_of(dt) return TOL[dt] or TOL.f32 end

-- A step on both devices as the step loops here take it: neither optimizer skips it, both
-- agree after it, and the gradients are cleared for the next set_grads.
local function step_both(pc, pg, oc, og)
  assert.is_true(oc:step())
  assert.is_true(og:step())
  compare(pc, pg, oc, og, tol_of)
  oc:zero_grad()
  og:zero_grad()
end

-- make(params) -> optimizer; runs `steps` steps on both devices, compares after each.
local function run_both(make, opts)
  local pc, pg = twin_params(opts.shapes or SHAPES, opts.dtype or "f32", opts.seed or 1, opts.flat)
  local oc, og = make(pc), make(pg)
  for k = 1, opts.steps or 4 do
    set_grads(pc, "cpu", k, opts.scale)
    set_grads(pg, "cuda", k, opts.scale)
    step_both(pc, pg, oc, og)
  end
  return pc, pg, oc, og
end

local CASES = {
  { "SGD", function(ps) return optim.SGD(ps, { lr = 0.1 }) end },
  { "SGD with momentum", function(ps) return optim.SGD(ps, { lr = 0.1, momentum = 0.9, dampening = 0.1 }) end },
  { "SGD nesterov + weight decay", function(ps)
    return optim.SGD(ps, { lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 1e-2 })
  end },
  { "Adam", function(ps) return optim.Adam(ps, { lr = 1e-2, weight_decay = 1e-2 }) end },
  { "AdamW", function(ps) return optim.AdamW(ps, { lr = 1e-2, weight_decay = 1e-2 }) end },
  { "NovoGrad", function(ps) return optim.NovoGrad(ps, { lr = 1e-2, weight_decay = 1e-3 }) end },
  { "LARC clip over SGD", function(ps)
    return optim.LARC(optim.SGD(ps, { lr = 0.1, momentum = 0.9, weight_decay = 1e-2 }), { mode = "clip" })
  end },
  { "LARC scale over Adam", function(ps)
    return optim.LARC(optim.Adam(ps, { lr = 1e-3, weight_decay = 1e-2 }), { mode = "scale", eta = 0.5 })
  end },
}

describe("gpu optim #gpu", function()
  for _, case in ipairs(CASES) do
    local name, make = case[1], case[2]
    describe(name, function()
      it("matches the CPU on f32 parameters in a flat buffer", function()
        run_both(make, { dtype = "f32", flat = true })
      end)
      it("matches the CPU on f64 parameters", function()
        run_both(make, { dtype = "f64", flat = true })
      end)
      it("matches the CPU on a list longer than one launch", function()
        run_both(make, { dtype = "f32", shapes = many_shapes(), flat = false, steps = 3 })
      end)
      it("matches the CPU on f16 and bf16 models (f32 masters)", function()
        for _, dt in ipairs({ "f16", "bf16" }) do run_both(make, { dtype = dt, flat = true, steps = 3 }) end
      end)
      it("repeats bit for bit on the GPU", function()
        local _, a = run_both(make, { dtype = "f32", flat = true, steps = 2 })
        local _, b = run_both(make, { dtype = "f32", flat = true, steps = 2 })
        for i = 1, #a do assert.tensor_equal(a[i]:cpu(), b[i]:cpu()) end
      end)
    end)
  end
end)

describe("gpu optim.clip_grad_norm #gpu", function()
  for _, dt in ipairs({ "f32", "f64", "f16", "bf16" }) do
    it("returns the CPU's norm and clips the " .. dt .. " gradients alike", function()
      for _, max_norm in ipairs({ 1e6, 3 }) do
        local pc, pg = twin_params(SHAPES, dt, 4, true)
        set_grads(pc, "cpu", 1)
        set_grads(pg, "cuda", 1)
        local nc = optim.clip_grad_norm(pc, max_norm)
        local ng = optim.clip_grad_norm(pg, max_norm)
        assert.is_number(ng)
        assert.is_true(math.abs(nc - ng) <= 1e-6 * nc, ("norm %.17g vs %.17g"):format(nc, ng))
        for i = 1, #pc do near(pc[i].grad, pg[i].grad, tol_of(dt), "grad " .. i) end
      end
    end)
  end

  it("leaves gradients with inf or NaN unclipped and returns inf / NaN as the CPU", function()
    for _, bad in ipairs({ math.huge, 0 / 0 }) do
      local pc, pg = twin_params({ { 4 }, { 3 } }, "f32", 5, true)
      set_grads(pc, "cpu", 2)
      set_grads(pg, "cuda", 2)
      pc[2].grad:copy_(tn.tensor({ 1, bad, 2 }))
      pg[2].grad:copy_(tn.tensor({ 1, bad, 2 }):cuda())
      local nc, ng = optim.clip_grad_norm(pc, 1), optim.clip_grad_norm(pg, 1)
      assert.are.equal(nc ~= nc, ng ~= ng)
      if nc == nc then assert.are.equal(nc, ng) end
      for i = 1, 2 do assert.tensor_equal(pc[i].grad, pg[i].grad:cpu()) end
    end
  end)
end)

describe("gpu optim device checks #gpu", function()
  it("refuses a list that mixes devices, naming the entry", function()
    local a = tn.tensor({ 1, 2 }):requires_grad(true)
    local b = tn.tensor({ 3 }):cuda():requires_grad(true)
    rawset(a, "grad", tn.tensor({ 1, 1 }))
    rawset(b, "grad", tn.tensor({ 1 }):cuda())
    local msg = h.error_of(optim.clip_grad_norm, { b, a }, 1)
    assert.truthy(msg:find("tn_grad_clip_norm: grads[2] is on cpu but grads[1] is on cuda:0", 1, true), msg)
  end)
end)

describe("gpu amp unscale_ #gpu", function()
  for _, dt in ipairs({ "f16", "bf16", "f32" }) do
    it("unscales " .. dt .. " gradients into FP32 and reports found_inf and amax as the CPU", function()
      local pc, pg = twin_params(SHAPES, dt, 6, true)
      local oc, og = optim.Adam(pc, { lr = 1e-2 }), optim.Adam(pg, { lr = 1e-2 })
      for k = 1, 3 do
        set_grads(pc, "cpu", k, 1024)
        set_grads(pg, "cuda", k, 1024)
        local fc, ac = oc:unscale_(1 / 1024)
        local fg, ag = og:unscale_(1 / 1024)
        assert.is_false(fc)
        assert.are.equal(fc, fg)
        assert.are.equal(ac, ag) -- a max of the same products: exact
        step_both(pc, pg, oc, og)
      end
    end)

    it("flags inf and NaN in " .. dt .. " gradients; a skipped step changes nothing", function()
      for _, bad in ipairs({ math.huge, -math.huge, 0 / 0 }) do
        local pc, pg = twin_params(SHAPES, dt, 7, true)
        local oc, og = optim.SGD(pc, { lr = 0.1, momentum = 0.9 }), optim.SGD(pg, { lr = 0.1, momentum = 0.9 })
        set_grads(pc, "cpu", 1)
        set_grads(pg, "cuda", 1)
        -- one bad element deep inside the long tensor (second chunk)
        pc[3].grad:view(-1):narrow(1, 20000, 1):fill_(bad)
        pg[3].grad:view(-1):narrow(1, 20000, 1):fill_(bad)
        local before = pg[3]:cpu()
        local fc, ac = oc:unscale_(0.5)
        local fg, ag = og:unscale_(0.5)
        assert.is_true(fc)
        assert.is_true(fg)
        assert.are.equal(ac, ag) -- the largest finite one
        oc:skip_step()
        og:skip_step()
        assert.tensor_equal(before, pg[3]:cpu())
        oc:zero_grad()
        og:zero_grad()
        for i = 1, #pg do
          if pg[i].grad then assert.tensor_equal(pc[i].grad, pg[i].grad:cpu()) end
        end
      end
    end)
  end
end)
