-- Specs of tern.autograd: f64 finite-difference gradient checks of every differentiable op,
-- PyTorch gradients on fixed inputs, accumulation, no_grad, leaf rules, retain_graph and the
-- release of saved tensors.
local h = require "helpers.init"
local tn = h.tn
local leaf = h.leaf

local function i64(x) return tn.tensor(x, { dtype = "i64" }) end

-- gradcheck fn over f64 leaves of the given shapes (positive values when pos is set)
local function check(fn, shapes, pos, seed)
  local inputs = {}
  for k, s in ipairs(shapes) do inputs[k] = leaf(s, (seed or 10) + k, { positive = pos }) end
  assert.gradcheck(fn, inputs)
end

describe("tern.autograd", function()
  describe("gradcheck", function()
    it("detects a wrong gradient", function()
      local x = leaf({ 3 }, 1)
      local function bad(a)
        local out = a:detach() * 2
        return tn.autograd.record(out, "bad", function(g) return g * 3 end, nil, a)
      end
      local ok, msg = tn.autograd.gradcheck(bad, { x }, { raise = false })
      assert.is_false(ok)
      assert.truthy(msg:find("Jacobian mismatch for input 1, element 1, output element 1: analytic 3, numeric 2", 1, true), msg)
    end)

    it("refuses inputs that are not f64", function()
      local x = tn.ones(2):requires_grad(true)
      assert.error_matches(function() tn.autograd.gradcheck(function(a) return a * 2 end, { x }) end,
        "gradcheck: input 1 is f32; gradcheck needs f64 inputs")
    end)
  end)

  describe("elementwise unary gradients", function()
    local ops = {
      neg = function(a) return -a end,
      abs = function(a) return (a - 0.1):abs() end,
      exp = function(a) return a:exp() end,
      tanh = function(a) return a:tanh() end,
      sigmoid = function(a) return a:sigmoid() end,
      relu = function(a) return (a + 0.05):relu() end,
      expm1 = function(a) return a:expm1() end,
      sin = function(a) return a:sin() end,
      cos = function(a) return a:cos() end,
      square = function(a) return a:square() end,
    }
    for name, fn in pairs(ops) do
      it("check " .. name .. " by finite differences", function() check(fn, { { 3, 4 } }) end)
    end
    local pos_ops = {
      log = function(a) return a:log() end,
      sqrt = function(a) return a:sqrt() end,
      rsqrt = function(a) return a:rsqrt() end,
      log1p = function(a) return a:log1p() end,
      reciprocal = function(a) return a:reciprocal() end,
    }
    for name, fn in pairs(pos_ops) do
      it("check " .. name .. " on positive inputs", function() check(fn, { { 3, 4 } }, true) end)
    end

    it("give zero gradients through sign, floor, ceil and round", function()
      local x = leaf({ 5 }, 3)
      local y = x:sign() + x:floor() + x:ceil() + x:round()
      y:sum():backward()
      assert.are.same({ 0, 0, 0, 0, 0 }, x.grad:totable())
    end)
  end)

  describe("elementwise binary gradients", function()
    local shape_cases = {
      ["equal shapes"] = { { 2, 3 }, { 2, 3 } },
      ["a row broadcast"] = { { 2, 3 }, { 3 } },
      ["an outer broadcast"] = { { 2, 1 }, { 1, 3 } },
      ["a 0-d operand"] = { { 2, 3 }, {} },
      ["a broadcast left operand"] = { { 3, 1, 2 }, { 4, 2 } },
    }
    local ops = {
      add = function(a, b) return a + b end,
      sub = function(a, b) return a - b end,
      mul = function(a, b) return a * b end,
      maximum = function(a, b) return tn.maximum(a, b) end,
      minimum = function(a, b) return tn.minimum(a, b) end,
      atan2 = function(a, b) return tn.atan2(a, b) end,
    }
    for oname, fn in pairs(ops) do
      for cname, shapes in pairs(shape_cases) do
        it("check " .. oname .. " with " .. cname, function() check(fn, shapes) end)
      end
    end
    for cname, shapes in pairs(shape_cases) do
      it("check div with " .. cname, function() check(function(a, b) return a / b end, shapes, true) end)
      it("check pow with " .. cname, function() check(function(a, b) return a ^ b end, shapes, true) end)
    end

    it("check add and sub with alpha", function()
      check(function(a, b) return a:add(b, 3) - a:sub(b, 0.5) end, { { 2, 3 }, { 3 } })
    end)

    it("check numbers on either side", function()
      check(function(a)
        return tn.cat({ a + 2, 2 + a, a - 3, 3 - a, a * 1.5, 1.5 * a, a / 4, a:maximum(0.2), a:minimum(-0.2) })
      end, { { 4 } })
      check(function(a) return tn.cat({ 2 / a, a ^ 3, 2 ^ a, a ^ 0.5, a:atan2(2), tn.atan2(a, 0.5) }) end, { { 4 } }, true)
    end)

    it("only need one operand to require grad", function()
      local a, b = leaf({ 3 }, 1), tn.ones(3, { dtype = "f64" }) * 2
      assert.gradcheck(function(x) return x * b + b end, { a })
      local y = a * b
      y:sum():backward()
      assert.are.same({ 2, 2, 2 }, a.grad:totable())
    end)
  end)

  describe("view gradients", function()
    local views = {
      view = function(a) return a:view(4, 6) end,
      reshape_copy = function(a) return a:transpose(1, 3):reshape(-1) end,
      transpose = function(a) return a:transpose(1, 3) end,
      t = function(a) return a:view(4, 6):t() end,
      permute = function(a) return a:permute(3, 1, 2) end,
      narrow = function(a) return a:narrow(3, 2, 2) end,
      narrow_negative = function(a) return a:narrow(-1, -3, 2) end,
      select = function(a) return a:select(2, 3) end,
      select_negative = function(a) return a:select(-1, -1) end,
      unsqueeze = function(a) return a:unsqueeze(2) * tn.ones(5, 1, 1, { dtype = "f64" }):view(1, 5, 1, 1) end,
      squeeze = function(a) return a:narrow(2, 2, 1):squeeze(2) end,
      expand = function(a) return a:narrow(2, 1, 1):expand(2, 5, 4) end,
      contiguous = function(a) return a:transpose(1, 2):contiguous() end,
      clone = function(a) return a:clone() end,
      flatten = function(a) return a:flatten() end,
      chained = function(a) return a:transpose(1, 2):narrow(1, 2, 2):select(3, 1):unsqueeze(1) end,
      sum_to = function(a) return a:sum_to({ 1, 3, 4 }) end,
    }
    for name, fn in pairs(views) do
      it("check " .. name, function() check(function(a) return fn(a) * fn(a) end, { { 2, 3, 4 } }) end)
    end

    it("check two views of one input added together", function()
      check(function(a) return a:select(1, 2) + a:narrow(1, 1, 1):squeeze(1) end, { { 2, 3 } })
    end)
  end)

  describe("reduction gradients", function()
    local x = { 3, 4, 5 }
    local cases = {
      sum_all = function(a) return a:sum() end,
      sum_dim = function(a) return a:sum(2) end,
      sum_dims_keepdim = function(a) return a:sum({ 1, 3 }, true) end,
      sum_negative = function(a) return a:sum(-1) end,
      mean_all = function(a) return a:mean() end,
      mean_dim_keepdim = function(a) return a:mean(3, true) end,
      mean_dims = function(a) return a:mean({ 1, 2 }) end,
      var_all = function(a) return a:var() end,
      var_dim = function(a) return a:var(2) end,
      var_dim_c0_keepdim = function(a) return a:var(3, { correction = 0, keepdim = true }) end,
      var_dims = function(a) return a:var({ 1, 3 }) end,
      std_dim = function(a) return a:std(1) end,
      logsumexp_all = function(a) return a:logsumexp() end,
      logsumexp_dim = function(a) return a:logsumexp(3) end,
      logsumexp_keepdim = function(a) return a:logsumexp(1, true) end,
      max_all = function(a) return a:max() end,
      min_all = function(a) return a:min() end,
      max_dim = function(a) return (a:max(2)) end,
      max_dim_keepdim = function(a) return (a:max(-1, true)) end,
      min_dim = function(a) return (a:min(1)) end,
      softmax_1 = function(a) return a:softmax(1) end,
      softmax_3 = function(a) return a:softmax(3) end,
      log_softmax_2 = function(a) return a:log_softmax(2) end,
      log_softmax_neg = function(a) return a:log_softmax(-1) end,
    }
    for name, fn in pairs(cases) do
      it("check " .. name, function() check(fn, { x }) end)
    end

    it("check a chain of softmax and sums", function()
      check(function(a) return (a:log_softmax(2) * a:softmax(1)):sum(2):logsumexp() end, { { 3, 4 } })
    end)
  end)

  describe("PyTorch gradients", function()
    local g = h.golden()
    local function grad_of(fn, ...)
      local xs = {}
      for i, v in ipairs({ ... }) do xs[i] = v:clone():requires_grad(true) end
      fn(unpack(xs)):backward()
      local gs = {}
      for i, v in ipairs(xs) do gs[i] = v.grad end
      return unpack(gs)
    end

    it("match for softmax and log_softmax along each dim", function()
      for d = 1, 2 do
        local w = g["sm_w" .. d]
        assert.tensor_near(g["softmax_d" .. d .. "_grad"],
          grad_of(function(x) return (x:softmax(d) * w):sum() end, g.sm_x), { rtol = 1e-10, atol = 1e-14 })
        assert.tensor_near(g["log_softmax_d" .. d .. "_grad"],
          grad_of(function(x) return (x:log_softmax(d) * w):sum() end, g.sm_x), { rtol = 1e-10, atol = 1e-14 })
      end
    end)

    it("match for logsumexp", function()
      assert.tensor_near(g.logsumexp_d2_grad,
        grad_of(function(x) return (x:logsumexp(2) * g.lse_w2):sum() end, g.sm_x), { rtol = 1e-10, atol = 1e-14 })
      assert.tensor_near(g.logsumexp_all_grad,
        grad_of(function(x) return x:logsumexp() end, g.sm_x), { rtol = 1e-10, atol = 1e-14 })
    end)

    it("match for var", function()
      local v = g.var_x
      assert.tensor_near(g.var_d2_grad, grad_of(function(x) return (x:var(2) * g.var_w2):sum() end, v), { rtol = 1e-10 })
      assert.tensor_near(g.var_d2_c0_grad,
        grad_of(function(x) return (x:var(2, { correction = 0 }) * g.var_w2):sum() end, v), { rtol = 1e-10 })
      assert.tensor_near(g.var_d1_keep_grad,
        grad_of(function(x) return (x:var(1, true) * g.var_w1k):sum() end, v), { rtol = 1e-10, atol = 1e-14 })
      assert.tensor_near(g.var_all_grad, grad_of(function(x) return x:var() end, v), { rtol = 1e-10, atol = 1e-14 })
    end)

    for _, case in ipairs({ "mm", "vm", "mv", "dot", "bcast", "batch_mv" }) do
      it("match for matmul in the " .. case .. " case", function()
        local p = "mat_" .. case .. "_"
        local w = g[p .. "w"]
        local ga, gb = grad_of(function(a, b) return (a:matmul(b) * w):sum() end, g[p .. "a"], g[p .. "b"])
        assert.tensor_near(g[p .. "ga"], ga, { rtol = 1e-10, atol = 1e-12 })
        assert.tensor_near(g[p .. "gb"], gb, { rtol = 1e-10, atol = 1e-12 })
      end)
    end
  end)

  describe("matmul gradients", function()
    local cases = {
      ["2-d by 2-d"] = { { 3, 4 }, { 4, 2 } },
      ["1-d by 2-d"] = { { 4 }, { 4, 2 } },
      ["2-d by 1-d"] = { { 3, 4 }, { 4 } },
      ["1-d by 1-d"] = { { 4 }, { 4 } },
      ["batch by 2-d"] = { { 2, 3, 4 }, { 4, 2 } },
      ["2-d by batch"] = { { 3, 4 }, { 2, 4, 2 } },
      ["batch broadcast"] = { { 2, 1, 3, 4 }, { 3, 4, 2 } },
      ["batch by 1-d"] = { { 2, 3, 4 }, { 4 } },
    }
    for name, shapes in pairs(cases) do
      it("check " .. name, function() check(function(a, b) return a:matmul(b) end, shapes) end)
    end

    it("check transposed operands", function()
      check(function(a, b) return a:t():matmul(b:t()) end, { { 4, 3 }, { 2, 4 } })
    end)

    it("check bmm and mm", function()
      check(function(a, b) return a:bmm(b) end, { { 2, 3, 4 }, { 2, 4, 5 } })
      check(function(a, b) return tn.mm(a, b) end, { { 2, 3 }, { 3, 2 } })
    end)
  end)

  describe("joining and indexing gradients", function()
    it("check cat along each dim, with an input that needs no grad", function()
      local c = tn.ones(2, 3, { dtype = "f64" })
      check(function(a, b) return tn.cat({ a, c, b }, 1) end, { { 2, 3 }, { 1, 3 } })
      check(function(a, b) return tn.cat({ a, b, a }, 2) end, { { 2, 3 }, { 2, 1 } })
      check(function(a, b) return tn.cat({ a, b }, -1) end, { { 2, 3 }, { 2, 2 } })
    end)

    it("check stack", function()
      check(function(a, b) return tn.stack({ a, b, a }, 2) end, { { 2, 3 }, { 2, 3 } })
    end)

    it("check gather with repeated indices", function()
      local idx = i64({ { 0, 2, 2 }, { 1, 1, 0 } })
      check(function(a) return a:gather(2, idx) end, { { 2, 3 } })
      check(function(a) return a:gather(1, i64({ { 1, 0, 1 } })) end, { { 2, 3 } })
    end)

    it("check scatter_add for the input and the source", function()
      local idx = i64({ { 0, 0, 2 }, { 1, 2, 1 } })
      check(function(a, s) return a:scatter_add(2, idx, s) end, { { 2, 3 }, { 2, 3 } })
    end)

    it("check index_select and index_add", function()
      local idx = i64({ 2, 0, 2 })
      check(function(a) return a:index_select(2, idx) end, { { 2, 3 } })
      check(function(a, s) return a:index_add(1, i64({ 1, 1 }), s) end, { { 3, 2 }, { 2, 2 } })
    end)

    it("check embedding with repeated indices", function()
      check(function(w) return tn.embedding(w, i64({ { 3, 0 }, { 3, 3 } })) end, { { 4, 2 } })
    end)

    it("check where, both branches and broadcasting", function()
      local c = tn.tensor({ 1, 0, 1 }, { dtype = "u8" })
      check(function(a, b) return tn.where(c, a, b) end, { { 2, 3 }, { 3 } })
      check(function(a) return tn.where(c, a, 0) end, { { 2, 3 } })
      check(function(b) return tn.where(c, 1, b) end, { { 3 } })
    end)

    it("check masked_fill", function()
      local m = tn.tensor({ { 1, 0, 0 }, { 0, 1, 1 } }, { dtype = "u8" })
      check(function(a) return a:masked_fill(m, 3) end, { { 2, 3 } })
      check(function(a) return a:masked_fill(tn.tensor({ 0, 1, 0 }, { dtype = "u8" }), -1) end, { { 2, 3 } })
    end)

    it("check clamp on both sides and one side", function()
      -- values away from the bounds so that finite differences do not straddle them
      local x = tn.tensor({ -2, -0.7, -0.2, 0.3, 0.8, 2 }, { dtype = "f64" }):requires_grad(true)
      assert.gradcheck(function(a) return a:clamp(-0.5, 0.5) end, { x })
      assert.gradcheck(function(a) return a:clamp(0) end, { x })
      assert.gradcheck(function(a) return a:clamp(nil, 0.5) end, { x })
      x:clamp(-0.5, 0.5):sum():backward()
      assert.are.same({ 0, 0, 1, 1, 0, 0 }, x.grad:totable())
    end)
  end)

  describe("backward", function()
    it("computes gradients of a scalar loss", function()
      local x = tn.tensor({ 1, 2, 3 }):requires_grad(true)
      local loss = (x * x):sum()
      loss:backward()
      assert.are.same({ 2, 4, 6 }, x.grad:totable())
      assert.are.equal("f32", x.grad:dtype())
    end)

    it("accumulates gradients across two backward calls", function()
      local x = tn.tensor({ 1, 2 }):requires_grad(true)
      ;(x * 3):sum():backward()
      ;(x * x):sum():backward()
      assert.are.same({ 5, 7 }, x.grad:totable())
      x:zero_grad()
      assert.is_nil(x.grad)
    end)

    it("sums gradients of a tensor used twice", function()
      local x = tn.tensor({ 1, 2 }):requires_grad(true)
      local y = x * x
      ;(y + y + x):sum():backward()
      assert.are.same({ 5, 9 }, x.grad:totable())
    end)

    it("takes an explicit gradient for a non-scalar output", function()
      local x = tn.tensor({ 1, 2 }):requires_grad(true)
      ;(x * 2):backward(tn.tensor({ 10, 100 }))
      assert.are.same({ 20, 200 }, x.grad:totable())
    end)

    it("raises for a non-scalar output without a gradient", function()
      local x = tn.ones(2):requires_grad(true)
      assert.error_matches(function() (x * 2):backward() end,
        "backward: grad can be implicit only for a one%-element output, got shape {2}")
    end)

    it("raises for a gradient of the wrong shape", function()
      local x = tn.ones(2):requires_grad(true)
      assert.error_matches(function() (x * 2):backward(tn.ones(3)) end,
        "backward: gradient of shape {3} given for output of shape {2}")
    end)

    it("raises for a tensor outside the graph", function()
      assert.error_matches(function() tn.ones(2):sum():backward() end, "backward: tensor does not require grad")
    end)

    it("raises clearly when called twice without retain_graph", function()
      local x = tn.ones(2):requires_grad(true)
      local loss = (x:exp() * 2):sum()
      loss:backward()
      assert.error_matches(function() loss:backward() end,
        "freed by an earlier backward%(%); pass {retain_graph=true}")
    end)

    it("runs twice with retain_graph", function()
      local x = tn.tensor({ 1, 2 }):requires_grad(true)
      local loss = (x * x):sum()
      loss:backward({ retain_graph = true })
      loss:backward()
      assert.are.same({ 4, 8 }, x.grad:totable())
    end)

    it("gives f32 gradients to f32 leaves through f64 and f16 computations", function()
      local x = tn.tensor({ 1, 2 }):requires_grad(true)
      ;(x:double() * 3):sum():backward()
      assert.are.equal("f32", x.grad:dtype())
      assert.are.same({ 3, 3 }, x.grad:totable())
      local y = tn.tensor({ 1, 2 }):requires_grad(true)
      ;(y:half() * 2):float():sum():backward()
      assert.are.same({ 2, 2 }, y.grad:totable())
    end)
  end)

  describe("leaves", function()
    it("are tensors created by the user; results of ops are not", function()
      local x = tn.ones(2):requires_grad(true)
      local y = x * 2
      assert.is_true(x:is_leaf())
      assert.is_false(y:is_leaf())
      assert.is_true(y:requires_grad())
      assert.are.equal("mul", y:grad_fn())
      assert.is_nil(x:grad_fn())
    end)

    it("keep .grad while intermediate results do not", function()
      local x = tn.ones(2):requires_grad(true)
      local y = x * 2
      y:sum():backward()
      assert.is_not_nil(x.grad)
      assert.is_nil(y.grad)
    end)

    it("refuse requires_grad on computed tensors and integer tensors", function()
      local y = tn.ones(2):requires_grad(true) * 2
      assert.error_matches(function() y:requires_grad(false) end,
        "requires_grad: only leaf tensors can change requires_grad; this one was computed by 'mul'")
      assert.error_matches(function() tn.ones(2, { dtype = "i64" }):requires_grad(true) end,
        "requires_grad: only float tensors can require grad, got i64")
    end)

    it("refuse in-place changes while recording", function()
      local x = tn.ones(2):requires_grad(true)
      assert.error_matches(function() x:add_(1) end, "add_: a leaf tensor that requires grad is used in an in%-place operation")
      assert.error_matches(function() x:fill_(0) end, "fill_: a leaf tensor that requires grad")
      tn.no_grad(function() x:add_(1) end)
      assert.are.same({ 2, 2 }, x:totable())
    end)

    it("detach gives a tensor outside the graph", function()
      local x = tn.ones(2):requires_grad(true)
      local d = (x * 2):detach()
      assert.is_false(d:requires_grad())
      assert.is_true(d:is_leaf())
      local y = (d * x):sum()
      y:backward()
      assert.are.same({ 2, 2 }, x.grad:totable())
    end)

    it("ops on tensors that need no grad record nothing", function()
      local y = tn.ones(2) * 2
      assert.is_false(y:requires_grad())
      assert.is_nil(y:grad_fn())
    end)
  end)

  describe("tn.no_grad", function()
    it("turns recording off inside and returns the function's results", function()
      local x = tn.ones(2):requires_grad(true)
      local y, n = tn.no_grad(function() return x * 2, 42 end)
      assert.are.equal(42, n)
      assert.is_false(y:requires_grad())
      assert.is_true(tn.is_grad_enabled())
      assert.is_true((x * 2):requires_grad())
    end)

    it("restores recording when the function raises", function()
      assert.has_error(function() tn.no_grad(function() error("boom") end) end)
      assert.is_true(tn.is_grad_enabled())
    end)

    it("enable_grad turns recording back on inside", function()
      local x = tn.ones(2):requires_grad(true)
      local y = tn.no_grad(function() return tn.enable_grad(function() return x * 2 end) end)
      assert.is_true(y:requires_grad())
    end)
  end)

  describe("saved tensors", function()
    it("are only those the gradient reads: an add keeps neither its inputs nor its output", function()
      collectgarbage()
      collectgarbage()
      local base = tn.memory_stats().current
      local x = tn.randn(256, 256, { dtype = "f64" }):requires_grad(true) -- 512 KiB
      local y = tn.randn(256, 256, { dtype = "f64" }):requires_grad(true)
      local loss = ((x + y) + 1):tanh():sum() -- x + y and (x + y) + 1 are dead once tanh ran
      collectgarbage()
      collectgarbage()
      local held = tn.memory_stats().current - base
      -- x, y and the saved tanh output (3 x 512 KiB), not the two sums
      assert.is_true(held <= 3 * 512 * 1024 + 4096, string.format("%d bytes held", held))
      loss:backward()
      assert.tensor_near((1 - ((x + y) + 1):tanh():square()):detach(), x.grad, { atol = 1e-12 })
    end)

    it("are released by backward while the loss is still alive", function()
      collectgarbage()
      collectgarbage()
      local base = tn.memory_stats().current
      local x = tn.randn(256, 256, { dtype = "f64" }):requires_grad(true) -- 512 KiB
      local loss = ((x:exp() * x):tanh() + x:sigmoid():log()):softmax(2):logsumexp()
      collectgarbage()
      local before = tn.memory_stats().current - base
      -- x plus the saved exp, tanh, sigmoid and softmax outputs (each op saves only what its
      -- gradient reads)
      assert.is_true(before >= 5 * 512 * 1024, "the graph should hold several saved tensors")
      loss:backward()
      collectgarbage()
      collectgarbage()
      local after = tn.memory_stats().current - base
      -- x, x.grad and the 0-d loss remain
      assert.is_true(after <= 2 * 512 * 1024 + 4096,
        string.format("%d bytes still held after backward (%d before)", after, before))
      assert.is_not_nil(loss)
    end)

    it("are released with the graph when backward never runs", function()
      collectgarbage()
      collectgarbage()
      local base = tn.memory_stats().current
      do
        local x = tn.randn(256, 256, { dtype = "f64" }):requires_grad(true)
        local loss = (x:exp() * x):tanh():sum()
        assert.is_not_nil(loss)
      end
      collectgarbage()
      collectgarbage()
      assert.is_true(tn.memory_stats().current - base <= 4096)
    end)
  end)
  describe("on_grad_ready", function()
    local autograd = require "tern.autograd"

    it("runs each leaf's hook once per backward, when its gradient is complete", function()
      local w = tn.tensor({ 1, 2, 3 }, { dtype = "f64" }):requires_grad(true)
      local v = tn.tensor({ 4, 5, 6 }, { dtype = "f64" }):requires_grad(true)
      local seen = {}
      autograd.on_grad_ready(w, function(leaf)
        -- w feeds two nodes: its gradient is the sum of both when the hook runs
        seen[#seen + 1] = { "w", leaf.grad:tolist() }
      end)
      autograd.on_grad_ready(v, function(leaf) seen[#seen + 1] = { "v", leaf.grad:tolist() } end)
      local loss = (w * v):sum() + (w * 2):sum()
      loss:backward()
      assert.are.same(2, #seen)
      local byname = {}
      for _, e in ipairs(seen) do byname[e[1]] = e[2] end
      assert.are.same({ 6, 7, 8 }, byname.w)
      assert.are.same({ 1, 2, 3 }, byname.v)
      -- and again on the next backward, with the accumulated gradient
      seen = {}
      ;((w * v):sum()):backward()
      assert.are.same(2, #seen)
      autograd.on_grad_ready(w, nil)
      autograd.on_grad_ready(v, nil)
      seen = {}
      ;((w * v):sum()):backward()
      assert.are.same(0, #seen)
    end)

    it("runs the hook of a leaf that is the root, and not for leaves the backward does not reach", function()
      local a = tn.tensor({ 1, 2 }):requires_grad(true)
      local b = tn.tensor({ 3, 4 }):requires_grad(true)
      local n = { a = 0, b = 0 }
      autograd.on_grad_ready(a, function() n.a = n.a + 1 end)
      autograd.on_grad_ready(b, function() n.b = n.b + 1 end)
      a:backward(tn.ones(2))
      assert.are.same({ a = 1, b = 0 }, n)
    end)

    it("refuses a non-tensor leaf and a non-function hook", function()
      assert.has_error(function() autograd.on_grad_ready({}, function() end) end,
        "on_grad_ready: leaf must be a tensor, got table")
      assert.has_error(function() autograd.on_grad_ready(tn.ones(1), 3) end,
        "on_grad_ready: fn must be a function or nil, got number")
    end)
  end)
end)
