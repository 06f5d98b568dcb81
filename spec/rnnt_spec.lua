-- Specs of tn.rnnt (the pruned RNN-T loss family, fast_rnnt's API) and tn.nn.Joiner:
-- golden values and gradients from spec/fixtures (the f64 port of fast_rnnt, torchaudio 0.13),
-- the identities the family must satisfy (simple = full with an additive joiner, smoothed with
-- zero scales = simple, pruned = full when s_range >= S+1, invariance to per-frame constants)
-- for every rnnt_type with random boundaries, f64 finite-difference gradient checks, reductions,
-- zero-length targets, the s_range warning and clamp, and the errors for bad input.
local h = require "helpers.init"
local tn = h.tn
local rnnt = tn.rnnt

local TYPES = { "regular", "modified", "constrained" }
local F64 = { atol = 1e-12, rtol = 1e-10 }

local function contains(s, part)
  assert.truthy(s:find(part, 1, true), "'" .. s .. "' does not contain '" .. part .. "'")
end

-- The error fn raises; it must name every part and point at this file (the caller's line).
local function expect_error(fn, ...)
  local msg = h.error_of(fn)
  for i = 1, select("#", ...) do contains(msg, (select(i, ...))) end
  contains(msg, "rnnt_spec.lua:")
  return msg
end

local function i64(rows) return tn.tensor(rows, { dtype = "i64" }) end

local function leaf(t) return t:detach():clone():requires_grad(true) end

-- Capture the s_range warning instead of printing it; returns the list and a restore function.
local function capture_warnings()
  local got, old = {}, rnnt.warn
  rnnt.warn = function(m) got[#got + 1] = m end
  rnnt.warned = false
  return got, function() rnnt.warn = old end
end

-- A gradient must be non-zero somewhere (so a gradcheck cannot pass vacuously).
local function nonzero(g, what)
  assert.is_not_nil(g, what .. " has no gradient")
  assert.is_true(g:abs():sum():item() > 0, what .. " has an all-zero gradient")
end

-- golden fixtures -----------------------------------------------------------------------------

local CONFIGS = {}
for _, ty in ipairs(TYPES) do
  for _, bd in ipairs({ "noboundary", "boundary" }) do
    for _, dp in ipairs({ "dp0", "dp05" }) do CONFIGS[#CONFIGS + 1] = ("rnnt_%s_%s_%s"):format(ty, bd, dp) end
  end
end

local cache = {}
local function fixture(name)
  if not cache[name] then
    local t, m = tn.load(h.fixtures .. "/" .. name .. ".safetensors")
    cache[name] = { t = t, m = m }
  end
  return cache[name].t, cache[name].m
end

-- keyword arguments shared by the losses of a config file
local function kw(t, m, extra)
  local a = {
    symbols = t.symbols, termination_symbol = tonumber(m.termination_symbol),
    boundary = t.boundary, rnnt_type = m.rnnt_type, delay_penalty = tonumber(m.delay_penalty),
  }
  for k, v in pairs(extra or {}) do a[k] = v end
  return a
end

describe("tn.rnnt against the fast_rnnt port (spec/fixtures/rnnt_*)", function()
  for _, name in ipairs(CONFIGS) do
    describe(name, function()
      it("get_logprobs gives px and py", function()
        local t, m = fixture(name)
        local px, py = rnnt.get_logprobs{ lm = t.lm, am = t.am, symbols = t.symbols,
          termination_symbol = tonumber(m.termination_symbol), boundary = t.boundary,
          rnnt_type = m.rnnt_type }
        assert.tensor_near(t.px, px, F64)
        assert.tensor_near(t.py, py, F64)
      end)

      it("loss_simple gives the losses, reductions, occupation grads and gradients", function()
        local t, m = fixture(name)
        local lm, am = leaf(t.lm), leaf(t.am)
        local loss, pxg, pyg = rnnt.loss_simple(kw(t, m, { lm = lm, am = am, reduction = "none",
          return_grad = true }))
        assert.tensor_near(t["simple.loss"], loss, F64)
        assert.tensor_near(t["simple.px_grad"], pxg, F64)
        assert.tensor_near(t["simple.py_grad"], pyg, F64)
        ;(loss * t.loss_weights):sum():backward()
        assert.tensor_near(t["simple.grad.lm"], lm.grad, F64)
        assert.tensor_near(t["simple.grad.am"], am.grad, F64)
        local mean = rnnt.loss_simple(kw(t, m, { lm = t.lm, am = t.am }))
        local sum = rnnt.loss_simple(kw(t, m, { lm = t.lm, am = t.am, reduction = "sum" }))
        assert.tensor_near(t["simple.loss_mean"], mean, F64)
        assert.tensor_near(t["simple.loss_sum"], sum, F64)
      end)

      it("loss_smoothed gives the losses and gradients", function()
        local t, m = fixture(name)
        local lm, am = leaf(t.lm), leaf(t.am)
        local loss = rnnt.loss_smoothed(kw(t, m, { lm = lm, am = am, reduction = "none",
          lm_only_scale = tonumber(m.lm_only_scale), am_only_scale = tonumber(m.am_only_scale) }))
        assert.tensor_near(t["smoothed.loss"], loss, F64)
        ;(loss * t.loss_weights):sum():backward()
        assert.tensor_near(t["smoothed.grad.lm"], lm.grad, F64)
        assert.tensor_near(t["smoothed.grad.am"], am.grad, F64)
      end)

      it("get_prune_ranges gives the ranges for s_range 2, 3 and 6", function()
        local t, m = fixture(name)
        local got, restore = capture_warnings()
        for _, r in ipairs({ 2, 3, 6 }) do
          local ranges = rnnt.get_prune_ranges{ px_grad = t["simple.px_grad"],
            py_grad = t["simple.py_grad"], boundary = t.prune_boundary, s_range = r }
          assert.are.equal(tonumber(m["s_range_effective.s" .. r]), ranges:size(3))
          assert.tensor_equal(t["ranges.s" .. r], ranges)
        end
        restore()
        assert.are.equal(m.warnings ~= "" and 1 or 0, #got)
      end)

      it("do_pruning gives am_pruned as a view and lm_pruned gathered", function()
        local t = fixture(name)
        for _, r in ipairs({ 2, 3 }) do
          local am_p, lm_p = rnnt.do_pruning{ am = t.am, lm = t.lm, ranges = t["ranges.s" .. r] }
          assert.tensor_equal(t["pruned.s" .. r .. ".am"], am_p)
          assert.tensor_equal(t["pruned.s" .. r .. ".lm"], lm_p)
          assert.are.equal(t.am:data_ptr(), am_p:data_ptr()) -- no copy
          assert.are.equal(0, am_p:stride(3))
        end
      end)

      it("loss_pruned gives the losses and logits gradients", function()
        local t, m = fixture(name)
        for _, r in ipairs({ 2, 3 }) do
          local p = "pruned.s" .. r .. "."
          local logits = leaf(t[p .. "logits"])
          local loss = rnnt.loss_pruned(kw(t, m, { logits = logits, ranges = t["ranges.s" .. r],
            reduction = "none" }))
          assert.tensor_near(t[p .. "loss"], loss, F64)
          ;(loss * t.loss_weights):sum():backward()
          assert.tensor_near(t[p .. "grad.logits"], logits.grad, F64)
        end
      end)

      it("loss gives the full losses, occupation grads and logits gradient", function()
        local t, m = fixture(name)
        local logits = leaf(t["full.logits"])
        local loss, pxg, pyg = rnnt.loss(kw(t, m, { logits = logits, reduction = "none",
          return_grad = true }))
        assert.tensor_near(t["full.loss"], loss, F64)
        assert.tensor_near(t["full.px_grad"], pxg, F64)
        assert.tensor_near(t["full.py_grad"], pyg, F64)
        ;(loss * t.loss_weights):sum():backward()
        assert.tensor_near(t["full.grad.logits"], logits.grad, F64)
      end)
    end)
  end

  describe("mutual_information_recursion (rnnt_mi)", function()
    for _, shape in ipairs({ "regular", "modified" }) do
      for _, with_b in ipairs({ true, false }) do
        it(("gives scores, occupation grads and gradients, %s px, %s"):format(shape,
          with_b and "general boundaries" or "no boundary"), function()
          local t = fixture("rnnt_mi")
          local sfx = with_b and "" or "_noboundary"
          local px, py = leaf(t[shape .. ".px"]), leaf(t[shape .. ".py"])
          local scores, pxg, pyg = rnnt.mutual_information_recursion{ px = px, py = py,
            boundary = with_b and t[shape .. ".boundary"] or nil, return_grad = true }
          assert.tensor_near(t[shape .. ".scores" .. sfx], scores, F64)
          assert.tensor_near(t[shape .. ".px_grad" .. sfx], pxg, F64)
          assert.tensor_near(t[shape .. ".py_grad" .. sfx], pyg, F64)
          scores:sum():backward()
          assert.tensor_near(t[shape .. ".px_grad" .. sfx], px.grad, F64)
          assert.tensor_near(t[shape .. ".py_grad" .. sfx], py.grad, F64)
          -- a weighted backward scales each utterance's occupations
          local w = tn.tensor({ 0.5, 2, -1, 3 }, { dtype = "f64" })
          px.grad, py.grad = nil, nil
          local s2 = rnnt.mutual_information_recursion{ px = px, py = py,
            boundary = with_b and t[shape .. ".boundary"] or nil }
          ;(s2 * w):sum():backward()
          assert.tensor_near(t[shape .. ".px_grad" .. sfx] * w:view(4, 1, 1), px.grad, F64)
        end)
      end
    end
  end)

  describe("loss against torchaudio 0.13 rnnt_loss (rnnt_torchaudio)", function()
    for k = 0, 3 do
      it("matches case " .. k .. " in f32 and the f64 reference", function()
        local t, m = fixture("rnnt_torchaudio")
        local p = "case" .. k .. "."
        local args = { symbols = t[p .. "symbols"], boundary = t[p .. "boundary"],
          termination_symbol = tonumber(m[p .. "blank"]), reduction = "none" }
        args.logits = leaf(t[p .. "logits"])
        local costs = rnnt.loss(args)
        assert.are.equal("f32", costs:dtype())
        assert.tensor_near(t[p .. "costs"], costs, { atol = 2e-5, rtol = 1e-5 })
        ;(costs * t[p .. "weights"]):sum():backward()
        assert.tensor_near(t[p .. "grad.logits"], args.logits.grad, { atol = 2e-5, rtol = 1e-4 })
        local l64 = leaf(t[p .. "logits"]:double())
        args.logits = l64
        local c64 = rnnt.loss(args)
        assert.tensor_near(t[p .. "ref_costs"], c64, F64)
        ;(c64 * t[p .. "weights"]:double()):sum():backward()
        assert.tensor_near(t[p .. "ref_grad.logits"], l64.grad, F64)
      end)
    end
  end)
end)

-- random cases --------------------------------------------------------------------------------

-- Random [begin_symbol, begin_frame, end_symbol, end_frame] rows feasible for rnnt_type
-- (h.rnnt_boundary_rows) as an i64 (B, 4) tensor
local function random_boundary(B, S, T, ty, zero_begin)
  return i64(h.rnnt_boundary_rows(B, S, T, ty, zero_begin))
end

local function random_case(seed, B, T, S, Cn, ty, opts)
  opts = opts or {}
  math.randomseed(seed)
  tn.manual_seed(seed)
  local term = (seed % Cn)
  local sym = {}
  for b = 1, B do
    sym[b] = {}
    for s = 1, S do
      local v = math.random(0, Cn - 2)
      sym[b][s] = v >= term and v + 1 or v -- never the termination symbol
    end
  end
  local boundary
  if not opts.no_boundary then boundary = random_boundary(B, S, T, ty, opts.zero_begin) end
  return {
    lm = tn.randn({ B, S + 1, Cn }, { dtype = "f64" }),
    am = tn.randn({ B, T, Cn }, { dtype = "f64" }),
    logits = tn.randn({ B, T, S + 1, Cn }, { dtype = "f64" }),
    symbols = S > 0 and i64(sym) or tn.zeros({ B, 0 }, { dtype = "i64" }),
    boundary = boundary,
    termination_symbol = term, rnnt_type = ty, delay_penalty = opts.dp or 0.5,
  }
end

local function args_of(c, extra)
  local a = { symbols = c.symbols, termination_symbol = c.termination_symbol, boundary = c.boundary,
    rnnt_type = c.rnnt_type, delay_penalty = c.delay_penalty }
  for k, v in pairs(extra) do a[k] = v end
  return a
end

describe("tn.rnnt identities (f64, random boundaries)", function()
  for ti, ty in ipairs(TYPES) do
    describe(ty, function()
      it("loss_simple equals loss on the additive joiner am + lm, with equal gradients", function()
        local c = random_case(100 + ti, 3, 7, 4, 6, ty)
        local lm, am = leaf(c.lm), leaf(c.am)
        local ls, pxs, pys = rnnt.loss_simple(args_of(c, { lm = lm, am = am, reduction = "none",
          return_grad = true }))
        ;(ls * tn.tensor({ 1, 2, 3 }, { dtype = "f64" })):sum():backward()
        local lm2, am2 = leaf(c.lm), leaf(c.am)
        local logits = am2:unsqueeze(3) + lm2:unsqueeze(2)
        local lf, pxf, pyf = rnnt.loss(args_of(c, { logits = logits, reduction = "none",
          return_grad = true }))
        ;(lf * tn.tensor({ 1, 2, 3 }, { dtype = "f64" })):sum():backward()
        assert.tensor_near(ls, lf, F64)
        assert.tensor_near(pxs, pxf, F64)
        assert.tensor_near(pys, pyf, F64)
        assert.tensor_near(lm.grad, lm2.grad, F64)
        assert.tensor_near(am.grad, am2.grad, F64)
        nonzero(lm.grad, "lm")
      end)

      it("loss_smoothed with zero scales equals loss_simple", function()
        local c = random_case(200 + ti, 3, 6, 3, 5, ty)
        local lm, am = leaf(c.lm), leaf(c.am)
        local a = rnnt.loss_simple(args_of(c, { lm = lm, am = am, reduction = "sum" }))
        a:backward()
        local lm2, am2 = leaf(c.lm), leaf(c.am)
        local b = rnnt.loss_smoothed(args_of(c, { lm = lm2, am = am2, reduction = "sum",
          lm_only_scale = 0, am_only_scale = 0 }))
        b:backward()
        assert.tensor_near(a, b, F64)
        assert.tensor_near(lm.grad, lm2.grad, F64)
        assert.tensor_near(am.grad, am2.grad, F64)
        -- and nonzero scales change it
        local s = rnnt.loss_smoothed(args_of(c, { lm = c.lm, am = c.am, reduction = "sum" }))
        assert.is_true(math.abs(s:item() - a:item()) > 1e-6)
      end)

      it("loss_simple and loss_smoothed give the same bits at 1 and 2 threads", function()
        -- big enough for the utterance-parallel phases (B (S+1+T) C >= 65536)
        local c = random_case(250 + ti, 4, 40, 12, 400, ty)
        for _, dt in ipairs({ "f32", "f64" }) do
          for _, fn in ipairs({ rnnt.loss_simple, rnnt.loss_smoothed }) do
            local runs = {}
            local nt = tn.get_num_threads()
            for i, threads in ipairs({ 1, 2 }) do
              tn.set_num_threads(threads)
              local lm, am = leaf(c.lm:to(dt)), leaf(c.am:to(dt))
              local loss, pxg = fn(args_of(c, { lm = lm, am = am, reduction = "none", return_grad = true }))
              loss:sum():backward()
              runs[i] = { loss, pxg, lm.grad, am.grad }
            end
            tn.set_num_threads(nt)
            for k = 1, 4 do assert.tensor_equal(runs[1][k], runs[2][k]) end
            assert.is_true(runs[1][1]:abs():max():item() < math.huge) -- finite, not NaN
          end
        end
      end)

      it("loss_pruned equals loss when s_range >= S+1 (ranges clamp to 0..S)", function()
        local c = random_case(300 + ti, 3, 6, 4, 5, ty)
        local _, pxg, pyg = rnnt.loss_simple(args_of(c, { lm = c.lm, am = c.am, return_grad = true }))
        local got, restore = capture_warnings()
        local ranges = rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg, boundary = c.boundary,
          s_range = 7 }
        restore()
        assert.are.equal(0, #got) -- clamping is silent
        assert.tensor_equal(tn.arange(5, { dtype = "i64" }):expand(3, 6, 5):contiguous(), ranges)
        local l1, l2 = leaf(c.logits), leaf(c.logits)
        local lp = rnnt.loss_pruned(args_of(c, { logits = l1, ranges = ranges, reduction = "none" }))
        local lf = rnnt.loss(args_of(c, { logits = l2, reduction = "none" }))
        assert.tensor_near(lf, lp, F64)
        lp:sum():backward()
        lf:sum():backward()
        assert.tensor_near(l2.grad, l1.grad, F64)
        nonzero(l1.grad, "logits")
      end)

      it("losses are invariant to per-frame constants added to am, lm and logits", function()
        local c = random_case(400 + ti, 2, 6, 3, 5, ty)
        local ca = tn.randn({ 2, 6, 1 }, { dtype = "f64" }) * 5
        local cl = tn.randn({ 2, 4, 1 }, { dtype = "f64" }) * 5
        local cf = tn.randn({ 2, 6, 4, 1 }, { dtype = "f64" }) * 5
        for _, fn in ipairs({ rnnt.loss_simple, rnnt.loss_smoothed }) do
          local a = fn(args_of(c, { lm = c.lm, am = c.am, reduction = "none" }))
          local b = fn(args_of(c, { lm = c.lm + cl, am = c.am + ca, reduction = "none" }))
          assert.tensor_near(a, b, { atol = 1e-11, rtol = 1e-11 })
        end
        local a = rnnt.loss(args_of(c, { logits = c.logits, reduction = "none" }))
        local b = rnnt.loss(args_of(c, { logits = c.logits + cf, reduction = "none" }))
        assert.tensor_near(a, b, { atol = 1e-11, rtol = 1e-11 })
        -- a constant per (frame, class) is not a per-frame constant: it changes the loss
        local d = rnnt.loss_simple(args_of(c, { lm = c.lm, am = c.am + tn.randn({ 2, 6, 5 }, { dtype = "f64" }),
          reduction = "sum" }))
        assert.is_true(math.abs(d:item() - a:sum():item()) > 1e-6)
      end)
    end)
  end
end)

describe("tn.rnnt gradients by finite differences (f64)", function()
  for ti, ty in ipairs(TYPES) do
    describe(ty, function()
      local function case() return random_case(500 + ti, 2, 4, 2, 3, ty) end

      it("of get_logprobs w.r.t. lm and am", function()
        local c = case()
        local lm, am = leaf(c.lm), leaf(c.am)
        assert.gradcheck(function(l, a)
          local px, py = rnnt.get_logprobs{ lm = l, am = a, symbols = c.symbols,
            termination_symbol = c.termination_symbol, boundary = c.boundary, rnnt_type = ty }
          -- -inf entries are constants; a finite mask keeps the output finite
          return px:masked_fill(px:eq(-math.huge), 0), py
        end, { lm, am })
      end)

      it("of loss_simple and loss_smoothed w.r.t. lm and am", function()
        local c = case()
        local lm, am = leaf(c.lm), leaf(c.am)
        for _, fn in ipairs({ rnnt.loss_simple, rnnt.loss_smoothed }) do
          assert.gradcheck(function(l, a)
            return fn(args_of(c, { lm = l, am = a, reduction = "none" }))
          end, { lm, am })
        end
        rnnt.loss_smoothed(args_of(c, { lm = lm, am = am })):backward()
        nonzero(lm.grad, "lm")
        nonzero(am.grad, "am")
      end)

      it("of loss w.r.t. logits", function()
        local c = case()
        local logits = leaf(c.logits)
        assert.gradcheck(function(x)
          return rnnt.loss(args_of(c, { logits = x, reduction = "none" }))
        end, { logits })
      end)

      -- a case with prune ranges of s_range 2 from its simple loss, am and lm leaves and the
      -- weights of the tanh outputs
      local function pruned_case()
        local c = case()
        local _, pxg, pyg = rnnt.loss_simple(args_of(c, { lm = c.lm, am = c.am, return_grad = true }))
        local ranges = rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg, boundary = c.boundary,
          s_range = 2 }
        local am, lm = leaf(c.am), leaf(c.lm)
        local w = tn.randn({ 2, 4, ranges:size(3), 3 }, { dtype = "f64" })
        return c, ranges, am, lm, w
      end

      it("of do_pruning and loss_pruned w.r.t. am, lm and logits", function()
        local c, ranges, am, lm, w = pruned_case()
        assert.gradcheck(function(a, l)
          local ap, lp = rnnt.do_pruning{ am = a, lm = l, ranges = ranges }
          return ((ap + lp):tanh() * w):sum(4)
        end, { am, lm })
        local logits = leaf(tn.randn({ 2, 4, ranges:size(3), 3 }, { dtype = "f64" }))
        assert.gradcheck(function(x)
          return rnnt.loss_pruned(args_of(c, { logits = x, ranges = ranges, reduction = "none" }))
        end, { logits })
      end)

      it("of the fused pruned_tanh w.r.t. am and lm", function()
        local _, ranges, am, lm, w = pruned_case()
        assert.gradcheck(function(a, l)
          return (rnnt.pruned_tanh{ am = a, lm = l, ranges = ranges } * w):sum(4)
        end, { am, lm })
      end)

      it("of mutual_information_recursion w.r.t. px and py", function()
        tn.manual_seed(600 + ti)
        local T1 = ty == "regular" and 5 or 4
        local px = leaf(tn.randn({ 2, 3, T1 }, { dtype = "f64" }))
        local py = leaf(tn.randn({ 2, 4, 4 }, { dtype = "f64" }))
        local bnd = i64({ { 1, 0, 3, 4 }, { 0, 1, 2, 4 } })
        assert.gradcheck(function(x, y)
          return rnnt.mutual_information_recursion{ px = x, py = y, boundary = bnd }
        end, { px, py })
      end)
    end)
  end
end)

describe("tn.rnnt behaviour", function()
  it("reduces with none, mean and sum, and scales the gradient accordingly", function()
    local c = random_case(700, 3, 5, 3, 4, "regular")
    local none = rnnt.loss(args_of(c, { logits = c.logits, reduction = "none" }))
    local l1, l2 = leaf(c.logits), leaf(c.logits)
    local mean = rnnt.loss(args_of(c, { logits = l1 }))
    local sum = rnnt.loss(args_of(c, { logits = l2, reduction = "sum" }))
    assert.are.same({}, mean:shape())
    assert.tensor_near(none:sum():item() / 3, mean, F64)
    assert.tensor_near(none:sum():item(), sum, F64)
    mean:backward()
    sum:backward()
    assert.tensor_near(l2.grad / 3, l1.grad, F64)
    for _, fn in ipairs({ rnnt.loss_simple, rnnt.loss_smoothed }) do
      local n = fn(args_of(c, { lm = c.lm, am = c.am, reduction = "none" }))
      assert.tensor_near(n:mean():item(), fn(args_of(c, { lm = c.lm, am = c.am })), F64)
      assert.tensor_near(n:sum():item(), fn(args_of(c, { lm = c.lm, am = c.am, reduction = "sum" })), F64)
    end
  end)

  it("handles zero-length targets (S = 0): the loss is the blank path", function()
    local c = random_case(800, 2, 5, 0, 4, "regular", { no_boundary = true, dp = 0 })
    local term = c.termination_symbol
    -- full: -sum_t log_softmax(logits[b, t, 0])[term]
    local lf = rnnt.loss(args_of(c, { logits = c.logits, reduction = "none" }))
    local expect = -c.logits:log_softmax(4):narrow(4, term + 1, 1):sum({ 2, 3, 4 })
    assert.tensor_near(expect, lf, F64)
    -- simple: the same with logits am + lm
    local add = c.am:unsqueeze(3) + c.lm:unsqueeze(2)
    local ls = rnnt.loss_simple(args_of(c, { lm = c.lm, am = c.am, reduction = "none" }))
    assert.tensor_near(-add:log_softmax(4):narrow(4, term + 1, 1):sum({ 2, 3, 4 }), ls, F64)
    -- ranges of width 1, all zero; the pruned loss equals the full one
    local _, pxg, pyg = rnnt.loss_simple(args_of(c, { lm = c.lm, am = c.am, return_grad = true }))
    local ranges = rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg, s_range = 4 }
    assert.tensor_equal(tn.zeros({ 2, 5, 1 }, { dtype = "i64" }), ranges)
    local lp = rnnt.loss_pruned(args_of(c, { logits = c.logits, ranges = ranges, reduction = "none" }))
    assert.tensor_near(lf, lp, F64)
    for _, ty in ipairs({ "modified", "constrained" }) do
      local l = rnnt.loss(args_of(c, { logits = c.logits, reduction = "none", rnnt_type = ty }))
      assert.tensor_near(expect, l, F64)
    end
  end)

  it("raises s_range to cover every utterance, warning once, and clamps s_range > S silently", function()
    local t = fixture("rnnt_regular_boundary_dp0") -- row 2 has S_b = 4 in T_b = 2 frames
    local got, restore = capture_warnings()
    local function ranges(r)
      return rnnt.get_prune_ranges{ px_grad = t["simple.px_grad"], py_grad = t["simple.py_grad"],
        boundary = t.prune_boundary, s_range = r }
    end
    local ok, a = pcall(ranges, 2)
    local _, b = pcall(ranges, 2)
    local _, c = pcall(ranges, 9)
    restore()
    assert.is_true(ok, tostring(a))
    assert.are.equal(3, a:size(3))
    assert.are.equal(3, b:size(3))
    assert.are.equal(5, c:size(3))
    assert.are.equal(1, #got)
    contains(got[1], "s_range = 2")
    contains(got[1], "s_range = 3")
    -- modified RNN-T needs no raise: s_range 1 is kept
    local m = fixture("rnnt_modified_boundary_dp0")
    local r1 = rnnt.get_prune_ranges{ px_grad = m["simple.px_grad"], py_grad = m["simple.py_grad"],
      boundary = m.prune_boundary, s_range = 1 }
    assert.are.equal(1, r1:size(3))
  end)

  it("accepts i32 symbols and a boundary given as a Lua table", function()
    local c = random_case(850, 2, 5, 3, 4, "regular", { zero_begin = true })
    local ref = rnnt.loss(args_of(c, { logits = c.logits, reduction = "none" }))
    local got = rnnt.loss(args_of(c, { logits = c.logits, reduction = "none", symbols = c.symbols:int(),
      boundary = c.boundary:totable() }))
    assert.tensor_near(ref, got, F64)
    local s = rnnt.loss_simple(args_of(c, { lm = c.lm, am = c.am, symbols = c.symbols:int() }))
    assert.tensor_near(rnnt.loss_simple(args_of(c, { lm = c.lm, am = c.am })), s, F64)
  end)

  it("converts f16 and bf16 inputs to f32 and returns gradients in the input dtype", function()
    local c = random_case(900, 2, 5, 3, 4, "regular")
    for _, dt in ipairs({ "f16", "bf16" }) do
      local lm, am = leaf(c.lm:to(dt)), leaf(c.am:to(dt))
      local l = rnnt.loss_simple(args_of(c, { lm = lm, am = am }))
      assert.are.equal("f32", l:dtype())
      l:backward()
      assert.are.equal(dt, lm.grad:dtype())
      local lm32, am32 = leaf(lm:to("f32")), leaf(am:to("f32"))
      local l32 = rnnt.loss_simple(args_of(c, { lm = lm32, am = am32 }))
      l32:backward()
      assert.tensor_near(l32, l, { atol = 1e-6, rtol = 1e-6 })
      assert.tensor_near(lm32.grad, lm.grad:to("f32"), { atol = 1e-2, rtol = 1e-2 })
      -- full loss and pruning through an f16 joiner output
      local logits = leaf(c.logits:to(dt))
      rnnt.loss(args_of(c, { logits = logits })):backward()
      assert.are.equal(dt, logits.grad:dtype())
      local ref = leaf(logits:to("f32"))
      rnnt.loss(args_of(c, { logits = ref })):backward()
      assert.tensor_near(ref.grad, logits.grad:to("f32"), { atol = 1e-3, rtol = 1e-2 })
      local ranges = tn.zeros({ 2, 5, 2 }, { dtype = "i64" }) + tn.arange(2, { dtype = "i64" })
      local am_p, lm_p = rnnt.do_pruning{ am = am, lm = lm, ranges = ranges }
      assert.are.equal(dt, lm_p:dtype())
      lm.grad = nil
      lm_p:to("f32"):sum():backward()
      assert.are.equal(dt, lm.grad:dtype())
      assert.are.equal(dt, am_p:dtype())
    end
  end)

  it("fuses pruning, add and tanh: pruned_tanh = tanh(do_pruning's am_pruned + lm_pruned)", function()
    tn.manual_seed(41)
    -- D = 150 spans three 64-column slices of the backward (the last one partial)
    local B, T, S, D, R = 3, 6, 7, 150, 3
    local ranges = (tn.randint(0, S + 2 - R, { B, T, 1 }) + tn.arange(R):view(1, 1, R)):to("i64")
    for _, dt in ipairs({ "f64", "f32" }) do
      local tol = dt == "f64" and F64 or { atol = 2e-6, rtol = 1e-5 }
      local am0, lm0 = tn.randn({ B, T, D }, { dtype = dt }), tn.randn({ B, S + 1, D }, { dtype = dt })
      local w = tn.randn({ B, T, R, D }, { dtype = dt })
      local am, lm = leaf(am0), leaf(lm0)
      local hf = rnnt.pruned_tanh{ am = am, lm = lm, ranges = ranges }
      assert.are.same({ B, T, R, D }, hf:shape())
      ;(hf * w):sum():backward()
      local am2, lm2 = leaf(am0), leaf(lm0)
      local ap, lp = rnnt.do_pruning{ am = am2, lm = lm2, ranges = ranges }
      local hu = (ap + lp):tanh()
      ;(hu * w):sum():backward()
      assert.tensor_near(hu, hf, tol)
      assert.tensor_near(am2.grad, am.grad, tol)
      assert.tensor_near(lm2.grad, lm.grad, tol)
      -- only one input needing grad
      local lm3 = leaf(lm0)
      ;(rnnt.pruned_tanh{ am = am0, lm = lm3, ranges = ranges } * w):sum():backward()
      assert.tensor_near(lm2.grad, lm3.grad, tol)
      -- the same bits at 1 and 2 threads (fixed summation order)
      local nt = tn.get_num_threads()
      tn.set_num_threads(1)
      local am4 = leaf(am0)
      local h1 = rnnt.pruned_tanh{ am = am4, lm = lm0, ranges = ranges }
      ;(h1 * w):sum():backward()
      tn.set_num_threads(2)
      local am5 = leaf(am0)
      local h2 = rnnt.pruned_tanh{ am = am5, lm = lm0, ranges = ranges }
      ;(h2 * w):sum():backward()
      tn.set_num_threads(nt)
      assert.tensor_equal(h1, h2)
      assert.tensor_equal(am4.grad, am5.grad)
    end
  end)

  it("runs pruned_tanh on f16 inputs in f32 and gives f16 back", function()
    tn.manual_seed(42)
    local ranges = tn.zeros({ 2, 4, 2 }, { dtype = "i64" }) + tn.arange(2, { dtype = "i64" })
    local am0, lm0 = tn.randn(2, 4, 5), tn.randn(2, 3, 5)
    local am, lm = leaf(am0:to("f16")), leaf(lm0:to("f16"))
    local out = rnnt.pruned_tanh{ am = am, lm = lm, ranges = ranges }
    assert.are.equal("f16", out:dtype())
    out:to("f32"):sum():backward()
    assert.are.equal("f16", am.grad:dtype())
    local ref = rnnt.pruned_tanh{ am = am:to("f32"), lm = lm:to("f32"), ranges = ranges }
    assert.tensor_near(ref, out:to("f32"), { atol = 1e-3, rtol = 1e-3 })
  end)

  it("writes the logits gradient in place with overwrite_logits, and only then", function()
    local c = random_case(1000, 2, 5, 3, 4, "modified")
    local ref = leaf(c.logits)
    rnnt.loss(args_of(c, { logits = ref })):backward()
    local x = leaf(c.logits)
    local logits = x * 1 -- a non-leaf, as a joiner output is
    local loss = rnnt.loss(args_of(c, { logits = logits, overwrite_logits = true }))
    loss:backward({ retain_graph = true })
    assert.tensor_near(ref.grad, x.grad, F64)
    assert.tensor_near(ref.grad, logits, F64) -- the values are now the gradient
    contains(h.error_of(function() loss:backward() end), "overwritten") -- raised by backward()
    -- without the flag (and for a leaf with it) the logits keep their values
    local y = leaf(c.logits)
    local l2 = y * 1
    rnnt.loss(args_of(c, { logits = l2 })):backward()
    assert.tensor_near(c.logits, l2, F64)
    local z = leaf(c.logits)
    rnnt.loss(args_of(c, { logits = z, overwrite_logits = true })):backward()
    assert.tensor_near(c.logits, z, F64)
    assert.tensor_near(ref.grad, z.grad, F64)
  end)

  it("does not record a graph under no_grad and accepts non-contiguous inputs", function()
    local c = random_case(1100, 2, 5, 3, 4, "constrained")
    local lm = leaf(c.lm)
    local l = tn.no_grad(function() return rnnt.loss_simple(args_of(c, { lm = lm, am = c.am })) end)
    assert.is_nil(l:grad_fn())
    local lt = leaf(c.logits:transpose(1, 2):contiguous())
    local a = rnnt.loss(args_of(c, { logits = lt:transpose(1, 2), reduction = "none" }))
    a:sum():backward()
    local b = rnnt.loss(args_of(c, { logits = c.logits, reduction = "none" }))
    assert.tensor_near(b, a, F64)
    nonzero(lt.grad, "transposed logits")
  end)
end)

describe("tn.rnnt errors", function()
  local c = random_case(1200, 2, 5, 3, 4, "regular", { zero_begin = true })
  local function simple(extra) return rnnt.loss_simple(args_of(c, extra)) end
  local function with(extra)
    local a = { lm = c.lm, am = c.am }
    for k, v in pairs(extra) do a[k] = v end
    return a
  end

  it("names symbols out of [0, C) and a bad termination_symbol", function()
    expect_error(function() simple(with({ symbols = i64({ { 0, 1, 4 }, { 1, 2, 3 } }) })) end,
      "rnnt.loss_simple", "symbols")
    local negative = i64({ { 0, -1, 2 }, { 1, 2, 3 } })
    expect_error(function() rnnt.loss(args_of(c, { logits = c.logits, symbols = negative })) end,
      "rnnt.loss", "symbols")
    expect_error(function() simple(with({ termination_symbol = 4 })) end, "termination_symbol")
    expect_error(function() simple(with({ termination_symbol = 1.5 })) end, "termination_symbol", "integer")
    expect_error(function() simple(with({ termination_symbol = false })) end, "termination_symbol")
  end)

  it("names boundaries outside the tensors or ending before they begin", function()
    expect_error(function() simple(with({ boundary = i64({ { 0, 0, 4, 5 }, { 0, 0, 3, 5 } }) })) end, "boundary")
    expect_error(function() simple(with({ boundary = i64({ { 0, 0, 3, 6 }, { 0, 0, 3, 5 } }) })) end, "boundary")
    expect_error(function() simple(with({ boundary = i64({ { 2, 0, 1, 5 }, { 0, 0, 3, 5 } }) })) end, "boundary")
    expect_error(function() simple(with({ boundary = i64({ { 0, 3, 3, 2 }, { 0, 0, 3, 5 } }) })) end, "boundary")
    expect_error(function() simple(with({ boundary = i64({ { 0, 0, 3, 5 } }) })) end, "boundary", "{1, 4}", "{2, 4}")
    expect_error(function() simple(with({ boundary = tn.zeros({ 2, 4 }) })) end, "boundary", "f32")
    expect_error(function() rnnt.mutual_information_recursion{ px = c.lm:narrow(2, 1, 3), py = c.lm:narrow(3, 1, 3),
      boundary = i64({ { -1, 0, 1, 1 }, { 0, 0, 1, 1 } }) } end, "boundary")
  end)

  it("refuses T_b < S_b for modified and constrained", function()
    for _, ty in ipairs({ "modified", "constrained" }) do
      expect_error(function() simple(with({ rnnt_type = ty, boundary = i64({ { 0, 0, 3, 2 }, { 0, 0, 1, 5 } }) })) end,
        "frames", "symbols")
      local short = random_case(1201, 2, 2, 3, 4, ty, { no_boundary = true })
      expect_error(function() rnnt.loss(args_of(short, { logits = short.logits })) end, "T >= S")
    end
  end)

  it("refuses NaN and infinite inputs instead of returning a NaN loss", function()
    local bad = c.lm:clone()
    bad:set({ 1, 2, 3 }, 0 / 0)
    expect_error(function() simple(with({ lm = bad })) end, "lm")
    local bad_am = c.am:clone()
    bad_am:set({ 2, 1, 1 }, math.huge)
    expect_error(function() simple(with({ am = bad_am })) end, "am")
    local lg = c.logits:clone()
    lg:set({ 1, 1, 1, 1 }, 0 / 0)
    expect_error(function() rnnt.loss(args_of(c, { logits = lg })) end, "rnnt.loss", "logits")
    local lg2 = c.logits:clone()
    lg2:set({ 2, 3, 2, 2 }, math.huge)
    expect_error(function() rnnt.loss(args_of(c, { logits = lg2 })) end, "logits")
    local px, py = rnnt.get_logprobs{ lm = c.lm, am = c.am, symbols = c.symbols,
      termination_symbol = c.termination_symbol }
    local pxn = px:clone()
    pxn:set({ 1, 1, 1 }, 0 / 0)
    expect_error(function() rnnt.mutual_information_recursion{ px = pxn, py = py } end, "px")
  end)

  it("names wrong dtypes", function()
    expect_error(function() simple(with({ symbols = c.symbols:double() })) end, "symbols", "f64")
    expect_error(function() simple(with({ lm = c.lm:long() })) end, "'lm'", "float", "i64")
    expect_error(function() rnnt.loss(args_of(c, { logits = c.logits:int() })) end, "'logits'", "i32")
    expect_error(function() rnnt.loss_pruned(args_of(c, { logits = c.logits, ranges = tn.zeros({ 2, 5, 4 }) })) end,
      "ranges", "f32")
    local zr = tn.zeros({ 2, 5, 2 }, { dtype = "i64" })
    expect_error(function() rnnt.do_pruning{ am = c.am, lm = c.lm:float(), ranges = zr } end,
      "am is f64 but lm is f32")
  end)

  it("names wrong shapes", function()
    local am3 = tn.randn({ 2, 5, 3 }, { dtype = "f64" })
    expect_error(function() simple(with({ am = am3 })) end, "lm {2, 4, 4}", "am {2, 5, 3}")
    expect_error(function() simple(with({ symbols = i64({ { 0, 1 }, { 1, 2 } }) })) end, "symbols", "{2, 2}", "{2, 3}")
    expect_error(function() simple(with({ lm = c.lm:view(8, 4) })) end, "'lm'", "3-d", "{8, 4}")
    expect_error(function() rnnt.loss(args_of(c, { logits = c.lm })) end, "'logits'", "4-d")
    expect_error(function() rnnt.loss(args_of(c, { logits = c.logits:narrow(3, 1, 3) })) end, "S+1 = 4", "{2, 5, 3, 4}")
    local r4 = tn.zeros({ 2, 4, 2 }, { dtype = "i64" })
    expect_error(function() rnnt.loss_pruned(args_of(c, { logits = c.logits:narrow(3, 1, 2), ranges = r4 })) end,
      "ranges", "{2, 4, 2}", "{2, 5, 2}")
    local px7, py5 = tn.zeros({ 2, 3, 7 }, { dtype = "f64" }), tn.zeros({ 2, 4, 5 }, { dtype = "f64" })
    expect_error(function() rnnt.mutual_information_recursion{ px = px7, py = py5 } end,
      "px {2, 3, 7}", "py {2, 4, 5}")
    local pxg6, pyg5 = tn.zeros({ 2, 3, 6 }), tn.zeros({ 2, 3, 5 })
    expect_error(function() rnnt.get_prune_ranges{ px_grad = pxg6, py_grad = pyg5, s_range = 2 } end,
      "px_grad", "py_grad {2, 3, 5}")
    local lm3, r5 = tn.randn({ 2, 4, 3 }, { dtype = "f64" }), tn.zeros({ 2, 5, 2 }, { dtype = "i64" })
    expect_error(function() rnnt.do_pruning{ am = c.am, lm = lm3, ranges = r5 } end,
      "agree in B and D")
    expect_error(function() rnnt.pruned_tanh{ am = c.am, lm = lm3, ranges = r5 } end,
      "rnnt.pruned_tanh", "agree in B and D", "am {2, 5, 4}", "lm {2, 4, 3}")
    expect_error(function() rnnt.pruned_tanh{ am = c.am, lm = c.lm, ranges = r4 } end,
      "rnnt.pruned_tanh", "ranges", "{2, 4, 2}", "{2, 5, 2}")
    expect_error(function() rnnt.pruned_tanh{ am = c.am, lm = c.lm, ranges = tn.zeros({ 2, 5, 2 }) } end,
      "rnnt.pruned_tanh", "ranges", "f32")
    expect_error(function() rnnt.pruned_tanh{ am = c.am:view(10, 4), lm = c.lm, ranges = r5 } end,
      "rnnt.pruned_tanh", "'am'", "3-d")
  end)

  it("names ranges that are not a band inside [0, S]", function()
    local r = tn.zeros({ 2, 5, 2 }, { dtype = "i64" }) + tn.arange(2, { dtype = "i64" })
    r:set({ 1, 3, 2 }, 4)
    local lg2 = c.logits:narrow(3, 1, 2):contiguous()
    expect_error(function() rnnt.loss_pruned(args_of(c, { logits = lg2, ranges = r })) end,
      "rnnt.loss_pruned", "ranges")
    r:set({ 1, 3, 2 }, 9)
    expect_error(function() rnnt.do_pruning{ am = c.am, lm = c.lm, ranges = r } end, "rnnt.do_pruning", "ranges")
    expect_error(function() rnnt.pruned_tanh{ am = c.am, lm = c.lm, ranges = r } end, "rnnt.pruned_tanh",
      "ranges at [1, 3, 2] is 9", "[0, S+1 = 4)")
    r:set({ 1, 3, 2 }, -1)
    expect_error(function() rnnt.pruned_tanh{ am = c.am, lm = c.lm, ranges = r } end, "rnnt.pruned_tanh", "is -1")
  end)

  it("names unknown options, missing arguments and a bad s_range", function()
    expect_error(function() simple(with({ rnnt_type = "pruned" })) end, "rnnt_type", "'pruned'", "constrained")
    expect_error(function() simple(with({ reduction = "avg" })) end, "reduction", "'avg'")
    expect_error(function() simple(with({ boundry = c.boundary })) end, "unknown argument 'boundry'")
    expect_error(function() rnnt.loss_simple{ lm = c.lm, am = c.am, symbols = c.symbols } end,
      "termination_symbol", "required")
    expect_error(function() rnnt.loss_simple(c.lm) end, "keyword table")
    expect_error(function() simple(with({ return_grad = 1 })) end, "return_grad", "boolean")
    local _, pxg, pyg = simple(with({ return_grad = true }))
    expect_error(function() rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg, s_range = 0 } end,
      "s_range", "positive")
    expect_error(function() rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg } end, "s_range", "required")
  end)
end)

describe("tn.nn.Joiner", function()
  it("computes output_linear(tanh(enc + dec)) with icefall's parameter names", function()
    tn.manual_seed(3)
    local j = tn.nn.Joiner(4, 3, 6, 5, { dtype = "f64" })
    local names = {}
    for name in j:named_parameters() do names[#names + 1] = name end
    assert.are.same({ "encoder_proj.weight", "encoder_proj.bias", "decoder_proj.weight", "decoder_proj.bias",
      "output_linear.weight", "output_linear.bias" }, names)
    local enc = tn.randn({ 2, 7, 4 }, { dtype = "f64" })
    local dec = tn.randn({ 2, 3, 3 }, { dtype = "f64" })
    local e, d = j:project(enc, dec)
    local out = j(e:unsqueeze(3), d:unsqueeze(2))
    assert.are.same({ 2, 7, 3, 5 }, out:shape())
    local W, b = j.output_linear.weight, j.output_linear.bias
    local expect = (e:unsqueeze(3) + d:unsqueeze(2)):tanh():matmul(W:t()) + b
    assert.tensor_near(expect, out, F64)
    assert.tensor_near(out, j(enc:unsqueeze(3), dec:unsqueeze(2), true), F64)
    expect_error(function() j(enc, dec) end, "joiner_dim = 6")
    expect_error(function() j:pruned(enc, d, tn.zeros({ 2, 7, 2 }, { dtype = "i64" })) end, "Joiner", "am",
      "6 features")
  end)

  it("holds the simple-loss projections when asked", function()
    local j = tn.nn.Joiner(4, 3, 6, 5, { simple_proj = true })
    local am, lm = j:simple(tn.randn(2, 7, 4), tn.randn(2, 3, 3))
    assert.are.same({ 2, 7, 5 }, am:shape())
    assert.are.same({ 2, 3, 5 }, lm:shape())
    expect_error(function() tn.nn.Joiner(4, 3, 6, 5):simple(tn.randn(2, 7, 4), tn.randn(2, 3, 3)) end, "simple_proj")
    expect_error(function() tn.nn.Joiner(4, 3, 0, 5) end, "joiner_dim")
  end)

  it("trains end to end: simple loss, prune ranges, pruning, joiner, pruned loss, backward", function()
    -- the README example, at f64 and checked against the full loss on the same joiner
    tn.manual_seed(7)
    local B, T, S, V, E, J = 2, 8, 3, 6, 5, 7
    local joiner = tn.nn.Joiner(E, E, J, V, { dtype = "f64", simple_proj = true })
    local enc = tn.randn({ B, T, E }, { dtype = "f64" }):requires_grad(true)
    local dec = tn.randn({ B, S + 1, E }, { dtype = "f64" }):requires_grad(true)
    local symbols = i64({ { 1, 2, 3 }, { 4, 5, 0 } })
    local boundary = i64({ { 0, 0, 3, 8 }, { 0, 0, 2, 6 } })
    local blank = 0
    local am, lm = joiner:simple(enc, dec)
    local simple_loss, px_grad, py_grad = rnnt.loss_simple{ lm = lm, am = am, symbols = symbols,
      termination_symbol = blank, boundary = boundary, reduction = "sum", return_grad = true }
    local ranges = rnnt.get_prune_ranges{ px_grad = px_grad, py_grad = py_grad, boundary = boundary, s_range = 3 }
    local logits = joiner:pruned(joiner.encoder_proj(enc), joiner.decoder_proj(dec), ranges)
    -- the fused path equals icefall's do_pruning + joiner
    local am_pruned, lm_pruned = rnnt.do_pruning{ am = joiner.encoder_proj(enc), lm = joiner.decoder_proj(dec),
      ranges = ranges }
    assert.tensor_near(joiner(am_pruned, lm_pruned), logits, F64)
    local pruned_loss = rnnt.loss_pruned{ logits = logits, symbols = symbols, ranges = ranges,
      termination_symbol = blank, boundary = boundary, reduction = "sum" }
    local loss = simple_loss * 0.5 + pruned_loss
    loss:backward()
    assert.is_true(loss:item() == loss:item() and loss:item() < math.huge)
    for name, p in joiner:named_parameters() do nonzero(p.grad, name) end
    nonzero(enc.grad, "enc")
    nonzero(dec.grad, "dec")
    -- pruning only drops paths: the pruned loss is >= the full loss with the same joiner
    local e, d = joiner:project(enc, dec)
    local full = rnnt.loss{ logits = joiner(e:unsqueeze(3), d:unsqueeze(2)),
      symbols = symbols, termination_symbol = blank, boundary = boundary, reduction = "sum" }
    assert.is_true(pruned_loss:item() >= full:item() - 1e-9)
  end)
end)
