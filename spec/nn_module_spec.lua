-- Specs of tern.nn: the Module base (registration, traversal, flat parameter buffers,
-- zero_grad, state_dict, modes, conversion, printing) and the simple layers (Linear,
-- Embedding, LayerNorm, Dropout, Sequential, ModuleList, activations): forward values against
-- hand-computed or composed results, initialisation ranges and f64 gradient checks.
-- The recurrent layers are in rnn_spec.lua (and rnn_fixtures_spec.lua against PyTorch).
local h = require "helpers.init"
local tn = h.tn
local nn = tn.nn
local F = nn.F

local function f64(x) return tn.tensor(x, { dtype = "f64" }) end
local function i64(x) return tn.tensor(x, { dtype = "i64" }) end

-- Overwrite a parameter's values without recording (its identity is kept).
local function set(p, values)
  tn.no_grad(function() p:copy_(tn.tensor(values, { dtype = p:dtype() })) end)
end

local function names_of(iter)
  local r = {}
  for name in iter do r[#r + 1] = name end
  return r
end

local function contains(s, part)
  assert.truthy(s:find(part, 1, true), "'" .. s .. "' does not contain '" .. part .. "'")
end

-- A leaf requiring grad with deterministic f64 values (a fresh copy, contiguous).
local function leaf(shape, seed) return h.leaf(shape, seed) end

-- A module class with no layers of its own.
local Bare = nn.Module:extend("Bare")

describe("tern.nn.Module", function()
  describe("named_parameters", function()
    it("yields dotted names in registration order through nested modules", function()
      local m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(),
        nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.2)), nn.LayerNorm(2))
      assert.are.same({ "0.weight", "0.bias", "2.0.weight", "2.0.bias", "3.weight", "3.bias" },
        names_of(m:named_parameters()))
      local params = m:parameters()
      assert.are.equal(6, #params)
      assert.are.equal(m[1].weight, params[1])
      assert.are.equal(m[3][1].bias, params[4])
      assert.are.equal(12 + 4 + 8 + 2 + 2 + 2, m:num_parameters())
    end)

    it("yields a shared parameter and a shared module once, under its first name", function()
      local lin = nn.Linear(2, 2)
      local m = nn.Sequential(lin, nn.Tanh(), lin)
      assert.are.same({ "0.weight", "0.bias" }, names_of(m:named_parameters()))
      local a, b = nn.Linear(2, 2), nn.Linear(2, 2)
      b:register_parameter("weight", a.weight)
      local s = nn.Sequential(a, b)
      assert.are.same({ "0.weight", "0.bias", "1.bias" }, names_of(s:named_parameters()))
      assert.are.equal(s[2].weight, s[1].weight)
    end)

    it("makes a registered float tensor a leaf that requires grad, and nil removes it", function()
      local m = Bare()
      local t = tn.zeros(2)
      assert.is_false(t:requires_grad())
      m:register_parameter("w", t)
      m:register_parameter("v", tn.ones(3))
      assert.is_true(t:requires_grad())
      assert.are.equal(t, m.w)
      m:register_parameter("w", nil)
      assert.are.same({ "v" }, names_of(m:named_parameters()))
      assert.is_nil(m.w)
    end)

    it("rejects names with a dot and values that are not tensors", function()
      local m = Bare()
      contains(h.error_of(m.register_parameter, m, "a.b", tn.zeros(1)), "without '.'")
      contains(h.error_of(m.register_parameter, m, "w", 3), "parameter 'w' must be a tensor, got number")
      contains(h.error_of(m.add_module, m, "c", {}), "child 'c' must be a module")
    end)
  end)

  describe("named_buffers", function()
    it("lists buffers with dotted names, apart from the parameters, and in the state_dict", function()
      local inner = nn.Linear(2, 2)
      inner:register_buffer("running", tn.zeros(2))
      local m = nn.Sequential(nn.Identity(), inner)
      m:register_buffer("steps", tn.zeros(1, { dtype = "i64" }))
      assert.are.same({ "steps", "1.running" }, names_of(m:named_buffers()))
      assert.are.same({ "1.weight", "1.bias" }, names_of(m:named_parameters()))
      assert.is_false(inner.running:requires_grad())
      local keys = {}
      for k in pairs(m:state_dict()) do keys[#keys + 1] = k end
      table.sort(keys)
      assert.are.same({ "1.bias", "1.running", "1.weight", "steps" }, keys)
    end)

    it("includes the SRU cells' scale_x buffers under the package's names", function()
      local s = nn.SRU(2, 3, { num_layers = 2 })
      assert.are.same({ "rnn_lst.0.scale_x", "rnn_lst.1.scale_x" }, names_of(s:named_buffers()))
    end)
  end)

  describe("modules and children", function()
    it("walks the tree self first, depth first, with dotted names", function()
      local m = nn.Sequential(nn.Linear(1, 1), nn.Sequential(nn.ReLU(), nn.Tanh()))
      assert.are.same({ "", "0", "1", "1.0", "1.1" }, names_of(m:named_modules()))
      assert.are.same({ "0", "1" }, names_of(m:named_children()))
      local order = {}
      m:apply(function(mod) order[#order + 1] = mod.__name end)
      assert.are.same({ "Linear", "ReLU", "Tanh", "Sequential", "Sequential" }, order)
    end)
  end)

  describe("flat_buffers", function()
    it("puts the parameters of one dtype into one buffer, as views in order", function()
      tn.manual_seed(1)
      local m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
      local before = {}
      for i, p in ipairs(m:parameters()) do before[i] = p:clone() end
      local groups = m:flat_buffers()
      assert.are.equal(1, #groups)
      local g = groups[1]
      assert.are.equal("f32", g.dtype)
      assert.are.equal(6 + 3 + 6 + 2, g.data:numel())
      assert.are.equal(g.data:numel(), g.grad:numel())
      assert.are.same({ "0.weight", "0.bias", "1.weight", "1.bias" }, g.names)
      local off = 1
      for i, p in ipairs(m:parameters()) do
        assert.are.equal(p, g.params[i])
        assert.tensor_equal(before[i], p)
        assert.tensor_equal(p:reshape(-1), g.data:narrow(1, off, p:numel()))
        off = off + p:numel()
      end
    end)

    it("shares memory both ways: writing the buffer changes the parameters and back", function()
      local m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
      local g = m:flat_buffers()[1]
      g.data:fill_(0.25)
      assert.tensor_equal(tn.full({ 2, 2 }, 0.25), m[1].weight)
      assert.tensor_equal(tn.full({ 1 }, 0.25), m[2].bias)
      set(m[2].weight, { { 3, 4 } })
      assert.tensor_equal(tn.tensor({ 3, 4 }), g.data:narrow(1, 7, 2))
      assert.are.equal(g.data:data_ptr(), m[1].weight:data_ptr())
    end)

    it("gives gradients that are views: backward accumulates into the flat gradient", function()
      local m = nn.Linear(2, 2)
      local g = m:flat_buffers()[1]
      local x = tn.tensor({ { 1, 2 } })
      m(x):sum():backward()
      assert.tensor_equal({ 1, 2, 1, 2, 1, 1 }, g.grad)
      m(x):sum():backward()
      assert.tensor_equal({ 2, 4, 2, 4, 2, 2 }, g.grad)
      assert.tensor_equal({ { 2, 4 }, { 2, 4 } }, m.weight.grad)
      g.grad:fill_(7)
      assert.tensor_equal({ 7, 7 }, m.bias.grad)
    end)

    it("returns the same buffers when nothing changed", function()
      local m = nn.Linear(3, 3)
      local a = m:flat_buffers()[1]
      local b = m:flat_buffers()[1]
      assert.are.equal(a, b)
      assert.are.equal(a.data, b.data)
    end)

    it("re-flattens composed modules into one buffer, keeping values, identity and grads", function()
      tn.manual_seed(2)
      local a, b = nn.Linear(2, 3), nn.Linear(3, 1)
      local ga = a:flat_buffers()[1]
      b:flat_buffers()
      a(tn.ones(1, 2)):sum():backward()
      local wa, wb, gwa = a.weight, b.weight, a.weight.grad:clone()
      local va, vb = a.weight:clone(), b.weight:clone()
      local s = nn.Sequential(a, b)
      local groups = s:flat_buffers()
      assert.are.equal(1, #groups)
      local g = groups[1]
      assert.are.equal(6 + 3 + 3 + 1, g.data:numel())
      assert.are.equal(wa, s[1].weight)
      assert.are.equal(wb, s[2].weight)
      assert.tensor_equal(va, wa)
      assert.tensor_equal(vb, wb)
      assert.tensor_equal(gwa, wa.grad)
      assert.tensor_equal(b.weight:zeros_like(), b.weight.grad)
      g.data:zero_()
      assert.tensor_equal(wb:zeros_like(), wb)
      assert.tensor_equal(wa:zeros_like(), wa)
      -- the old buffer of a no longer aliases its parameters
      ga.data:fill_(5)
      assert.tensor_equal(wa:zeros_like(), wa)
    end)

    it("makes one group per dtype for a model with f32 and f64 parameters", function()
      local m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 3, { dtype = "f64" }), nn.LayerNorm(3))
      local groups = m:flat_buffers()
      assert.are.equal(2, #groups)
      assert.are.equal("f32", groups[1].dtype)
      assert.are.equal("f64", groups[2].dtype)
      assert.are.same({ "0.weight", "0.bias", "2.weight", "2.bias" }, groups[1].names)
      assert.are.same({ "1.weight", "1.bias" }, groups[2].names)
      assert.are.equal(6 + 6, groups[1].data:numel())
      assert.are.equal("f64", groups[2].data:dtype())
      assert.are.equal(9, groups[2].grad:numel())
    end)
  end)

  describe("zero_grad", function()
    it("zeroes every gradient and keeps them views of the flat buffer", function()
      local m = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))
      m(tn.ones(3, 2)):sum():backward()
      local g = m:flat_buffers()[1]
      assert.is_true(g.grad:abs():sum():item() > 0)
      m:zero_grad()
      assert.tensor_equal(g.grad:zeros_like(), g.grad)
      for _, p in ipairs(m:parameters()) do assert.tensor_equal(p:zeros_like(), p.grad) end
      m(tn.ones(1, 2)):sum():backward()
      assert.tensor_equal({ 1 }, m[3].bias.grad)
      assert.are.equal(1, g.grad:get({ g.grad:numel() }))
    end)
  end)

  describe("state_dict", function()
    it("round-trips through tn.save and tn.load into a fresh model", function()
      tn.manual_seed(3)
      local a = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4), nn.Linear(4, 2))
      set(a[3].weight, { 1, 2, 3, 4 })
      local path = h.tmpname(".safetensors")
      tn.save(path, a:state_dict())
      tn.manual_seed(4)
      local b = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.LayerNorm(4), nn.Linear(4, 2))
      local x = tn.randn(5, 3)
      assert.is_false(a(x):allclose(b(x)))
      local loaded = tn.load(path)
      os.remove(path)
      local r = b:load_state_dict(loaded)
      assert.are.same({ missing = {}, unexpected = {} }, r)
      assert.tensor_equal(a(x), b(x))
      assert.tensor_equal({ 1, 2, 3, 4 }, b[3].weight)
    end)

    it("copies into the existing parameters, keeping their identity and flat buffer", function()
      local m = nn.Linear(2, 1)
      local g = m:flat_buffers()[1]
      local w = m.weight
      m:load_state_dict({ weight = tn.tensor({ { 5, 6 } }), bias = tn.tensor({ 7 }) })
      assert.are.equal(w, m.weight)
      assert.tensor_equal({ 5, 6, 7 }, g.data)
    end)

    it("converts values to the parameter's dtype", function()
      local m = nn.Linear(2, 1)
      m:load_state_dict({ weight = f64({ { 0.5, 1.5 } }), bias = f64({ -2 }) })
      assert.are.equal("f32", m.weight:dtype())
      assert.tensor_equal({ { 0.5, 1.5 } }, m.weight)
    end)

    it("raises in strict mode naming missing, unexpected and mis-shaped keys", function()
      local m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
      local sd = {
        ["0.weight"] = tn.zeros(3, 2),
        ["0.bias"] = tn.zeros(4),
        ["1.weight"] = tn.zeros(1, 3),
        ["2.weight"] = tn.zeros(1),
      }
      local err = h.error_of(m.load_state_dict, m, sd)
      contains(err, "missing keys: 1.bias")
      contains(err, "unexpected keys: 2.weight")
      contains(err, "0.bias: checkpoint {4}, model {3}")
      -- nothing was loaded
      assert.is_true(m[1].weight:abs():sum():item() > 0)
    end)

    it("raises on a missing key alone, and on a value that is not a tensor", function()
      local m = nn.Linear(2, 2)
      local err = h.error_of(m.load_state_dict, m, { weight = tn.zeros(2, 2) })
      contains(err, "missing keys: bias")
      assert.is_nil(err:find("unexpected", 1, true))
      err = h.error_of(m.load_state_dict, m, { weight = tn.zeros(2, 2), bias = { 1, 2 } })
      contains(err, "bias: expected a tensor, got table")
      err = h.error_of(m.load_state_dict, m, "weights.safetensors")
      contains(err, "expected a table")
    end)

    it("with strict=false reports missing and unexpected keys and loads the rest", function()
      local m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
      local r = m:load_state_dict({
        ["0.weight"] = tn.ones(2, 2), ["1.bias"] = tn.full({ 1 }, 3), ["extra"] = tn.zeros(1),
      }, { strict = false })
      assert.are.same({ "0.bias", "1.weight" }, r.missing)
      assert.are.same({ "extra" }, r.unexpected)
      assert.tensor_equal(tn.ones(2, 2), m[1].weight)
      assert.tensor_equal({ 3 }, m[2].bias)
    end)

    it("raises on a mis-shaped key even with strict=false", function()
      local m = nn.Linear(2, 2)
      local err = h.error_of(m.load_state_dict, m, { weight = tn.zeros(2, 3) }, { strict = false })
      contains(err, "weight: checkpoint {2, 3}, model {2, 2}")
      -- same number of elements, other shape
      err = h.error_of(m.load_state_dict, m, { weight = tn.zeros(4), bias = tn.zeros(2) })
      contains(err, "weight: checkpoint {4}, model {2, 2}")
    end)
  end)

  describe("train and eval", function()
    it("set the mode of every module of the tree", function()
      local m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Dropout(0.5), nn.ReLU()))
      assert.are.equal(m, m:eval())
      for _, mod in ipairs(m:modules()) do assert.is_false(mod.training) end
      m:train()
      for _, mod in ipairs(m:modules()) do assert.is_true(mod.training) end
      m:train(false)
      assert.is_false(m[2][1].training)
    end)

    it("switch Dropout between masking and the identity", function()
      local m = nn.Sequential(nn.Identity(), nn.Sequential(nn.Dropout(0.5)))
      local x = tn.ones(400)
      tn.manual_seed(11)
      local y = m(x)
      local zeros = y:eq(0):sum():item()
      local twos = y:eq(2):sum():item()
      assert.are.equal(400, zeros + twos)
      assert.is_true(zeros > 140 and zeros < 260, "zeros: " .. zeros)
      m:eval()
      assert.tensor_equal(x, m(x))
    end)
  end)

  describe("to", function()
    it("converts to f64 keeping parameter identity, values and gradients", function()
      tn.manual_seed(5)
      local m = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
      m:flat_buffers()
      m(tn.ones(1, 2)):sum():backward()
      local params, values, grads = m:parameters(), {}, {}
      for i, p in ipairs(params) do values[i], grads[i] = p:double(), p.grad:double() end
      assert.are.equal(m, m:to("f64"))
      for i, p in ipairs(m:parameters()) do
        assert.are.equal(params[i], p)
        assert.are.equal("f64", p:dtype())
        assert.are.equal("f64", p.grad:dtype())
        assert.is_true(p:requires_grad())
        assert.tensor_equal(values[i], p)
        assert.tensor_equal(grads[i], p.grad)
      end
      local groups = m:flat_buffers()
      assert.are.equal(1, #groups)
      assert.are.equal("f64", groups[1].dtype)
      -- the new flat gradient is where backward now accumulates
      groups[1].grad:zero_()
      m(tn.ones(1, 2, { dtype = "f64" })):sum():backward()
      assert.tensor_equal({ 1 }, m[2].bias.grad)
      assert.are.equal(1, groups[1].grad:get({ groups[1].grad:numel() }))
    end)

    it("converts float buffers, leaves integer buffers, and round-trips with float()", function()
      local m = nn.Linear(1, 1)
      m:register_buffer("stat", tn.zeros(2))
      m:register_buffer("count", tn.zeros(1, { dtype = "i64" }))
      m:double()
      assert.are.equal("f64", m.stat:dtype())
      assert.are.equal("i64", m.count:dtype())
      m:float()
      assert.are.equal("f32", m.weight:dtype())
    end)

    it("rejects an unknown dtype", function()
      local m = nn.Linear(1, 1)
      contains(h.error_of(m.to, m, "f65"), "f65")
    end)
  end)

  describe("repr", function()
    it("prints a nested Sequential as a PyTorch-style tree", function()
      local m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(),
        nn.Sequential(nn.Linear(4, 2, { bias = false }), nn.Dropout(0.2)), nn.LayerNorm(2),
        nn.Softmax(-1))
      assert.are.equal(table.concat({
        "Sequential(",
        "  (0): Linear(in_features=3, out_features=4, bias=true)",
        "  (1): ReLU()",
        "  (2): Sequential(",
        "    (0): Linear(in_features=4, out_features=2, bias=false)",
        "    (1): Dropout(p=0.2)",
        "  )",
        "  (3): LayerNorm({2}, eps=1e-05, elementwise_affine=true)",
        "  (4): Softmax(dim=-1)",
        ")",
      }, "\n"), tostring(m))
    end)

    it("prints an Embedding with its padding index and an LSTM with its options", function()
      assert.are.equal("Embedding(10, 4, padding_idx=0)", tostring(nn.Embedding(10, 4, { padding_idx = 0 })))
      assert.are.equal("LSTM(3, 5, num_layers=2, bidirectional=true)",
        tostring(nn.LSTM(3, 5, { num_layers = 2, bidirectional = true })))
    end)
  end)

  describe("__call", function()
    it("runs forward", function()
      local m = nn.Linear(2, 2)
      local x = tn.randn(3, 2)
      assert.tensor_equal(m:forward(x), m(x))
      contains(h.error_of(Bare()), "forward() is not defined")
    end)
  end)
end)

describe("tern.nn.Linear", function()
  it("computes x W^T + b", function()
    local m = nn.Linear(2, 3)
    set(m.weight, { { 1, 2 }, { 3, 4 }, { 5, 6 } })
    set(m.bias, { 0.5, -1, 2 })
    local y = m(tn.tensor({ { 1, -1 }, { 2, 0.5 } }))
    assert.tensor_near({ { -0.5, -2, 1 }, { 3.5, 7, 15 } }, y)
  end)

  it("applies to the last dim of an n-d input and works without a bias", function()
    local m = nn.Linear(2, 1, { bias = false })
    assert.is_nil(m.bias)
    assert.are.same({ "weight" }, names_of(m:named_parameters()))
    set(m.weight, { { 2, -1 } })
    local x = tn.tensor({ { { 1, 1 }, { 2, 3 } }, { { 0, 4 }, { -1, -1 } } })
    assert.tensor_near({ { { 1 }, { 1 } }, { { -4 }, { -1 } } }, m(x))
  end)

  it("initialises weight and bias in U(-1/sqrt(in), 1/sqrt(in))", function()
    tn.manual_seed(6)
    local m = nn.Linear(16, 300)
    local bound = 1 / 4
    for _, p in ipairs({ m.weight, m.bias }) do
      local mx, mn = p:max():item(), p:min():item()
      assert.is_true(mx <= bound and mn >= -bound, "range " .. mn .. " .. " .. mx)
      assert.is_true(mx > 0.9 * bound and mn < -0.9 * bound, "range " .. mn .. " .. " .. mx)
    end
    assert.is_true(math.abs(m.weight:mean():item()) < 0.02)
  end)

  it("passes a gradient check over input, weight and bias", function()
    local m = nn.Linear(3, 2, { dtype = "f64" })
    local x = leaf({ 2, 3 }, 1)
    assert.gradcheck(function(x_) return m(x_) end, { x, m.weight, m.bias })
  end)

  it("passes a gradient check on 3-d and 1-d input (the fused bias GEMM and the plain path)", function()
    local m = nn.Linear(3, 2, { dtype = "f64" })
    assert.gradcheck(function(x_) return m(x_) end, { leaf({ 2, 4, 3 }, 7), m.weight, m.bias })
    assert.gradcheck(function(x_) return m(x_) end, { leaf({ 3 }, 8), m.weight, m.bias })
  end)

  it("gives x W^T + b on 3-d input, as the composed ops do", function()
    local m = nn.Linear(3, 2, { dtype = "f64" })
    local x = leaf({ 2, 4, 3 }, 9)
    local want = tn.no_grad(function() return x:matmul(m.weight:t()) + m.bias end)
    assert.tensor_near(want, m(x), { atol = 1e-12 })
  end)

  it("raises naming the shapes for a wrong feature size and the dtypes for a mismatch", function()
    local m = nn.Linear(3, 2)
    contains(h.error_of(m, tn.zeros(4, 5)),
      "linear: input of shape {4, 5} does not end in in_features = 3 (weight {2, 3})")
    contains(h.error_of(m, tn.zeros(4, 3, { dtype = "f64" })), "input is f64 but the weight is f32")
    contains(h.error_of(nn.Linear, 0, 2), "in_features must be a positive integer, got 0")
  end)
end)

describe("tern.nn.Embedding", function()
  it("picks rows of the weight at 0-based indices of any shape", function()
    local m = nn.Embedding(4, 2)
    set(m.weight, { { 0, 1 }, { 2, 3 }, { 4, 5 }, { 6, 7 } })
    local y = m(i64({ { 3, 0 }, { 1, 1 } }))
    assert.tensor_equal(tn.tensor({ { { 6, 7 }, { 0, 1 } }, { { 2, 3 }, { 2, 3 } } }), y)
  end)

  it("starts the padding row at zero and gives it no gradient", function()
    tn.manual_seed(7)
    local m = nn.Embedding(5, 3, { padding_idx = 1 })
    assert.tensor_equal(tn.zeros(3), m.weight:select(1, 2))
    assert.is_true(m.weight:select(1, 1):abs():sum():item() > 0)
    local y = m(i64({ 0, 1, 3, 0, 1 }))
    local w = tn.randn(5, 3)
    local loss = (y * w):sum()
    loss:backward()
    local g = m.weight.grad
    assert.tensor_equal(tn.zeros(3), g:select(1, 2))
    assert.tensor_near(w:select(1, 1) + w:select(1, 4), g:select(1, 1))
    assert.tensor_near(w:select(1, 3), g:select(1, 4))
    assert.tensor_equal(tn.zeros(3), g:select(1, 3))
  end)

  it("accepts a negative padding_idx counted from the end", function()
    local m = nn.Embedding(5, 2, { padding_idx = -1 })
    assert.are.equal(4, m.padding_idx)
    assert.tensor_equal(tn.zeros(2), m.weight:select(1, 5))
    contains(h.error_of(nn.Embedding, 5, 2, { padding_idx = 5 }), "padding_idx 5 is out of range for 5 embeddings")
  end)

  it("passes a gradient check over the weight", function()
    local w = leaf({ 4, 3 }, 2)
    assert.gradcheck(function(w_) return F.embedding(w_, i64({ { 0, 2 }, { 2, 3 } })) end, { w })
    local m = nn.Embedding(4, 2, { dtype = "f64", padding_idx = 1 })
    -- with padding_idx, rows that are looked up and are not padding
    assert.gradcheck(function() return m(i64({ 3, 0, 3 })) end, { m.weight })
  end)
end)

describe("tern.nn.LayerNorm", function()
  -- Reference: normalise x (a flat Lua list) in groups of n with the biased variance.
  local function ref_norm(xs, n, eps)
    local out = {}
    for s = 1, #xs, n do
      local mu = 0
      for i = s, s + n - 1 do mu = mu + xs[i] end
      mu = mu / n
      local var = 0
      for i = s, s + n - 1 do var = var + (xs[i] - mu) ^ 2 end
      var = var / n
      for i = s, s + n - 1 do out[i] = (xs[i] - mu) / math.sqrt(var + eps) end
    end
    return out
  end

  it("normalises the last dim with the biased variance, then scales and shifts", function()
    local m = nn.LayerNorm(4, { dtype = "f64" })
    set(m.weight, { 1, 2, 0.5, -1 })
    set(m.bias, { 0, 1, 0, 3 })
    local x = f64({ { 1, 2, 3, 4 }, { -2, 0, 0, 10 } })
    local r = ref_norm({ 1, 2, 3, 4, -2, 0, 0, 10 }, 4, 1e-5)
    local w, b = { 1, 2, 0.5, -1 }, { 0, 1, 0, 3 }
    local want = { {}, {} }
    for i = 1, 8 do
      local k = (i - 1) % 4 + 1
      want[math.floor((i - 1) / 4) + 1][k] = r[i] * w[k] + b[k]
    end
    assert.tensor_near(want, m(x), { atol = 1e-12, rtol = 1e-12 })
  end)

  it("normalises over every dim of a multi-dim normalized_shape", function()
    local m = nn.LayerNorm({ 2, 3 }, { dtype = "f64", eps = 1e-3 })
    assert.are.same({ 2, 3 }, m.weight:shape())
    local x = f64({ { { 1, 2, 3 }, { 4, 5, 7 } }, { { 0, 0, 1 }, { -1, 3, 9 } } })
    local r = ref_norm({ 1, 2, 3, 4, 5, 7, 0, 0, 1, -1, 3, 9 }, 6, 1e-3)
    local want = { { { r[1], r[2], r[3] }, { r[4], r[5], r[6] } },
      { { r[7], r[8], r[9] }, { r[10], r[11], r[12] } } }
    assert.tensor_near(want, m(x), { atol = 1e-12, rtol = 1e-12 })
  end)

  it("has no parameters with elementwise_affine=false", function()
    local m = nn.LayerNorm(3, { elementwise_affine = false, dtype = "f64" })
    assert.are.equal(0, #m:parameters())
    assert.tensor_near({ ref_norm({ 1, 2, 6 }, 3, 1e-5) }, m(f64({ { 1, 2, 6 } })), { atol = 1e-12 })
  end)

  it("passes a gradient check over input, weight and bias", function()
    local m = nn.LayerNorm(3, { dtype = "f64" })
    set(m.weight, { 0.5, -1, 2 })
    set(m.bias, { 0.1, 0.2, 0.3 })
    assert.gradcheck(function(x) return m(x) end, { leaf({ 2, 3 }, 3), m.weight, m.bias })
  end)

  it("passes a gradient check with a 2-d normalized_shape", function()
    local m = nn.LayerNorm({ 2, 3 }, { dtype = "f64" })
    set(m.weight, { { 0.5, -1, 2 }, { 1, 1.5, -0.5 } })
    assert.gradcheck(function(x) return m(x) end, { leaf({ 2, 2, 3 }, 4), m.weight, m.bias })
  end)

  it("raises naming the shapes when the input does not end in normalized_shape", function()
    local m = nn.LayerNorm({ 2, 3 })
    contains(h.error_of(m, tn.zeros(4, 3, 2)), "input of shape {4, 3, 2} does not end in normalized_shape {2, 3}")
    contains(h.error_of(m, tn.zeros(3)), "fewer dims than normalized_shape {2, 3}")
  end)
end)

describe("tern.nn.Dropout", function()
  it("zeroes with probability p and scales the rest by 1/(1-p)", function()
    local x = tn.arange(1, 1001):float()
    tn.manual_seed(8)
    local y = F.dropout(x, 0.25, true)
    local kept = y:ne(0)
    local n = kept:sum():item()
    assert.is_true(n > 700 and n < 800, "kept " .. n)
    assert.tensor_near(x:masked_fill(kept:logical_not(), 0) / 0.75, y)
  end)

  it("is the identity in eval mode or with p=0, and zero with p=1", function()
    local x = tn.randn(10)
    assert.are.equal(x, F.dropout(x, 0.5, false))
    assert.are.equal(x, F.dropout(x, 0, true))
    assert.tensor_equal(tn.zeros(10), F.dropout(x, 1, true))
    local m = nn.Dropout(0.3):eval()
    assert.tensor_equal(x, m(x))
  end)

  it("draws the same mask after the same seed", function()
    local x = tn.ones(50)
    tn.manual_seed(9)
    local a = nn.Dropout(0.5)(x)
    tn.manual_seed(9)
    local b = nn.Dropout(0.5)(x)
    tn.manual_seed(10)
    local c = nn.Dropout(0.5)(x)
    assert.tensor_equal(a, b)
    assert.is_false(a:equal(c))
  end)

  it("passes a gradient check with a fixed (seeded) mask", function()
    local x = leaf({ 3, 4 }, 5)
    assert.gradcheck(function(x_)
      tn.manual_seed(12)
      return F.dropout(x_, 0.5, true)
    end, { x })
    -- the gradient is the mask itself
    tn.manual_seed(12)
    local y = F.dropout(x, 0.5, true)
    rawset(x, "grad", nil)
    y:sum():backward()
    assert.tensor_near(y:ne(0):double() * 2, x.grad)
  end)

  it("rejects p outside [0, 1]", function()
    contains(h.error_of(nn.Dropout, 1.5), "p must be a number in [0, 1], got 1.5")
    contains(h.error_of(F.dropout, tn.ones(2), -0.1, true), "got -0.1")
  end)
end)

describe("tern.nn.Sequential", function()
  it("applies its children in order", function()
    tn.manual_seed(13)
    local a, b = nn.Linear(3, 4), nn.Linear(4, 2)
    local m = nn.Sequential(a, nn.Tanh(), b)
    local x = tn.randn(5, 3)
    assert.tensor_equal(b(a(x):tanh()), m(x))
  end)

  it("indexes children 1-based, names them from 0, and grows with add", function()
    local a, b = nn.ReLU(), nn.Tanh()
    local m = nn.Sequential({ a })
    assert.are.equal(1, m:len())
    m:add(b)
    assert.are.equal(2, m:len())
    assert.are.equal(a, m[1])
    assert.are.equal(b, m:get(2))
    assert.are.equal(b, m._modules["1"])
    assert.is_nil(m[3])
  end)

  it("rejects an argument that is not a module", function()
    contains(h.error_of(nn.Sequential, nn.ReLU(), 5), "argument 2 is a number, not a module")
  end)
end)

describe("tern.nn.ModuleList", function()
  it("holds modules named from 0 whose parameters belong to the owner", function()
    local l = nn.ModuleList({ nn.Linear(1, 2), nn.Linear(2, 1) })
    l:append(nn.Linear(1, 1, { bias = false }))
    assert.are.equal(3, l:len())
    assert.are.equal(2, l[2].in_features)
    assert.are.same({ "0.weight", "0.bias", "1.weight", "1.bias", "2.weight" }, names_of(l:named_parameters()))
  end)

  it("has no forward and rejects elements that are not modules", function()
    local l = nn.ModuleList({})
    contains(h.error_of(l, tn.zeros(1)), "has no forward")
    contains(h.error_of(nn.ModuleList, { nn.ReLU(), "x" }), "element 2 is a string, not a module")
  end)
end)

describe("tern.nn activations", function()
  local xs = { { -2, -0.5, 0.25 }, { 1, 3, -1 } }

  local function map(fn)
    local r = {}
    for i, row in ipairs(xs) do
      r[i] = {}
      for j, v in ipairs(row) do r[i][j] = fn(v, row) end
    end
    return r
  end

  local function softmax(v, row)
    local s = 0
    for _, u in ipairs(row) do s = s + math.exp(u) end
    return math.exp(v) / s
  end

  it("compute ReLU, Tanh, Sigmoid, Identity elementwise", function()
    local x = f64(xs)
    local tol = { atol = 1e-14, rtol = 1e-14 }
    assert.tensor_near(map(function(v) return math.max(v, 0) end), nn.ReLU()(x), tol)
    assert.tensor_near(map(math.tanh), nn.Tanh()(x), tol)
    assert.tensor_near(map(function(v) return 1 / (1 + math.exp(-v)) end), nn.Sigmoid()(x), tol)
    assert.are.equal(x, nn.Identity()(x))
  end)

  it("compute Softmax and LogSoftmax over the given dim", function()
    local x = f64(xs)
    assert.tensor_near(map(softmax), nn.Softmax(2)(x), { atol = 1e-14 })
    assert.tensor_near(map(function(v, row) return math.log(softmax(v, row)) end), nn.LogSoftmax(-1)(x),
      { atol = 1e-13 })
    -- over dim 1: each column sums to one
    assert.tensor_near({ { 1, 1, 1 } }, nn.Softmax(1)(x):sum(1, true), { atol = 1e-14 })
    contains(h.error_of(nn.Softmax), "dim is required")
  end)

  it("pass gradient checks", function()
    local x = leaf({ 2, 3 }, 6)
    for _, m in ipairs({ nn.Tanh(), nn.Sigmoid(), nn.Softmax(2), nn.LogSoftmax(1), nn.Identity() }) do
      assert.gradcheck(function(x_) return m(x_) end, { x })
    end
    -- ReLU away from its kink
    local y = f64({ { -1, 0.5, 2 }, { 0.3, -0.2, -3 } }):requires_grad(true)
    assert.gradcheck(function(y_) return nn.ReLU()(y_) end, { y })
  end)
end)

describe("tern.nn.LSTM initialisation", function()
  it("draws every parameter from U(-1/sqrt(H), 1/sqrt(H))", function()
    tn.manual_seed(14)
    local m = nn.LSTM(10, 16, { num_layers = 2, bidirectional = true, proj_size = 4 })
    local bound = 1 / 4
    local n = 0
    for name, p in m:named_parameters() do
      n = n + 1
      local mx, mn = p:max():item(), p:min():item()
      assert.is_true(mx <= bound and mn >= -bound, name .. " range " .. mn .. " .. " .. mx)
      assert.is_true(mx > 0.8 * bound and mn < -0.8 * bound, name .. " range " .. mn .. " .. " .. mx)
    end
    assert.are.equal(2 * 2 * 5, n)
  end)
end)
