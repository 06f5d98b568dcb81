-- Specs of tern.optim.lr: every policy's value against its formula (written out here from the
-- tf.train.*_decay / OpenSeq2Seq definitions) at many steps and against hand-worked numbers at
-- the edges (step 0, boundaries, the end of the decay, the min_lr floor, staircase, warm-up),
-- step() on an optimizer's param groups, state_dict round trips and bad options.
local h = require "helpers.init"
local lr = require "tern.optim.lr"
local _ = h

local function near(expected, actual, tol)
  tol = tol or 1e-12
  assert(math.abs(expected - actual) <= tol * math.max(1, math.abs(expected)),
    string.format("expected %.17g, got %.17g", expected, actual))
end

-- Compare policy:value(s) with ref(s) for s = 0..n.
local function check_all(policy, ref, n)
  for s = 0, n do
    local ok, msg = pcall(near, ref(s), policy:value(s))
    assert(ok, string.format("step %d: %s", s, tostring(msg)))
  end
end

-- An object with the optimizer's param_groups shape.
local function fake_opt(...)
  local groups = {}
  for i, g in ipairs({ ... }) do groups[i] = g end
  return { param_groups = groups }
end

describe("tern.optim.lr", function()
  describe("fixed", function()
    it("returns lr at every step", function()
      local p = lr.fixed{ lr = 0.01 }
      for _, s in ipairs({ 0, 1, 7, 1000, 10 ^ 9 }) do assert.are.equal(0.01, p:value(s)) end
    end)

    it("ramps linearly from 0 over warmup_steps", function()
      local p = lr.fixed{ lr = 0.5, warmup_steps = 4 }
      assert.are.same({ 0, 0.125, 0.25, 0.375, 0.5, 0.5 },
        { p:value(0), p:value(1), p:value(2), p:value(3), p:value(4), p:value(5) })
    end)
  end)

  describe("piecewise_constant", function()
    it("keeps the earlier value on a boundary step (tf.train.piecewise_constant)", function()
      local p = lr.piecewise_constant{ boundaries = { 10, 20 }, values = { 1, 0.5, 0.1 } }
      local want = {}
      for s = 0, 30 do want[#want + 1] = s <= 10 and 1 or (s <= 20 and 0.5 or 0.1) end
      local got = {}
      for s = 0, 30 do got[#got + 1] = p:value(s) end
      assert.are.same(want, got)
      assert.are.equal(1, p:value(10))
      assert.are.equal(0.5, p:value(11))
      assert.are.equal(0.1, p:value(10 ^ 6))
    end)

    it("takes OpenSeq2Seq's lr + decay_rates and epochs with steps_per_epoch", function()
      local p = lr.piecewise_constant{ lr = 0.2, boundaries = { 2, 5 }, decay_rates = { 0.1, 0.01 },
        steps_per_epoch = 100 }
      near(0.2, p:value(0))
      near(0.2, p:value(200))
      near(0.02, p:value(201))
      near(0.02, p:value(500))
      near(0.002, p:value(501))
    end)

    it("applies warm-up to the piece in force", function()
      local p = lr.piecewise_constant{ boundaries = { 2 }, values = { 1, 0.5 }, warmup_steps = 4 }
      assert.are.same({ 0, 0.25, 0.5, 0.375, 0.5 },
        { p:value(0), p:value(1), p:value(2), p:value(3), p:value(4) })
    end)
  end)

  describe("exp_decay", function()
    local function ref(o)
      return function(s)
        local b = o.begin_decay_at or 0
        local v = o.lr
        if s >= b then
          local e = (s - b) / o.decay_steps
          if o.staircase then e = math.floor(e) end
          v = o.lr * o.decay_rate ^ e
        end
        return math.max(o.min_lr or 0, v)
      end
    end

    it("matches lr * rate^((s - b) / D) floored at min_lr", function()
      local o = { lr = 0.1, decay_steps = 7, decay_rate = 0.8, begin_decay_at = 13, min_lr = 0.004 }
      local p = lr.exp_decay(o)
      check_all(p, ref(o), 300)
      near(0.1, p:value(0))
      near(0.1, p:value(13))
      near(0.1 * 0.8 ^ (1 / 7), p:value(14))
      near(0.08, p:value(20))
      near(0.004, p:value(300)) -- 0.1 * 0.8^41 < min_lr
    end)

    it("decays in whole periods with staircase", function()
      local o = { lr = 1, decay_steps = 10, decay_rate = 0.5, staircase = true }
      local p = lr.exp_decay(o)
      check_all(p, ref(o), 100)
      assert.are.same({ 1, 1, 0.5, 0.5, 0.25 }, { p:value(0), p:value(9), p:value(10), p:value(19), p:value(20) })
      local q = lr.exp_decay{ lr = 1, decay_steps = 10, decay_rate = 0.5, use_staircase_decay = true }
      assert.are.equal(0.5, q:value(19))
    end)

    it("starts decaying after warm-up", function()
      local p = lr.exp_decay{ lr = 1, decay_steps = 1, decay_rate = 0.5, warmup_steps = 4, begin_decay_at = 2 }
      assert.are.same({ 0, 0.25, 0.5, 0.75, 1, 0.5, 0.25 },
        { p:value(0), p:value(1), p:value(2), p:value(3), p:value(4), p:value(5), p:value(6) })
    end)
  end)

  describe("poly_decay", function()
    -- tf.train.polynomial_decay(lr, s - b, D, min_lr, power) after b; OpenSeq2Seq warm-up.
    local function ref(o)
      return function(s)
        local w = o.warmup_steps or 0
        local b = math.max(o.begin_decay_at or 0, w)
        if s < w then return o.lr * s / w end
        if s < b then return o.lr end
        local t = math.min(s - b, o.decay_steps)
        local m = o.min_lr or 0
        return (o.lr - m) * (1 - t / o.decay_steps) ^ (o.power or 1) + m
      end
    end

    it("matches the polynomial decay at every step and stays at min_lr after it", function()
      for _, o in ipairs({
        { lr = 0.05, decay_steps = 100 },
        { lr = 0.05, decay_steps = 100, power = 2, min_lr = 1e-4 },
        { lr = 0.3, decay_steps = 37, power = 0.5, begin_decay_at = 11, min_lr = 0.01 },
        { lr = 0.3, decay_steps = 50, power = 2, begin_decay_at = 5, warmup_steps = 20 },
      }) do
        check_all(lr.poly_decay(o), ref(o), 200)
      end
    end)

    it("is linear with power 1 and reaches min_lr exactly at b + D", function()
      local p = lr.poly_decay{ lr = 1, decay_steps = 4, min_lr = 0.2, begin_decay_at = 3 }
      local got = {}
      for s = 0, 9 do got[#got + 1] = tonumber(string.format("%.12g", p:value(s))) end
      assert.are.same({ 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2 }, got)
    end)

    it("ramps from 0 during warm-up and begins decaying after it", function()
      local p = lr.poly_decay{ lr = 1, decay_steps = 2, warmup_steps = 2 }
      assert.are.same({ 0, 0.5, 1, 0.5, 0, 0 },
        { p:value(0), p:value(1), p:value(2), p:value(3), p:value(4), p:value(5) })
    end)
  end)

  describe("cosine_decay", function()
    it("follows half a cosine from lr to min_lr over decay_steps", function()
      local o = { lr = 0.1, decay_steps = 60, begin_decay_at = 10, min_lr = 0.001 }
      local p = lr.cosine_decay(o)
      check_all(p, function(s)
        if s < 10 then return 0.1 end
        local t = math.min(s - 10, 60)
        return 0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * t / 60))
      end, 150)
      near(0.1, p:value(10))
      near(0.0505, p:value(40)) -- halfway: the mean of lr and min_lr
      near(0.001, p:value(70))
      near(0.001, p:value(10 ^ 6))
    end)

    it("takes warm-up", function()
      local p = lr.cosine_decay{ lr = 2, decay_steps = 2, warmup_steps = 2 }
      near(0, p:value(0)); near(1, p:value(1)); near(2, p:value(2)); near(1, p:value(3)); near(0, p:value(4))
    end)
  end)

  describe("noam", function()
    it("matches the transformer policy: rising as s + 1, falling as 1/sqrt(s + 1)", function()
      local o = { d_model = 512, warmup_steps = 40, scale = 2, lr = 0.5 }
      local p = lr.noam(o)
      check_all(p, function(s)
        return 0.5 * 2 / math.sqrt(512) * math.min((s + 1) / 40 ^ 1.5, 1 / math.sqrt(s + 1))
      end, 400)
      -- peak at s + 1 = warmup_steps
      near(1 / math.sqrt(512) / math.sqrt(40), p:value(39))
      assert.is_true(p:value(38) < p:value(39) and p:value(40) < p:value(39))
      near(1 / math.sqrt(512) / 40 ^ 1.5, p:value(0))
    end)

    it("caps at max_lr and takes OpenSeq2Seq's coefficient", function()
      local p = lr.noam{ d_model = 4, warmup_steps = 4, coefficient = 10, max_lr = 1 }
      assert.are.equal(1, p:value(3)) -- uncapped: 10 * 0.5 * 0.5 = 2.5
      near(10 * 0.5 / 8, p:value(0))
    end)
  end)

  describe("step", function()
    it("sets every param group's lr (times its lr_scale) and advances the global step", function()
      local p = lr.poly_decay{ lr = 1, decay_steps = 4 }
      local opt = fake_opt({ lr = 9 }, { lr = 9, lr_scale = 0.1 })
      local seen = {}
      for _ = 1, 6 do
        local v = p:step(opt)
        seen[#seen + 1] = v
        assert.are.equal(v, opt.param_groups[1].lr)
        near(0.1 * v, opt.param_groups[2].lr)
      end
      assert.are.same({ 1, 0.75, 0.5, 0.25, 0, 0 }, seen)
      assert.are.equal(6, p.global_step)
    end)

    it("drives a tn.optim optimizer: SGD steps with the policy's lr times each group's lr_scale", function()
      local tn = h.tn
      local a = tn.tensor({ 1, 1 }, { dtype = "f64" }):requires_grad(true)
      local b = tn.tensor({ 1 }, { dtype = "f64" }):requires_grad(true)
      local opt = tn.optim.SGD({ { params = { a } }, { params = { b }, lr_scale = 0.5 } }, { lr = 123 })
      local p = tn.optim.lr.piecewise_constant{ boundaries = { 1 }, values = { 0.25, 0.125 } }
      assert.are.equal(lr, tn.optim.lr)
      local as, bs = {}, {}
      for _ = 1, 3 do
        opt:zero_grad()
        local loss = (a * a):sum() + (b * b):sum() -- gradients 2a, 2b
        loss:backward()
        p:step(opt)
        opt:step()
        as[#as + 1], bs[#bs + 1] = a:totable()[1], b:totable()[1]
      end
      -- a <- a - lr * 2a: lr 0.25, 0.25, 0.125; b at half the rate
      assert.are.same({ 0.5, 0.25, 0.1875 }, as)
      assert.are.same({ 0.75, 0.5625, 0.4921875 }, bs)
    end)

    it("rejects something without param_groups and a bad lr_scale", function()
      local p = lr.fixed{ lr = 1 }
      assert.error_matches(function() p:step(nil) end, "fixed:step: expected an optimizer with param_groups, got nil")
      assert.error_matches(function() p:step(fake_opt({ lr = 1, lr_scale = "x" })) end,
        "param_groups%[1%]%.lr_scale must be a non%-negative number, got x")
    end)
  end)

  describe("state_dict", function()
    it("round-trips the position as plain values", function()
      local p = lr.exp_decay{ lr = 1, decay_steps = 3, decay_rate = 0.5 }
      local opt = fake_opt({ lr = 0 })
      for _ = 1, 5 do p:step(opt) end
      local sd = p:state_dict()
      assert.are.same({ policy = "exp_decay", global_step = 5 }, sd)
      local q = lr.exp_decay{ lr = 1, decay_steps = 3, decay_rate = 0.5 }
      q:load_state_dict(sd)
      assert.are.equal(p:step(opt), q:step(fake_opt({ lr = 0 })))
      assert.are.equal(6, q.global_step)
    end)

    it("rejects another policy's state and a bad step", function()
      local p = lr.fixed{ lr = 1 }
      assert.error_matches(function() p:load_state_dict({ policy = "noam", global_step = 1 }) end,
        "state is for policy 'noam', not 'fixed'")
      assert.error_matches(function() p:load_state_dict({ policy = "fixed", global_step = -1 }) end,
        "global_step must be a non%-negative integer, got %-1")
      assert.error_matches(function() p:load_state_dict("x") end, "expected a table, got string")
    end)
  end)

  describe("bad options", function()
    local cases = {
      { "fixed", {}, "fixed: lr must be given" },
      { "fixed", { lr = -1 }, "fixed: lr must be >= 0, got %-1" },
      { "fixed", { lr = 0 / 0 }, "lr must be a finite number" },
      { "fixed", { lr = 1, warmup_steps = 1.5 }, "warmup_steps must be a non%-negative integer, got 1.5" },
      { "fixed", { lr = 1, lr_max = 2 }, "fixed: unknown option 'lr_max'" },
      { "exp_decay", { lr = 1, decay_rate = 0.5 }, "decay_steps must be given" },
      { "exp_decay", { lr = 1, decay_steps = 0, decay_rate = 0.5 }, "decay_steps must be a positive integer, got 0" },
      { "exp_decay", { lr = 1, decay_steps = 2, decay_rate = 0 }, "decay_rate must be > 0, got 0" },
      { "exp_decay", { lr = 1, decay_steps = 2, decay_rate = 0.5, staircase = 1 },
        "staircase must be a boolean, got 1" },
      { "exp_decay", { lr = 1, decay_steps = 2, decay_rate = 0.5, min_lr = 2 }, "min_lr must be <= lr %(1%), got 2" },
      { "poly_decay", { lr = 1, decay_steps = 2, power = 0 }, "power must be > 0, got 0" },
      { "poly_decay", { lr = 1, decay_steps = 2, begin_decay_at = -3 },
        "begin_decay_at must be a non%-negative integer" },
      { "cosine_decay", { lr = 1 }, "cosine_decay: decay_steps must be given" },
      { "noam", { d_model = 0, warmup_steps = 10 }, "d_model must be a positive integer, got 0" },
      { "noam", { d_model = 8 }, "warmup_steps must be given" },
      { "noam", { d_model = 8, warmup_steps = 4, scale = 1, coefficient = 2 }, "not both" },
      { "piecewise_constant", { boundaries = { 5, 5 }, values = { 1, 2, 3 } },
        "boundaries must be strictly increasing" },
      { "piecewise_constant", { boundaries = { 5 }, values = { 1 } },
        "values must be a list of #boundaries %+ 1 = 2 numbers, got 1 values" },
      { "piecewise_constant", { boundaries = {}, values = { 1 } }, "boundaries must be a non%-empty list" },
      { "piecewise_constant", { boundaries = { 5 } }, "values %(one per interval%) or lr %+ decay_rates is required" },
      { "piecewise_constant", { lr = 1, boundaries = { 5 }, decay_rates = { 0.1, 0.2 } },
        "decay_rates must be a list of #boundaries = 1 numbers, got 2 rates" },
      { "piecewise_constant", { lr = 1, boundaries = { 5 }, values = { 1, 2 } }, "lr is not used with values" },
    }
    for _, c in ipairs(cases) do
      it(string.format("%s rejects %s", c[1], c[3]:gsub("%%", "")), function()
        assert.error_matches(function() lr[c[1]](c[2]) end, c[3])
      end)
    end

    it("raises at the caller's line", function()
      local ok, msg = pcall(function() lr.poly_decay{ lr = 1 } end)
      assert.is_false(ok)
      assert.truthy(msg:find("lr_spec.lua:%d+: tn.optim.lr.poly_decay: decay_steps must be given"), msg)
    end)

    it("rejects a negative or fractional step in value()", function()
      local p = lr.fixed{ lr = 1 }
      assert.error_matches(function() p:value(-1) end, "value: step must be a non%-negative integer, got %-1")
      assert.error_matches(function() p:value(0.5) end, "got 0.5")
      assert.error_matches(function() p:value() end, "got nil")
    end)
  end)
end)
