-- Specs of CUDA tensors through the Lua API, each against the CPU on the same values: element
-- reads (item, get, t[i], totable / tolist) through a CPU copy and writes (set, t[i] = v) on
-- the device, printing, constructors with device = "cuda", conversions and copies between
-- devices, save / load, Module:to("cuda") (names, values, identities and the flat-buffer
-- invariant), optimizer steps and state on the parameters' device, autograd (an MLP's
-- gradients, gradcheck), the loss scaler with a CUDA model, and checkpoints saved through the
-- CPU and restored onto the module's device.
--
-- Every block is tagged #gpu: without a GPU they are skipped (and counted); the same API
-- without a GPU is in spec/device_spec.lua. CUDA tensors are only made inside `it` blocks, so
-- this file loads and registers anywhere.
local h = require "helpers.init"
local tn = h.tn

local DTYPES = { "f32", "f64", "f16", "bf16", "i32", "i64", "u8" }
local FLOATS = { "f32", "f64", "f16", "bf16" }

local function contains(s, part)
  assert.truthy(tostring(s):find(part, 1, true), "'" .. tostring(s) .. "' does not contain '" .. part .. "'")
end

local function error_of(fn)
  local ok, msg = pcall(fn)
  assert.is_false(ok, "expected an error")
  return tostring(msg)
end

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".safetensors"
end

-- f32 matrix products in full f32 (no TF32) for the rest of the calling `it`, so that GPU
-- results compare with the CPU's at f32 tolerances.
local function exact_f32()
  if not tn.cuda.set_tf32 then return end
  local prev = tn.cuda.get_tf32()
  tn.cuda.set_tf32(false)
  finally(function() tn.cuda.set_tf32(prev) end)
end

local function mlp()
  return tn.nn.Sequential(tn.nn.Linear(5, 16), tn.nn.Tanh(), tn.nn.Linear(16, 3))
end

-- Two copies of one module: on the CPU and on the GPU, same values.
local function twin(make)
  local cpu = make()
  local gpu = make()
  gpu:load_state_dict(cpu:state_dict())
  gpu:to("cuda")
  return cpu, gpu
end

local function mse(m, x, y)
  local d = m(x) - y
  return (d * d):mean()
end

-- Each parameter of m is a view of its group's data (and its .grad of the group's grad), back
-- to back in order, on the group's device. Pointer arithmetic only: nothing is read.
local function check_flat(m)
  for _, g in ipairs(m:flat_buffers()) do
    local es = ({ f64 = 8, f32 = 4, f16 = 2, bf16 = 2 })[g.data:dtype()]
    local off = 0
    for i, p in ipairs(g.params) do
      assert.are.equal(g.device, p:device(), g.names[i])
      assert.are.equal(g.device, p.grad:device(), g.names[i])
      assert.is_true(p:is_contiguous(), g.names[i])
      assert.is_true(g.data:data_ptr() + off * es == p:data_ptr(), g.names[i] .. " is not at its place")
      assert.is_true(g.grad:data_ptr() + off * es == p.grad:data_ptr(), g.names[i] .. ".grad is not at its place")
      off = off + p:numel()
    end
    assert.are.equal(off, g.data:numel())
  end
end

local function params_near(expected_module, actual_module, tol)
  local exp = {}
  for name, p in expected_module:named_parameters() do exp[name] = p end
  for name, p in actual_module:named_parameters() do
    assert.is_not_nil(exp[name], name)
    assert.tensor_near(exp[name]:float(), p:float(), tol)
  end
end

describe("CUDA tensors #gpu", function()
  describe("element access #gpu", function()
    it("item copies the one element to the host", function()
      local t = tn.tensor({ 1.5, -2.25, 3 }, { device = "cuda" })
      assert.are.equal("cuda", t:device())
      assert.are.equal(-2.25, t[2])
      assert.are.equal(3, t:narrow(1, 3, 1):item())
      assert.are.equal(2.25, t:sum():item())
      assert.are.equal(7, tn.tensor(7, { device = "cuda", dtype = "i64" }):item())
      assert.are.equal(-1, tn.tensor(-1, { device = "cuda", dtype = "f16" }):item())
      local nan = tn.tensor({ 0 / 0 }, { device = "cuda" }):item()
      assert.is_true(nan ~= nan)
      assert.is_true(tn.tensor({ 1, 0 }, { device = "cuda" }):any())
      assert.is_false(tn.tensor({ 1, 0 }, { device = "cuda" }):all())
      local msg = error_of(function() return t:item() end)
      contains(msg, "item: needs a one-element tensor")
    end)

    it("get, t[i], totable and tolist read every dtype as the CPU does, views included", function()
      for _, dt in ipairs(DTYPES) do
        local ref = tn.tensor({ { 1, 2, 3 }, { 4, 5, 250 } }, { dtype = dt })
        local t = ref:cuda()
        assert.are.equal("cuda", t:device(), dt)
        assert.are.equal(dt, t:dtype())
        assert.are.same(ref:totable(), t:totable(), dt)
        assert.are.same(ref:tolist(), t:tolist(), dt)
        assert.are.same(ref:t():totable(), t:t():totable(), dt) -- a transposed view
        assert.are.same(ref:narrow(2, 2, 2):totable(), t:narrow(2, 2, 2):totable(), dt)
        assert.are.equal(ref:get({ 2, 3 }), t:get({ 2, 3 }), dt)
        assert.are.equal(ref[1][3], t[1][3], dt)
        assert.are.equal(ref:get({ 1, -1 }), t:get({ 1, -1 }), dt)
      end
      assert.are.same(5, tn.tensor(5, { device = "cuda" }):totable()) -- 0-d: a number
    end)

    it("set and t[i] = v write elements on the device with the CPU's conversions", function()
      for _, dt in ipairs(DTYPES) do
        local ref = tn.zeros(2, 3, { dtype = dt })
        local t = tn.zeros(2, 3, { dtype = dt, device = "cuda" })
        for _, x in ipairs({ ref, t }) do
          x:set({ 2, 3 }, 5.7)
          x[1][2] = -1.3
          x:set({ 1, -1 }, 300)
          x:t():set({ 1, 2 }, 2.5) -- element (2, 1) through a view
        end
        assert.are.same(ref:totable(), t:totable(), dt)
      end
      local v = tn.zeros(4, { device = "cuda" })
      v[3] = 8
      assert.are.same({ 0, 0, 8, 0 }, v:totable())
      local m = tn.zeros(2, 2, { device = "cuda" })
      m[2] = 4 -- fills the row
      assert.are.same({ { 0, 0 }, { 4, 4 } }, m:totable())
      local leaf = tn.zeros(2, { device = "cuda" }):requires_grad(true)
      contains(error_of(function() leaf:set({ 1 }, 1) end), "set: a leaf tensor that requires grad")
      contains(error_of(function() v:set({ 5 }, 1) end), "out of range")
    end)

    it("tostring prints the values of a CPU copy and says cuda", function()
      local ref = tn.tensor({ { 1, 2 }, { 3, 4.5 } })
      local t = ref:cuda()
      assert.are.equal((tostring(ref):gsub("%]$", ", cuda]")), tostring(t))
      assert.are.equal((tostring(ref:t()):gsub("%]$", ", cuda]")), tostring(t:t()))
      local big = tn.arange(2000, { device = "cuda" })
      assert.are.equal((tostring(tn.arange(2000)):gsub("%]$", ", cuda]")), tostring(big))
      local x = tn.ones(2, { device = "cuda" }):requires_grad(true)
      contains(tostring(x), "[f32, shape {2}, cuda, requires_grad]")
      contains(tostring(x * 2), "cuda, grad_fn=mul]")
      contains(tostring(tn.tensor(3, { device = "cuda", dtype = "i32" })), "tensor(3)")
    end)
  end)

  describe("constructors #gpu", function()
    it("make tensors on the GPU with the CPU's values", function()
      local proto = tn.ones(2, 3):cuda()
      local cases = {
        { tn.zeros(2, 3), tn.zeros(2, 3, { device = "cuda" }) },
        { tn.ones(2, 3, { dtype = "i32" }), tn.ones(2, 3, { dtype = "i32", device = "cuda" }) },
        { tn.full({ 2, 2 }, 7), tn.full({ 2, 2 }, 7, { device = "cuda" }) },
        { tn.arange(1, 10, 2, { dtype = "i64" }), tn.arange(1, 10, 2, { dtype = "i64", device = "cuda" }) },
        { tn.arange(0, 1, 0.125), tn.arange(0, 1, 0.125, { device = "cuda" }) },
        { tn.eye(3, 4), tn.eye(3, 4, { device = "cuda" }) },
        { tn.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "bf16" }),
          tn.tensor({ { 1, 2 }, { 3, 4 } }, { dtype = "bf16", device = "cuda" }) },
        { tn.tensor(2.5), tn.tensor(2.5, { device = "cuda" }) },
        { tn.tensor(true), tn.tensor(true, { device = "cuda" }) },
        { tn.zeros(2, 3), tn.zeros_like(proto) },
        { tn.full({ 2, 3 }, 3, { dtype = "f64" }), tn.full_like(proto, 3, { dtype = "f64" }) },
        { tn.ones(2, 3), tn.ones_like(proto) },
        { tn.zeros(4), proto:new_zeros({ 4 }) },
        { tn.full({ 2 }, 5), proto:new_full({ 2 }, 5) },
        { tn.tensor({ 1, 2 }), proto:new_tensor({ 1, 2 }) },
      }
      for i, c in ipairs(cases) do
        assert.are.equal("cuda", c[2]:device(), "case " .. i)
        assert.tensor_equal(c[1], c[2])
      end
      assert.are.equal("cpu", tn.zeros_like(proto, { device = "cpu" }):device())
      assert.are.equal("cuda", tn.zeros(2, { device = "cuda:0" }):device()) -- when device 0 is current
    end)

    it("draws random numbers on the GPU in their ranges", function()
      local u = tn.rand(10000, { device = "cuda" })
      assert.are.equal("cuda", u:device())
      assert.is_true(u:min():item() >= 0 and u:max():item() < 1)
      local n = tn.randn(10000, { device = "cuda", dtype = "f64" })
      assert.is_true(math.abs(n:mean():item()) < 0.05)
      assert.is_true(math.abs(n:std():item() - 1) < 0.05)
      local k = tn.randint(0, 5, { 1000 }, { device = "cuda" })
      assert.are.equal("i64", k:dtype())
      assert.is_true(k:min():item() >= 0 and k:max():item() <= 4)
      local b = tn.empty(1000, { device = "cuda" }):bernoulli_(0.5)
      assert.is_true(b:sum():item() > 300 and b:sum():item() < 700)
      assert.are.equal("cuda", tn.rand_like(u):device())
      assert.are.equal("cuda", tn.randn_like(u):device())
    end)

    it("records the current device in every new tensor and its views", function()
      local dev = tn.cuda.current_device()
      local t = tn.zeros(4, 3, { device = "cuda" })
      assert.are.same(dev, t._c.device_index)
      assert.are.same(dev, t:narrow(1, 2, 2)._c.device_index)
      assert.are.same(dev, (t + 1)._c.device_index)
      assert.are.same(dev, tn.ones(2):cuda()._c.device_index)
    end)

    it("with two GPUs, refuses a tensor of another device in an op and copies between devices", function()
      if tn.cuda.device_count() < 2 then
        pending("needs two GPUs (" .. tn.cuda.device_count() .. " visible)")
        return
      end
      finally(function() tn.cuda.set_device(0) end)
      tn.cuda.set_device(1)
      local t = tn.arange(0, 6, 1, { device = "cuda" }):float()
      assert.are.same(1, t._c.device_index)
      tn.cuda.set_device(0)
      contains(error_of(function() return t + 1 end), "a tensor on cuda:1, but the current device is cuda:0")
      local u = tn.empty(6, { device = "cuda" })
      assert.are.same(0, u._c.device_index)
      u:copy_(t) -- peer copy, ordered after t's fill on device 1
      assert.are.same({ 0, 1, 2, 3, 4, 5 }, u:tolist())
      contains(error_of(function() return t:double() end), "a tensor on cuda:1, but the current device is cuda:0")
      tn.cuda.set_device(1)
      local w = tn.empty(6, { dtype = "f64", device = "cuda" })
      contains(error_of(function() w:copy_(u) end), "only contiguous tensors of one dtype and shape")
      tn.cuda.set_device(0)
    end)

    it("refuses a CUDA index that is not the current device", function()
      tn.cuda.set_device(0)
      local n = tn.cuda.device_count()
      contains(error_of(function() return tn.zeros(2, { device = "cuda:" .. n }) end),
        "device cuda:" .. n .. " is not the current CUDA device (cuda:0)")
      contains(error_of(function() return tn.ones(2):to("cuda:" .. n) end), "is not the current CUDA device")
    end)
  end)

  describe("conversions and copies #gpu", function()
    it("cpu / cuda / to round trips keep every dtype's values, views included", function()
      for _, dt in ipairs(DTYPES) do
        local ref = tn.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }, { dtype = dt })
        local c = ref:cuda()
        assert.are.equal("cuda", c:device())
        assert.are.equal(c, c:cuda()) -- already there: itself
        assert.are.equal(c, c:to("cuda"))
        assert.are.equal(c, c:to({ device = "cuda", dtype = dt }))
        local back = c:cpu()
        assert.are.equal("cpu", back:device())
        assert.tensor_equal(ref, back)
        local vt = ref:t():cuda() -- a non-contiguous source
        assert.is_true(vt:is_contiguous())
        assert.tensor_equal(ref:t(), vt:cpu())
        assert.tensor_equal(ref:t(), c:t():cpu())
      end
      local ref = tn.randn(3, 4)
      assert.tensor_equal(ref:to("f16"), ref:to({ device = "cuda", dtype = "f16" }))
      assert.tensor_equal(ref:double(), ref:cuda():to({ device = "cpu", dtype = "f64" }))
      assert.tensor_equal(ref:to("bf16"), ref:cuda():to("bf16"))
      assert.tensor_equal(ref, ref:to("cuda:0"):cpu())
    end)

    it("copy_ between devices converts, broadcasts and writes into views like copy_ on one device", function()
      local src = tn.tensor({ 1.5, -2.7, 3 })
      local want = tn.zeros(2, 3, { dtype = "i32" }):copy_(src)
      local dst = tn.zeros(2, 3, { dtype = "i32", device = "cuda" })
      dst:copy_(src) -- from the CPU: converted there, broadcast on the GPU
      assert.tensor_equal(want, dst)
      local g = tn.tensor({ { 1.25, 2 }, { 3, 4 }, { 5, 6 } }, { device = "cuda" })
      local h2 = tn.zeros(2, 3, { dtype = "f64" })
      h2:copy_(g:t()) -- from a non-contiguous GPU view, converted on the CPU
      assert.tensor_equal(tn.tensor({ { 1.25, 3, 5 }, { 2, 4, 6 } }, { dtype = "f64" }), h2)
      local view = tn.zeros(3, 2, { device = "cuda" }):t() -- a non-contiguous destination
      view:copy_(tn.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }))
      assert.are.same({ { 1, 2, 3 }, { 4, 5, 6 } }, view:totable())
      local same = tn.zeros(3, { device = "cuda" })
      same:copy_(tn.tensor({ 7, 8, 9 }))
      assert.are.same({ 7, 8, 9 }, same:totable())
    end)

    it("tn.tensor(t, {device =}) copies", function()
      local ref = tn.tensor({ 1, 2, 3 })
      local t = tn.tensor(ref, { device = "cuda" })
      assert.are.equal("cuda", t:device())
      t:fill_(0)
      assert.are.same({ 1, 2, 3 }, ref:totable())
      local u = tn.tensor(t) -- stays on its device, a copy
      assert.are.equal("cuda", u:device())
      u:fill_(1)
      assert.are.same({ 0, 0, 0 }, t:totable())
      local w = tn.tensor(t, { device = "cpu", dtype = "f64" })
      assert.are.equal("cpu", w:device())
      assert.are.equal("f64", w:dtype())
    end)

    it("records t:cuda() and t:cpu() for autograd", function()
      local x = tn.randn(3, { dtype = "f64" }):requires_grad(true)
      local y = (x:cuda() * 2):cpu():sum()
      y:backward()
      assert.are.equal("cpu", x.grad:device())
      assert.tensor_equal(tn.full({ 3 }, 2, { dtype = "f64" }), x.grad)
      local w = tn.randn(3):cuda():requires_grad(true)
      ;(w * w):sum():backward()
      assert.are.equal("cuda", w.grad:device())
      assert.tensor_near(w:cpu() * 2, w.grad)
      contains(error_of(function() (w * w):backward(tn.ones(3)) end),
        "backward: the gradient is on cpu but the output is on cuda")
      w.grad = nil
      ;(w * 3):backward(tn.ones(3, { device = "cuda" }))
      assert.tensor_equal(tn.full({ 3 }, 3), w.grad)
    end)

    it("raises for ops mixing devices, naming both", function()
      local a, b = tn.ones(2, 3), tn.ones(2, 3, { device = "cuda" })
      local msg = error_of(function() return a + b end)
      contains(msg, "cpu")
      contains(msg, "cuda")
      contains(error_of(function() return a:matmul(b:t()) end), "cuda")
      contains(error_of(function() return tn.cat({ a, b }) end), "cuda")
      local lin = tn.nn.Linear(3, 2):cuda()
      contains(error_of(function() return lin(a) end), "linear: input is on cpu but the weight is on cuda")
      local emb = tn.nn.Embedding(5, 2):cuda()
      contains(error_of(function() return emb(tn.tensor({ 1, 2 }, { dtype = "i64" })) end),
        "embedding: indices are on cpu but the weight is on cuda")
      local cond = tn.tensor({ 1, 0 }, { device = "cuda" })
      local r = tn.where(cond, 1, 0) -- numbers become tensors on cond's device
      assert.are.equal("cuda", r:device())
      assert.are.same({ 1, 0 }, r:totable())
      assert.are.same({ 1, -1 }, tn.where(cond, 1, tn.full({ 2 }, -1, { device = "cuda" })):totable())
    end)
  end)

  describe("save and load #gpu", function()
    it("saves the CPU copy and loads onto the CPU or, with device, onto the GPU", function()
      local path = tmpname()
      finally(function() os.remove(path) end)
      local t = tn.randn(3, 4):cuda()
      tn.save(path, { t = t, v = t:t(), half = t:half(), idx = tn.arange(5, { dtype = "i64", device = "cuda" }) })
      local r = tn.load(path)
      assert.are.equal("cpu", r.t:device())
      assert.tensor_equal(t:cpu(), r.t)
      assert.tensor_equal(t:t():cpu(), r.v)
      assert.tensor_equal(t:half():cpu(), r.half)
      assert.tensor_equal(tn.arange(5, { dtype = "i64" }), r.idx)
      local g = tn.load(path, { device = "cuda" })
      for _, k in ipairs({ "t", "v", "half", "idx" }) do
        assert.are.equal("cuda", g[k]:device(), k)
        assert.tensor_equal(r[k], g[k])
      end
    end)
  end)

  describe("Module:to #gpu", function()
    it("moves parameters and gradients keeping names, identities, values and the flat buffers", function()
      local m = mlp()
      local x = tn.randn(4, 5)
      m(x):sum():backward()
      local before = {}
      for name, p in m:named_parameters() do before[name] = { p, p:clone(), p.grad:clone() } end
      assert.are.equal(m, m:to("cuda"))
      local n = 0
      for name, p in m:named_parameters() do
        n = n + 1
        assert.are.equal(before[name][1], p, name)
        assert.are.equal("cuda", p:device(), name)
        assert.is_true(p:requires_grad(), name)
        assert.tensor_equal(before[name][2], p)
        assert.tensor_equal(before[name][3], p.grad)
      end
      assert.are.equal(4, n)
      local groups = m:flat_buffers()
      assert.are.equal(1, #groups)
      assert.are.equal("cuda", groups[1].device)
      check_flat(m)
      m:cpu()
      for name, p in m:named_parameters() do
        assert.are.equal("cpu", p:device())
        assert.tensor_equal(before[name][2], p)
      end
      check_flat(m)
    end)

    it("moves and converts at once, buffers included", function()
      local m = tn.nn.Sequential(tn.nn.Linear(4, 4), tn.nn.SRU(4, 3, { num_layers = 1, rescale = true }))
      local ref = {}
      for name, p in m:named_parameters() do ref[name] = p:to("f16") end
      local sx = m[2].rnn_lst[1].scale_x
      local v = sx:to("f16"):item() -- its value after the conversion
      m:to({ device = "cuda", dtype = "f16" })
      for name, p in m:named_parameters() do
        assert.are.equal("cuda", p:device())
        assert.tensor_equal(ref[name], p)
      end
      check_flat(m)
      assert.are.equal(sx, m[2].rnn_lst[1].scale_x)
      assert.are.equal("cuda", sx:device())
      assert.are.equal("f16", sx:dtype())
      assert.are.equal(v, sx:item())
    end)

    it("gives the CPU's outputs and keeps training on the GPU", function()
      exact_f32()
      local cpu, gpu = twin(mlp)
      local x = tn.randn(6, 5)
      assert.tensor_near(cpu(x), gpu(x:cuda()), { atol = 1e-5, rtol = 1e-5 })
      local sd = gpu:state_dict()
      for name, t in pairs(sd) do assert.are.equal("cuda", t:device(), name) end
      gpu:zero_grad()
      check_flat(gpu)
    end)
  end)

  describe("autograd #gpu", function()
    it("gives an MLP's gradients on the GPU as on the CPU", function()
      exact_f32()
      local cpu, gpu = twin(mlp)
      local x, y = tn.randn(8, 5), tn.randn(8, 3)
      local xc = x:clone():requires_grad(true)
      local xg = x:cuda():requires_grad(true)
      local lc = mse(cpu, xc, y)
      local lg = mse(gpu, xg, y:cuda())
      assert.are.equal("cuda", lg:device())
      lc:backward()
      lg:backward()
      assert.tensor_near(lc:item(), lg:cpu(), { atol = 1e-6, rtol = 1e-5 })
      assert.are.equal("cuda", xg.grad:device())
      assert.tensor_near(xc.grad, xg.grad, { atol = 1e-6, rtol = 1e-4 })
      local gc = {}
      for name, p in cpu:named_parameters() do gc[name] = p.grad end
      for name, p in gpu:named_parameters() do
        assert.are.equal("cuda", p.grad:device(), name)
        assert.tensor_near(gc[name], p.grad, { atol = 1e-6, rtol = 1e-4 })
      end
    end)

    it("gives the gradients of softmax, reductions and indexing as on the CPU", function()
      local a = tn.randn(4, 6, { dtype = "f64" })
      local idx = tn.tensor({ 0, 5, 2, 3 }, { dtype = "i64" })
      local function f(x, i)
        local lp = x:log_softmax(2)
        local picked = lp:gather(2, i:view(4, 1))
        return -picked:mean() + x:var() * 0.1 + x:max() - x:clamp(-0.5, 0.5):sum() * 0.01
      end
      local xc = a:clone():requires_grad(true)
      local xg = a:cuda():requires_grad(true)
      local lc, lg = f(xc, idx), f(xg, idx:cuda())
      lc:backward()
      lg:backward()
      assert.tensor_near(lc, lg:cpu(), { atol = 1e-12, rtol = 1e-10 })
      assert.tensor_near(xc.grad, xg.grad, { atol = 1e-12, rtol = 1e-10 })
    end)

    it("passes gradcheck with CUDA f64 inputs", function()
      local x = tn.randn(2, 3, { dtype = "f64" }):cuda():requires_grad(true)
      local w = tn.randn(3, 2, { dtype = "f64" }):cuda():requires_grad(true)
      assert.gradcheck(function(a, b) return (a:matmul(b):tanh() * 2):sum(1) end, { x, w })
    end)
  end)

  describe("optimizers #gpu", function()
    local cases = {
      { "SGD", function(m)
        return tn.optim.SGD(m, { lr = 0.1, momentum = 0.9, nesterov = true, weight_decay = 1e-3 })
      end },
      { "Adam", function(m) return tn.optim.Adam(m, { lr = 1e-2, weight_decay = 1e-3 }) end },
      { "AdamW", function(m) return tn.optim.AdamW(m, { lr = 1e-2, weight_decay = 1e-2 }) end },
      { "NovoGrad", function(m) return tn.optim.NovoGrad(m, { lr = 1e-2 }) end },
    }
    for _, case in ipairs(cases) do
      it(case[1] .. " steps CUDA parameters as it steps CPU parameters, state on the GPU", function()
        exact_f32()
        local cpu, gpu = twin(mlp)
        local oc, og = case[2](cpu), case[2](gpu)
        local x, y = tn.randn(8, 5), tn.randn(8, 3)
        local xg, yg = x:cuda(), y:cuda()
        for _ = 1, 3 do
          oc:zero_grad(); og:zero_grad()
          mse(cpu, x, y):backward(); oc:step()
          mse(gpu, xg, yg):backward(); og:step()
        end
        params_near(cpu, gpu, { atol = 1e-5, rtol = 1e-4 })
        for _, s in ipairs(og:state_dict().state) do
          for k, t in pairs(s) do
            if h.tn.is_tensor(t) then assert.are.equal("cuda", t:device(), k) end
          end
        end
        check_flat(gpu)
      end)
    end

    it("clips the gradient norm on the GPU as on the CPU", function()
      exact_f32()
      local cpu, gpu = twin(mlp)
      local oc, og = tn.optim.SGD(cpu, { lr = 0.1 }), tn.optim.SGD(gpu, { lr = 0.1 })
      local x, y = tn.randn(8, 5), tn.randn(8, 3)
      mse(cpu, x, y):backward()
      mse(gpu, x:cuda(), y:cuda()):backward()
      local nc, ng = oc:clip_grad_norm(0.01), og:clip_grad_norm(0.01)
      assert.is_true(math.abs(nc - ng) <= 1e-5 * nc, string.format("norms %g and %g", nc, ng))
      oc:step(); og:step()
      params_near(cpu, gpu, { atol = 1e-6, rtol = 1e-5 })
    end)

    it("moves its state with parameters moved after it was built", function()
      exact_f32()
      local ref = mlp()
      local m = mlp()
      m:load_state_dict(ref:state_dict())
      local oref, o = tn.optim.Adam(ref, { lr = 1e-2 }), tn.optim.Adam(m, { lr = 1e-2 })
      local x, y = tn.randn(8, 5), tn.randn(8, 3)
      oref:zero_grad(); mse(ref, x, y):backward(); oref:step()
      o:zero_grad(); mse(m, x, y):backward(); o:step() -- one step on the CPU
      m:cuda()
      for _ = 1, 2 do
        oref:zero_grad(); mse(ref, x, y):backward(); oref:step()
        o:zero_grad(); mse(m, x:cuda(), y:cuda()):backward(); o:step()
      end
      params_near(ref, m, { atol = 1e-5, rtol = 1e-4 })
      assert.are.equal("cuda", o:state_dict().state[1].exp_avg:device())
    end)

    it("keeps the FP32 masters of an f16 model on the GPU", function()
      local m = mlp():to({ device = "cuda", dtype = "f16" })
      local o = tn.optim.Adam(m, { lr = 1e-3 })
      local x = tn.randn(8, 5):to({ device = "cuda", dtype = "f16" })
      local y = tn.randn(8, 3):to({ device = "cuda", dtype = "f16" })
      mse(m, x, y):float():backward()
      o:step()
      local st = o:state_dict().state[1]
      assert.are.equal("cuda", st.master:device())
      assert.are.equal("f32", st.master:dtype())
      local p1 = m:parameters()[1]
      assert.tensor_near(st.master:narrow(1, 1, p1:numel()):view(p1:shape()):to("f16"), p1, { atol = 0, rtol = 0 })
    end)
  end)

  describe("amp #gpu", function()
    it("scales, unscales and steps a CUDA model as the CPU model", function()
      exact_f32()
      local cpu, gpu = twin(mlp)
      local oc, og = tn.optim.Adam(cpu, { lr = 1e-2 }), tn.optim.Adam(gpu, { lr = 1e-2 })
      local sc = tn.amp.backoff({ init_scale = 2 ^ 10, growth_interval = 2 })
      local sg = tn.amp.backoff({ init_scale = 2 ^ 10, growth_interval = 2 })
      local x, y = tn.randn(8, 5), tn.randn(8, 3)
      local xg, yg = x:cuda(), y:cuda()
      for _ = 1, 4 do
        oc:zero_grad(); og:zero_grad()
        sc:scale(mse(cpu, x, y)):backward()
        sg:scale(mse(gpu, xg, yg)):backward()
        assert.are.equal(sc:step(oc), sg:step(og))
      end
      assert.are.equal(sc:get_scale(), sg:get_scale())
      params_near(cpu, gpu, { atol = 1e-5, rtol = 1e-4 })
    end)

    it("skips the step of an f16 CUDA model whose gradients overflowed, leaving it untouched", function()
      local m = mlp():to({ device = "cuda", dtype = "f16" })
      local o = tn.optim.Adam(m, { lr = 1e-2 })
      local scaler = tn.amp.backoff({ init_scale = 2 ^ 8 }) -- low: only the inf put below overflows
      local x = tn.randn(8, 5):to({ device = "cuda", dtype = "f16" })
      local y = tn.randn(8, 3):to({ device = "cuda", dtype = "f16" })
      o:zero_grad()
      scaler:scale(mse(m, x, y):float()):backward()
      local before = {}
      for name, p in m:named_parameters() do before[name] = p:clone() end
      tn.no_grad(function() m:parameters()[1].grad:fill_(math.huge) end)
      assert.is_false(scaler:step(o))
      assert.are.equal(1, scaler.skipped)
      assert.are.equal(2 ^ 7, scaler:get_scale())
      for name, p in m:named_parameters() do assert.tensor_equal(before[name], p) end
      o:zero_grad()
      scaler:scale(mse(m, x, y):float()):backward()
      assert.is_true(scaler:step(o))
    end)
  end)

  describe("checkpoints #gpu", function()
    it("save a CUDA model through the CPU and restore onto the module's device", function()
      exact_f32()
      local dir = os.tmpname()
      os.remove(dir)
      local path = dir .. ".safetensors"
      finally(function() os.remove(path) end)
      local m = mlp():cuda()
      local o = tn.optim.Adam(m, { lr = 1e-2 })
      local scaler = tn.amp.backoff({ init_scale = 2 ^ 8 })
      local x, y = tn.randn(8, 5):cuda(), tn.randn(8, 3):cuda()
      for _ = 1, 2 do
        o:zero_grad(); scaler:scale(mse(m, x, y)):backward(); scaler:step(o)
      end
      tn.checkpoint.save(path, { step = 2, model = m, optimizer = o, scaler = scaler })
      local ck = tn.checkpoint.load(path)
      assert.are.equal("cpu", ck.state.model["0.weight"]:device()) -- the file holds CPU tensors

      local m2 = mlp():cuda()
      local o2 = tn.optim.Adam(m2, { lr = 1e-2 })
      local s2 = tn.amp.backoff()
      local step = tn.checkpoint.restore(path, { model = m2, optimizer = o2, scaler = s2 })
      assert.are.equal(2, step)
      for name, p in m2:named_parameters() do assert.are.equal("cuda", p:device(), name) end
      params_near(m, m2, { atol = 0, rtol = 0 })
      check_flat(m2)
      local a, b = o:state_dict().state[1], o2:state_dict().state[1]
      assert.are.equal("cuda", b.exp_avg:device())
      assert.tensor_equal(a.exp_avg, b.exp_avg)
      assert.tensor_equal(a.exp_avg_sq, b.exp_avg_sq)
      assert.are.equal(scaler:get_scale(), s2:get_scale())
      -- the next step is the same on both (up to the order of GPU sums)
      o:zero_grad(); scaler:scale(mse(m, x, y)):backward(); scaler:step(o)
      o2:zero_grad(); s2:scale(mse(m2, x, y)):backward(); s2:step(o2)
      params_near(m, m2, { atol = 1e-6, rtol = 1e-5 })

      -- and onto a CPU model: the same values
      local m3 = mlp()
      tn.checkpoint.restore(path, { model = m3 })
      for name, p in m3:named_parameters() do
        assert.are.equal("cpu", p:device(), name)
        assert.tensor_equal(ck.state.model[name], p)
      end
    end)
  end)
end)
