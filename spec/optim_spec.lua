-- Specs of tern.optim: SGD, Adam, AdamW against PyTorch 1.13 golden steps
-- (spec/fixtures/optim_torch.safetensors, made by make_optim_fixtures.py: two parameter groups,
-- four shapes, five steps, f32 and f64, plain tensors and a module's flat buffer); NovoGrad and
-- LARC against hand-worked values of their published rules; clip_grad_norm against a hand
-- value and torch.nn.utils.clip_grad_norm_; param groups and writable options; state_dict
-- round trips (training on after a load equals training uninterrupted, bit for bit); mixed
-- precision (FP32 masters of f16/bf16 models, unscale_ with inf/NaN and amax, the saturating
-- write-back, masters following outside writes, an f16 model tracking the f32 one); iter_size
-- accumulation; layout changes; bad input.
local h = require "helpers.init"
local tn = h.tn
local optim = tn.optim

local fmt = string.format
local G, meta = tn.load(h.fixtures .. "/optim_torch.safetensors")
local config = assert(load(meta.config))()

local function contains(s, part)
  assert.truthy(s:find(part, 1, true), "'" .. s .. "' does not contain '" .. part .. "'")
end
local function f64(x) return tn.tensor(x, { dtype = "f64" }) end
local function leaf(values, dtype) return tn.tensor(values, { dtype = dtype or "f64" }):requires_grad(true) end
local function set_grad(p, values)
  rawset(p, "grad", tn.tensor(values, { dtype = p:dtype() }))
end

local Bare = tn.nn.Module:extend("Bare")

-- A module holding the given tensors as parameters p1, p2, ... in one flat buffer.
local function module_of(ps)
  local m = Bare()
  for i, p in ipairs(ps) do m:register_parameter("p" .. i, p) end
  m:flat_buffers()
  return m
end

-- A small regression problem: (x (n, 4), y (n, 1)), f32.
local function regression(n, seed)
  tn.manual_seed(seed or 3)
  local x = tn.randn(n, 4)
  local w = tn.tensor({ { 1.5 }, { -2 }, { 0.5 }, { 3 } })
  local y = x:matmul(w) + tn.randn(n, 1) * 0.1
  return x, y
end
local function mse(m, x, y) return ((m(x):float() - y) ^ 2):mean() end

describe("tern.optim", function()
  describe("against torch.optim (PyTorch 1.13 golden steps)", function()
    -- params: four tensors (plain, or views of a module's flat buffer); groups as in the file
    local function build(case, dt, flat)
      local ps = {}
      for i = 1, #config.shapes do
        ps[i] = G[fmt("%s.%s.init.%d", case.name, dt, i)]:clone():requires_grad(true)
      end
      if flat then module_of(ps) end
      local groups = {}
      for gi, idx in ipairs(config.groups) do
        local g = { params = {} }
        for k, v in pairs(case.groups[gi]) do g[k] = v end
        for _, i in ipairs(idx) do g.params[#g.params + 1] = ps[i] end
        groups[gi] = g
      end
      return ps, optim[case.class](groups)
    end

    local tol = { f32 = { atol = 1e-6, rtol = 1e-5 }, f64 = { atol = 1e-13, rtol = 1e-12 } }
    for _, case in ipairs(config.cases) do
      for _, dt in ipairs({ "f32", "f64" }) do
        for _, flat in ipairs({ false, true }) do
          local what = flat and "a module's flat buffer" or "plain tensors"
          it(fmt("%s %s matches torch.optim.%s over %d steps, two groups, %s", case.name, dt, case.class,
            config.steps, what), function()
            local ps, opt = build(case, dt, flat)
            for _, b in ipairs(opt._buckets) do
              -- plain tensors: one segment each; a group of the flat buffer: one segment
              assert.are.equal(flat and 1 or #b.params, b.seg.w.n)
            end
            for s = 1, config.steps do
              opt:zero_grad()
              for i, p in ipairs(ps) do p.grad:copy_(G[fmt("%s.%s.grad.%d.%d", case.name, dt, s, i)]) end
              assert.is_true(opt:step())
              for i, p in ipairs(ps) do
                assert.tensor_near(G[fmt("%s.%s.param.%d.%d", case.name, dt, s, i)], p, tol[dt])
              end
            end
            -- the state: flat per group, in parameter order
            local sd = opt:state_dict()
            for bi, idx in ipairs(config.groups) do
              for kind, t in pairs(sd.state[bi]) do
                if tn.is_tensor(t) and G[fmt("%s.%s.%s.1", case.name, dt, kind)] then
                  local parts = {}
                  for _, i in ipairs(idx) do
                    parts[#parts + 1] = G[fmt("%s.%s.%s.%d", case.name, dt, kind, i)]:reshape(-1)
                  end
                  assert.tensor_near(tn.cat(parts, 1), t, tol[dt])
                end
              end
              assert.are.equal(config.steps, sd.state[bi].step)
            end
          end)
        end
      end
    end
  end)

  describe("NovoGrad", function()
    it("keeps one second moment per tensor as a running average (hand-worked)", function()
      local a, b = leaf({ 1, 2 }), leaf({ 0.5 })
      local opt = optim.NovoGrad({ a, b }, { lr = 0.1, betas = { 0.95, 0.98 }, eps = 0 })
      set_grad(a, { 3, 4 }); set_grad(b, { -2 })
      opt:step()
      -- step 1: v_a = ||g||^2 = 25, v_b = 4; m = g / sqrt(v); w -= lr m
      assert.tensor_near({ 1 - 0.1 * 0.6, 2 - 0.1 * 0.8 }, a, { atol = 1e-15, rtol = 1e-14 })
      assert.tensor_near({ 0.5 + 0.1 }, b, { atol = 1e-15, rtol = 1e-14 })
      set_grad(a, { 0, 1 }); set_grad(b, { 1 })
      opt:step()
      -- step 2: v_a = 0.98 * 25 + 0.02 * 1 = 24.52, v_b = 0.98 * 4 + 0.02 = 3.94
      local ma = { 0.95 * 0.6, 0.95 * 0.8 + 1 / math.sqrt(24.52) }
      local mb = 0.95 * -1 + 1 / math.sqrt(3.94)
      assert.tensor_near({ 0.94 - 0.1 * ma[1], 1.92 - 0.1 * ma[2] }, a, { atol = 1e-15, rtol = 1e-14 })
      assert.tensor_near({ 0.6 - 0.1 * mb }, b, { atol = 1e-15, rtol = 1e-14 })
      local sd = opt:state_dict()
      assert.tensor_near({ 24.52, 3.94 }, sd.state[1].grad_ema, { atol = 0, rtol = 1e-14 })
    end)

    it("adds weight decay inside the momentum and scales by 1 - beta1 with grad_averaging", function()
      local w = leaf({ 2, 0 })
      local opt = optim.NovoGrad({ w }, { lr = 0.5, betas = { 0.9, 0.5 }, eps = 1e-3, weight_decay = 0.1,
        grad_averaging = true })
      set_grad(w, { 0, -1 })
      opt:step()
      -- v = 1; m = (1 - 0.9) * (g / (1 + 1e-3) + 0.1 w)
      local m1 = { 0.1 * (0 + 0.2), 0.1 * (-1 / 1.001 + 0) }
      local w1 = { 2 - 0.5 * m1[1], 0 - 0.5 * m1[2] }
      assert.tensor_near(w1, w, { atol = 1e-15, rtol = 1e-14 })
      set_grad(w, { 2, 0 })
      opt:step()
      -- v = 0.5 * 1 + 0.5 * 4 = 2.5
      local d = { 2 / (math.sqrt(2.5) + 1e-3) + 0.1 * w1[1], 0.1 * w1[2] }
      local m2 = { 0.9 * m1[1] + 0.1 * d[1], 0.9 * m1[2] + 0.1 * d[2] }
      assert.tensor_near({ w1[1] - 0.5 * m2[1], w1[2] - 0.5 * m2[2] }, w, { atol = 1e-15, rtol = 1e-14 })
    end)

    it("runs on f32 module parameters in one call per group and matches f64", function()
      local function run(dtype)
        tn.manual_seed(5)
        local m = tn.nn.Sequential(tn.nn.Linear(4, 3), tn.nn.Linear(3, 1)):to(dtype)
        local opt = optim.NovoGrad(m, { lr = 0.01, weight_decay = 1e-3 })
        local x, y = regression(16)
        x, y = x:to(dtype), y:to(dtype)
        for _ = 1, 5 do
          opt:zero_grad()
          local loss = ((m(x) - y) ^ 2):mean()
          loss:backward()
          opt:step()
        end
        return m[2].weight, opt
      end
      local w32, opt = run("f32")
      local w64 = run("f64")
      assert.are.equal(4, opt._buckets[1].pp.w.n)
      assert.tensor_near(w64, w32, { atol = 1e-5, rtol = 1e-4 })
    end)
  end)

  describe("LARC", function()
    -- w = {3, 4}: ||w|| = 5; g = {0.6, 0.8}: ||g|| = 1; wd = 0.01, lr = 0.1
    local function run(mode, lr, eta)
      local w, z = leaf({ 3, 4 }), leaf({ 0, 0 })
      local inner = optim.SGD({ w, z }, { lr = lr, weight_decay = 0.01 })
      local opt = optim.LARC(inner, { mode = mode, eta = eta })
      set_grad(w, { 0.6, 0.8 }); set_grad(z, { 1, -1 })
      assert.is_true(opt:step())
      return w, z, opt
    end

    it("clip mode: trust = min(eta ||w|| / (||g|| + wd ||w|| + eps) / lr, 1) (hand-worked)", function()
      local w, z, opt = run("clip", 0.1, 0.02)
      local trust = math.min(0.02 * 5 / (1 + 0.01 * 5 + 1e-8) / 0.1, 1) -- 0.952...
      assert.tensor_near({ 3 - 0.1 * (0.6 + 0.03) * trust, 4 - 0.1 * (0.8 + 0.04) * trust }, w,
        { atol = 1e-15, rtol = 1e-14 })
      -- ||w|| = 0: the gradient passes unchanged and without weight decay (as apex)
      assert.tensor_near({ -0.1, 0.1 }, z, { atol = 1e-15, rtol = 1e-14 })
      -- the group's weight decay is back after the step
      assert.are.equal(0.01, opt.param_groups[1].weight_decay)
    end)

    it("clip mode caps the rate at lr; scale mode multiplies lr by the trust ratio", function()
      local w = run("clip", 0.01, 0.02) -- trust / lr = 9.5 -> 1
      assert.tensor_near({ 3 - 0.01 * 0.63, 4 - 0.01 * 0.84 }, w, { atol = 1e-15, rtol = 1e-14 })
      local ws = run("scale", 0.1, 0.5)
      local trust = 0.5 * 5 / (1 + 0.05 + 1e-8)
      assert.tensor_near({ 3 - 0.1 * 0.63 * trust, 4 - 0.1 * 0.84 * trust }, ws, { atol = 1e-14, rtol = 1e-13 })
    end)

    it("wraps Adam on an f16 model (trust from the FP32 masters) and checks its options", function()
      tn.manual_seed(2)
      local m = tn.nn.Linear(4, 2):to("f16")
      local opt = optim.LARC(optim.Adam(m, { lr = 1e-2, weight_decay = 0.1 }))
      local x = tn.randn(3, 4):half()
      m(x):float():sum():backward()
      local before = m.weight:float()
      assert.is_true(opt:step())
      assert.is_false(tn.equal(before, m.weight:float()))
      assert.are.equal("clip", opt.mode)
      contains(h.error_of(optim.LARC, optim.SGD({ leaf({ 1 }) }, { lr = 1 }), { mode = "both" }),
        "tn.optim.LARC: mode must be \"clip\" or \"scale\", got both")
      contains(h.error_of(optim.LARC, optim.SGD({ leaf({ 1 }) }, { lr = 1 }), { eta = -1 }),
        "tn.optim.LARC: eta must be a positive number, got -1")
      contains(h.error_of(optim.LARC, {}), "tn.optim.LARC: expected a tern optimizer")
      contains(h.error_of(optim.LARC, opt), "got a LARC")
      contains(h.error_of(optim.LARC, optim.SGD({ leaf({ 1 }) }, { lr = 1 }), { trust = 1 }),
        "unknown option 'trust'")
    end)
  end)

  describe("clip_grad_norm", function()
    it("scales by max_norm / (norm + 1e-6) when the norm is larger (hand value)", function()
      local a, b = leaf({ 3 }), leaf({ 0, 4 })
      set_grad(a, { 3 }); set_grad(b, { 0, 4 })
      assert.are.equal(5, optim.clip_grad_norm({ a, b }, 10)) -- below: untouched
      assert.tensor_equal(f64({ 3 }), a.grad)
      local n = optim.clip_grad_norm({ a, b }, 1)
      assert.are.equal(5, n)
      local c = 1 / (5 + 1e-6)
      assert.tensor_near({ 3 * c }, a.grad, { atol = 1e-15, rtol = 1e-14 })
      assert.tensor_near({ 0, 4 * c }, b.grad, { atol = 1e-15, rtol = 1e-14 })
    end)

    it("matches torch.nn.utils.clip_grad_norm_", function()
      for _, dt in ipairs({ "f32", "f64" }) do
        local ps = {}
        for i = 1, #config.shapes do
          ps[i] = tn.zeros(config.shapes[i], { dtype = dt }):requires_grad(true)
          rawset(ps[i], "grad", G[fmt("clip.%s.grad.%d", dt, i)]:clone())
        end
        local tol = dt == "f32" and { atol = 1e-6, rtol = 1e-6 } or { atol = 1e-14, rtol = 1e-13 }
        assert.tensor_near(G[fmt("clip.%s.norm_small", dt)], f64({ optim.clip_grad_norm(ps, config.clip.big) }), tol)
        assert.tensor_near(G[fmt("clip.%s.norm", dt)], f64({ optim.clip_grad_norm(ps, config.clip.max_norm) }), tol)
        for i, p in ipairs(ps) do assert.tensor_near(G[fmt("clip.%s.clipped.%d", dt, i)], p.grad, tol) end
      end
    end)

    it("returns a non-finite norm and leaves the gradients untouched", function()
      local a, b = leaf({ 1, 2 }), leaf({ 3 })
      set_grad(a, { 1, 2 }); set_grad(b, { math.huge })
      assert.are.equal(math.huge, optim.clip_grad_norm({ a, b }, 1))
      assert.tensor_equal(f64({ 1, 2 }), a.grad)
      set_grad(b, { 0 / 0 })
      local n = optim.clip_grad_norm({ a, b }, 1)
      assert.is_true(n ~= n)
      assert.tensor_equal(f64({ 1, 2 }), a.grad)
    end)

    it("clips an optimizer's gradients: FP32 masters of f16 models, divided by iter_size", function()
      local m = module_of({ leaf({ 1, 1 }, "f16") })
      local opt = optim.SGD(m, { lr = 1, iter_size = 2 })
      m.p1.grad:copy_(tn.tensor({ 30, 40 }))
      assert.is_false(opt:step()) -- first micro-batch
      m.p1.grad:add_(tn.tensor({ 30, 40 }):half())
      -- accumulated {60, 80} / iter_size 2 -> norm 50
      assert.are.equal(50, optim.clip_grad_norm(opt, 5))
      assert.is_true(opt:step())
      local c = 5 / (50 + 1e-6)
      -- the update used the FP32 clipped gradient: w = 1 - {30, 40} * c
      assert.tensor_near({ 1 - 30 * c, 1 - 40 * c }, opt:state_dict().state[1].master, { atol = 1e-6, rtol = 1e-6 })
      -- a module and a single tensor are accepted too
      assert.is_number(optim.clip_grad_norm(m, 1))
      assert.is_number(optim.clip_grad_norm(m.p1, 1))
    end)

    it("rejects bad arguments", function()
      contains(h.error_of(optim.clip_grad_norm, { leaf({ 1 }) }, 0),
        "tn.optim.clip_grad_norm: max_norm must be a positive number, got 0")
      contains(h.error_of(optim.clip_grad_norm, { leaf({ 1 }) }, "1"), "got 1")
      contains(h.error_of(optim.clip_grad_norm, 7, 1),
        "expected a list of tensors, a module or an optimizer, got number")
      contains(h.error_of(optim.clip_grad_norm, { 7 }, 1), "params[1] must be a tensor, got number")
      contains(h.error_of(function() optim.clip_grad_norm({ leaf({ 1 }) }, -1) end), "optim_spec.lua")
    end)
  end)

  describe("parameters and groups", function()
    it("takes a list of tensors, a module or groups, with per-group options", function()
      local a, b = leaf({ 1 }), leaf({ 1 })
      local opt = optim.SGD({ { params = { a }, lr = 0.1 }, { params = { b }, momentum = 0.5 } }, { lr = 0.01 })
      assert.are.equal(0.1, opt.param_groups[1].lr)
      assert.are.equal(0.01, opt.param_groups[2].lr)
      assert.are.equal(0.5, opt.param_groups[2].momentum)
      assert.are.equal(0, opt.param_groups[1].momentum)
      assert.are.same({ a, b }, opt:params())
      local m = tn.nn.Sequential(tn.nn.Linear(2, 3), tn.nn.Linear(3, 1))
      local o2 = optim.Adam(m)
      assert.are.equal(1e-3, o2.param_groups[1].lr)
      assert.are.equal(4, #o2:params())
      assert.are.equal(1, #o2:grad_buffers())
      assert.are.equal(13, o2:grad_buffers()[1]:numel())
      assert.are.equal(0.01, optim.AdamW(m).param_groups[1].weight_decay)
    end)

    it("exposes the LR policies as tn.optim.lr (loaded on first use)", function()
      assert.are.equal(require "tern.optim.lr", optim.lr)
      local opt = optim.SGD({ leaf({ 1 }) }, { lr = 1 })
      optim.lr.fixed{ lr = 0.125 }:step(opt)
      assert.are.equal(0.125, opt.param_groups[1].lr)
    end)

    it("reads param_groups[i].lr at every step (LR policies write it)", function()
      local w = leaf({ 0 })
      local opt = optim.SGD({ w }, { lr = 1 })
      set_grad(w, { 1 })
      opt:step()
      opt.param_groups[1].lr = 0.25
      opt:step()
      assert.tensor_equal(f64({ -1.25 }), w)
      opt.param_groups[1].lr = -1
      contains(h.error_of(function() opt:step() end),
        "tn.optim.SGD: param_groups[1].lr must be a non-negative number, got -1")
      contains(h.error_of(function() opt:step() end), "optim_spec.lua")
      assert.are.equal(2, opt:state_dict().state[1].step) -- a rejected step changes nothing
      assert.tensor_equal(f64({ -1.25 }), w)
    end)

    it("follows a gradient tensor replaced between steps", function()
      local w = leaf({ 0, 0 })
      local opt = optim.SGD({ w }, { lr = 1 })
      w:zero_grad() -- grad = nil; backward makes a new one
      local loss = (w * f64({ 1, 2 })):sum()
      loss:backward()
      opt:step()
      assert.tensor_equal(f64({ -1, -2 }), w)
    end)

    it("rejects bad options and parameters, naming them", function()
      local p = leaf({ 1 })
      local cases = {
        { function() optim.SGD({ p }) end, "tn.optim.SGD: lr is required (a non-negative number)" },
        { function() optim.SGD({ p }, { lr = -1 }) end, "tn.optim.SGD: lr must be a non-negative number, got -1" },
        { function() optim.Adam({ p }, { betas = { 0.9, 1 } }) end,
          "tn.optim.Adam: betas must be a pair {beta1, beta2} of numbers in [0, 1), got {0.9, 1}" },
        { function() optim.Adam({ p }, { eps = "x" }) end, "eps must be a non-negative number, got x" },
        { function() optim.Adam({ p }, { amsgrad = true }) end,
          "tn.optim.Adam: unknown option 'amsgrad' (options: lr, betas, eps, weight_decay, iter_size)" },
        { function() optim.SGD({ p }, { lr = 1, nesterov = true }) end,
          "tn.optim.SGD: nesterov needs momentum > 0 and dampening = 0, got momentum 0, dampening 0" },
        { function() optim.SGD({ p }, { lr = 1, iter_size = 0 }) end, "iter_size must be a positive integer, got 0" },
        { function() optim.NovoGrad({ p }, { lr = 1, grad_averaging = 1 }) end,
          "grad_averaging must be a boolean, got 1" },
        { function() optim.SGD({}, { lr = 1 }) end, "tn.optim.SGD: params is an empty list" },
        { function() optim.SGD(nil, { lr = 1 }) end, "tn.optim.SGD: params is required" },
        { function() optim.SGD({ p, p }, { lr = 1 }) end, "params[2] appears in more than one place" },
        { function() optim.SGD({ tn.tensor({ 1 }, { dtype = "i64" }) }, { lr = 1 }) end,
          "tn.optim.SGD: params[1] must be a float leaf tensor, got a i64 tensor" },
        { function() optim.SGD({ p * 2 }, { lr = 1 }) end, "got a tensor computed by 'mul'" },
        { function() optim.SGD({ 3 }, { lr = 1 }) end, "params[1] must be a float leaf tensor, got number" },
        { function() optim.SGD({ { params = { p }, lr = 1, momentun = 0.9 } }) end,
          "tn.optim.SGD: param_groups[1]: unknown option 'momentun' (options: lr, momentum, dampening, nesterov, "
          .. "weight_decay, lr_scale, name)" },
        { function() optim.SGD({ { params = { p } }, { params = { leaf({ 1 }) }, lr = -2 } }, { lr = 1 }) end,
          "param_groups[2].lr must be a non-negative number, got -2" },
        { function() optim.SGD({ p }, 0.1) end, "tn.optim.SGD: options must be a table, got number" },
      }
      for _, c in ipairs(cases) do
        local err = h.error_of(c[1])
        contains(err, c[2])
        contains(err, "optim_spec.lua") -- raised at the caller's line
      end
    end)

    it("rejects a model moved to another dtype after the optimizer was built", function()
      local m = tn.nn.Linear(2, 2)
      local opt = optim.SGD(m, { lr = 1 })
      m:to("f64")
      contains(h.error_of(function() opt:step() end),
        "param_groups[1].params[1] is now a f64 cpu tensor of 4 elements; it was f32 cpu with 4")
    end)
  end)

  describe("state_dict", function()
    local function plain(t, path)
      for k, v in pairs(t) do
        local p = path .. "." .. tostring(k)
        local tv = type(v)
        assert.truthy(tv == "number" or tv == "string" or tv == "boolean" or tv == "table", p .. " is a " .. tv)
        if tv == "table" and not tn.is_tensor(v) then plain(v, p) end
      end
    end

    -- Train `make()`'s model 3 steps, save, go on 3 steps; a fresh copy loads the state after
    -- step 3 and trains the same 3 steps: every parameter equal bit for bit.
    local function roundtrip(name, make)
      it(name .. ": training on after load_state_dict equals training uninterrupted", function()
        local x, y = regression(8)
        local ma, oa = make()
        local function train(m, o, n)
          for _ = 1, n do
            o:zero_grad()
            mse(m, x:to(m[1].weight:dtype()), y):backward()
            o:step()
          end
        end
        train(ma, oa, 3)
        local sd = oa:state_dict()
        plain(sd, "sd")
        local mb, ob = make()
        mb:load_state_dict(ma:state_dict())
        ob:load_state_dict(sd)
        -- a copy of the state: what a checkpoint file would hold
        train(ma, oa, 3)
        train(mb, ob, 3)
        for pname, p in ma:named_parameters() do
          assert.tensor_equal(p, mb:state_dict()[pname])
        end
      end)
    end
    local function seq(dtype)
      tn.manual_seed(11)
      return tn.nn.Sequential(tn.nn.Linear(4, 3), tn.nn.Linear(3, 1)):to(dtype or "f32")
    end
    roundtrip("Adam", function() local m = seq() return m, optim.Adam(m, { lr = 1e-2 }) end)
    roundtrip("SGD with momentum, two groups", function()
      local m = seq()
      return m, optim.SGD({ { params = m[1] }, { params = m[2], lr = 0.05, nesterov = true } },
        { lr = 0.01, momentum = 0.9 })
    end)
    roundtrip("NovoGrad", function() local m = seq() return m, optim.NovoGrad(m, { lr = 1e-2 }) end)
    roundtrip("LARC(AdamW)", function() local m = seq() return m, optim.LARC(optim.AdamW(m, { lr = 1e-2 })) end)
    roundtrip("Adam on an f16 model (masters saved)", function()
      local m = seq("f16") return m, optim.Adam(m, { lr = 1e-2 })
    end)

    it("saves the hyperparameters and restores them", function()
      local opt = optim.Adam({ leaf({ 1, 2 }) }, { lr = 0.5, betas = { 0.8, 0.9 } })
      local sd = opt:state_dict()
      assert.are.same({ 0.8, 0.9 }, sd.param_groups[1].betas)
      assert.are.same({ "2" }, sd.param_groups[1].param_shapes)
      assert.are.equal("Adam", sd.type)
      local o2 = optim.Adam({ leaf({ 3, 4 }) })
      o2:load_state_dict(sd)
      assert.are.equal(0.5, o2.param_groups[1].lr)
      assert.are.same({ 0.8, 0.9 }, o2.param_groups[1].betas)
    end)

    it("rejects a mismatched state with a clear error", function()
      local function opt() return optim.Adam({ leaf({ 1, 2 }), leaf({ { 1 } }) }) end
      local sd = opt():state_dict()
      local function err_of(mutate, o)
        local s = opt():state_dict()
        mutate(s)
        return h.error_of(function() (o or opt()):load_state_dict(s) end)
      end
      contains(h.error_of(function() opt():load_state_dict(optim.SGD({ leaf({ 1 }) }, { lr = 1 }):state_dict()) end),
        "tn.optim.Adam: load_state_dict: the state is of a SGD optimizer, this is Adam")
      contains(err_of(function(s) s.param_groups[1].param_shapes[2] = "2x1" end),
        "param_groups[1].params[2] has shape 2x1 in the state, 1x1 here")
      contains(err_of(function(s) s.state[1].exp_avg = nil end), "load_state_dict: state[1].exp_avg is missing")
      contains(err_of(function(s) s.state[1].exp_avg_sq = tn.zeros(7) end),
        "state[1].exp_avg_sq must be a float tensor of 3 elements, got f32 {7}")
      contains(err_of(function(s) s.param_groups[1].lr = "fast" end),
        "param_groups[1].lr must be a non-negative number")
      contains(err_of(function(s) s.state[1].step = -1 end), "state[1].step must be a non-negative integer")
      contains(h.error_of(function() optim.Adam({ leaf({ 1 }), leaf({ 1 }, "f32") }):load_state_dict(sd) end),
        "param_groups[1].params[1] has shape 2 in the state, 1 here")
      contains(h.error_of(function() opt():load_state_dict(42) end), "expected a table from state_dict(), got number")
      contains(h.error_of(function() opt():load_state_dict(sd.param_groups) end), "the state is of a nil optimizer")
      assert.has_no.errors(function() opt():load_state_dict(sd) end)
    end)
  end)

  describe("mixed precision", function()
    it("keeps FP32 masters: an f16 model trained with Adam tracks the f32 model", function()
      local x, y = regression(64, 7)
      tn.manual_seed(4)
      local m32 = tn.nn.Linear(4, 1)
      local m16 = tn.nn.Linear(4, 1)
      m16:load_state_dict(m32:state_dict())
      m16:to("f16")
      local o32, o16 = optim.Adam(m32, { lr = 0.05 }), optim.Adam(m16, { lr = 0.05 })
      local l32, l16
      for _ = 1, 150 do
        o32:zero_grad(); o16:zero_grad()
        l32 = mse(m32, x, y); l32:backward(); o32:step()
        l16 = mse(m16, x:half(), y); l16:backward(); o16:step()
      end
      l32, l16 = l32:item(), l16:item()
      assert.is_true(l32 < 0.05, "f32 model did not converge: loss " .. l32)
      assert.is_true(math.abs(l16 - l32) < 0.02 + 0.1 * l32, fmt("f16 loss %g vs f32 loss %g", l16, l32))
      local masters = o16:state_dict().state[1].master
      assert.tensor_near(tn.cat({ m32.weight:reshape(-1), m32.bias }, 1), masters, { atol = 0.02, rtol = 0.02 })
      -- the model weights are the rounded masters
      assert.tensor_equal(masters:narrow(1, 1, 4):half():reshape(1, 4), m16.weight)
    end)

    it("unscale_ multiplies into FP32, flags inf and NaN and reports amax", function()
      local m = module_of({ leaf({ 1, 2, 3 }, "f16"), leaf({ 4 }, "f16") })
      local opt = optim.SGD(m, { lr = 1 })
      m.p1.grad:copy_(tn.tensor({ 1024, -4096, 2 }))
      m.p2.grad:copy_(tn.tensor({ 512 }))
      local found, amax = opt:unscale_(1 / 1024)
      assert.is_false(found)
      assert.are.equal(4, amax)
      opt:step()
      -- the step used the unscaled FP32 gradients {1, -4, 1/512}, {0.5}
      assert.tensor_equal(tn.tensor({ 0, 6, 3 - 1 / 512, 3.5 }), opt:state_dict().state[1].master)
      opt:zero_grad()
      m.p1.grad:copy_(tn.tensor({ 1, math.huge, -3 }))
      found, amax = opt:unscale_(0.5)
      assert.is_true(found)
      assert.are.equal(1.5, amax) -- the largest finite one
      opt:skip_step()
      opt:zero_grad()
      m.p2.grad:copy_(tn.tensor({ 0 / 0 }))
      assert.is_true((opt:unscale_(1)))
      -- f32 gradients are unscaled in place
      local w = leaf({ 1, 1 }, "f32")
      local o32 = optim.SGD({ w }, { lr = 1 })
      w.grad:copy_(tn.tensor({ 8, -2 }))
      found, amax = o32:unscale_(0.25)
      assert.is_false(found)
      assert.are.equal(2, amax)
      assert.tensor_equal(tn.tensor({ 2, -0.5 }), w.grad)
    end)

    it("step after unscale_ equals a step on the unscaled gradients; unscale_ once per step", function()
      local a, b = leaf({ 1, 2 }, "bf16"), leaf({ 1, 2 }, "bf16")
      local oa, ob = optim.Adam({ a }, { lr = 0.1 }), optim.Adam({ b }, { lr = 0.1 })
      a.grad:copy_(tn.tensor({ 0.5, -3 }))
      b.grad:copy_(tn.tensor({ 0.5 * 2 ^ 12, -3 * 2 ^ 12 }))
      ob:unscale_(2 ^ -12)
      contains(h.error_of(function() ob:unscale_(1) end), "unscale_: the gradients of this step were already unscaled")
      oa:step(); ob:step()
      assert.tensor_equal(a, b)
      assert.tensor_equal(oa:state_dict().state[1].master, ob:state_dict().state[1].master)
      contains(h.error_of(function() ob:unscale_(0 / 0) end), "inv_scale must be a finite number, got nan")
    end)

    it("writes back saturating: 65504 instead of inf, the master keeps the value", function()
      local w = leaf({ 0, 0 }, "f16")
      local opt = optim.SGD({ w }, { lr = 1e5 })
      w.grad:copy_(tn.tensor({ -1, 1 }))
      opt:step()
      assert.tensor_equal(tn.tensor({ 65504, -65504 }, { dtype = "f16" }), w)
      assert.tensor_equal(tn.tensor({ 1e5, -1e5 }), opt:state_dict().state[1].master)
      local wb = leaf({ 0 }, "bf16")
      local ob = optim.SGD({ wb }, { lr = 1e38 })
      wb.grad:copy_(tn.tensor({ -10 }))
      ob:step()
      assert.is_true(wb:float():item() < math.huge)
      assert.is_true(wb:float():item() > 3.3e38)
    end)

    it("follows model weights written from outside (loaded after the optimizer was built)", function()
      local m = tn.nn.Linear(2, 1):to("f16")
      local opt = optim.SGD(m, { lr = 0 })
      tn.no_grad(function() m.weight:copy_(tn.tensor({ { 5, 6 } })) end)
      opt:step() -- lr 0: the weights stay the loaded ones
      assert.tensor_equal(tn.tensor({ { 5, 6 } }, { dtype = "f16" }), m.weight)
      assert.tensor_equal(tn.tensor({ 5, 6 }), opt:state_dict().state[1].master:narrow(1, 1, 2))
    end)
  end)

  describe("iter_size", function()
    it("two half batches with iter_size 2 make the step of the full batch", function()
      local x, y = regression(8)
      x, y = x:double(), y:double()
      local function model()
        tn.manual_seed(9)
        return tn.nn.Sequential(tn.nn.Linear(4, 3), tn.nn.Linear(3, 1)):to("f64")
      end
      local ma, mb = model(), model()
      local oa = optim.Adam(ma, { lr = 0.01 })
      local ob = optim.Adam(mb, { lr = 0.01, iter_size = 2 })
      for _ = 1, 3 do
        oa:zero_grad()
        local la = ((ma(x) - y) ^ 2):mean()
        la:backward()
        assert.is_true(oa:step())
        for half = 0, 1 do
          ob:zero_grad() -- a no-op between the micro-batches
          local xs, ys = x:narrow(1, 1 + 4 * half, 4), y:narrow(1, 1 + 4 * half, 4)
          local lb = ((mb(xs) - ys) ^ 2):mean()
          lb:backward()
          assert.are.equal(half == 1, ob:will_step())
          assert.are.equal(half == 1, ob:step())
        end
      end
      for name, p in ma:named_parameters() do
        assert.tensor_near(p, mb:state_dict()[name], { atol = 1e-14, rtol = 1e-12 })
      end
      assert.are.equal(3, ob:state_dict().state[1].step)
    end)

    it("accepts the backward-step-zero_grad loop order and refuses unscale_ mid-window", function()
      local w = leaf({ 0 })
      local opt = optim.SGD({ w }, { lr = 1, iter_size = 3 })
      for k = 1, 3 do
        local loss = (w * k):sum()
        loss:backward()
        if k < 3 then
          contains(h.error_of(function() opt:unscale_(1) end),
            fmt("unscale_: called on micro-batch %d of iter_size 3", k))
        end
        assert.are.equal(k == 3, opt:step())
        opt:zero_grad()
      end
      assert.tensor_equal(f64({ -(1 + 2 + 3) / 3 }), w)
      assert.tensor_equal(f64({ 0 }), w.grad)
      -- skip_step ends a window without an update
      local loss = w:sum()
      loss:backward()
      opt:step(); opt:step()
      opt:skip_step()
      assert.is_true(opt:zero_grad())
      assert.tensor_equal(f64({ -2 }), w)
    end)
  end)
end)
