-- Specs of devices in the Lua API that need no GPU: device = "cpu" accepted by every
-- constructor and conversion, unknown device names refused naming the argument, t:cpu() the
-- identity on CPU tensors, the CPU paths unchanged by the device code (element access,
-- printing, copies, save/load, Module:to keeping its flat buffers), and on a machine without
-- a GPU a clear Lua error (never a crash, and the module left as it was) from every way of
-- asking for a CUDA tensor. The same behaviour on a GPU is in spec/gpu_tensor_spec.lua.
local h = require "helpers.init"
local tn = h.tn

local function contains(s, part)
  assert.truthy(tostring(s):find(part, 1, true), "'" .. tostring(s) .. "' does not contain '" .. part .. "'")
end

-- Call fn (which raises on its first line) and check that the message points at this spec
-- file and that line, then contains part.
local function raises_here(fn, part)
  local line = debug.getinfo(fn, "S").linedefined
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error")
  err = tostring(err)
  local file, at = err:match("^([^:]*):(%d+): ")
  assert.truthy(file and file:find("device_spec.lua", 1, true), "error does not point at the spec: " .. err)
  assert.are.equal(line, tonumber(at), "error points at line " .. tostring(at) .. ": " .. err)
  if part then contains(err, part) end
  return err
end

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p .. ".safetensors"
end

-- every way to make a tensor with an options table: name -> function(opts) -> tensor (not
-- tail calls: errors must point at these lines)
local proto = tn.ones(2, 3)
local CONSTRUCTORS = {
  empty = function(o) local r = tn.empty(2, 3, o) return r end,
  zeros = function(o) local r = tn.zeros(2, 3, o) return r end,
  ones = function(o) local r = tn.ones({ 2, 3 }, o) return r end,
  full = function(o) local r = tn.full({ 2, 3 }, 7, o) return r end,
  rand = function(o) local r = tn.rand(2, 3, o) return r end,
  randn = function(o) local r = tn.randn(2, 3, o) return r end,
  randint = function(o) local r = tn.randint(0, 5, { 2, 3 }, o) return r end,
  arange = function(o) local r = tn.arange(0, 6, 1, o) return r end,
  eye = function(o) local r = tn.eye(3, o) return r end,
  tensor_table = function(o) local r = tn.tensor({ { 1, 2 }, { 3, 4 } }, o) return r end,
  tensor_number = function(o) local r = tn.tensor(2.5, o) return r end,
  tensor_tensor = function(o) local r = tn.tensor(proto, o) return r end,
  empty_like = function(o) local r = tn.empty_like(proto, o) return r end,
  zeros_like = function(o) local r = tn.zeros_like(proto, o) return r end,
  ones_like = function(o) local r = tn.ones_like(proto, o) return r end,
  full_like = function(o) local r = tn.full_like(proto, 3, o) return r end,
  rand_like = function(o) local r = tn.rand_like(proto, o) return r end,
  randn_like = function(o) local r = tn.randn_like(proto, o) return r end,
  new_zeros = function(o) local r = proto:new_zeros({ 2 }, o) return r end,
  new_ones = function(o) local r = proto:new_ones({ 2 }, o) return r end,
  new_full = function(o) local r = proto:new_full({ 2 }, 5, o) return r end,
  new_tensor = function(o) local r = proto:new_tensor({ 1, 2 }, o) return r end,
}

local function sorted_names()
  local names = {}
  for name in pairs(CONSTRUCTORS) do names[#names + 1] = name end
  table.sort(names)
  return names
end

describe("tern devices", function()
  describe("device = \"cpu\"", function()
    it("is accepted by every constructor and gives CPU tensors", function()
      for _, name in ipairs(sorted_names()) do
        local make = CONSTRUCTORS[name]
        local t = make({ device = "cpu" })
        assert.are.equal("cpu", t:device(), name)
        local ref = make(nil)
        assert.are.same(ref:shape(), t:shape(), name)
        assert.are.equal(ref:dtype(), t:dtype(), name)
        assert.are.equal("cpu", make({ device = "cpu:0" }):device(), name)
        assert.are.equal("cpu", make({ device = 0 }):device(), name)
      end
    end)

    it("gives the same values as no device", function()
      tn.manual_seed(7)
      local a = tn.randn(3, 4)
      tn.manual_seed(7)
      local b = tn.randn(3, 4, { device = "cpu" })
      assert.tensor_equal(a, b)
      assert.tensor_equal(tn.arange(5), tn.arange(5, { device = "cpu" }))
      assert.tensor_equal(tn.eye(2, 3), tn.eye(2, 3, { device = "cpu" }))
      assert.tensor_equal(tn.tensor({ 1, 2 }, { dtype = "i32" }),
        tn.tensor({ 1, 2 }, { dtype = "i32", device = "cpu" }))
      assert.are.same(2.5, tn.tensor(2.5, { device = "cpu" }):item())
    end)

    it("keeps requires_grad and dtype together with device", function()
      local t = tn.zeros(2, { device = "cpu", dtype = "f64", requires_grad = true })
      assert.are.equal("f64", t:dtype())
      assert.is_true(t:requires_grad())
      local u = tn.tensor({ 1, 2 }, { device = "cpu", dtype = "f16", requires_grad = true })
      assert.are.equal("f16", u:dtype())
      assert.is_true(u:requires_grad())
    end)
  end)

  describe("unknown devices", function()
    it("are refused by every constructor, naming the argument, at the caller's line", function()
      for _, name in ipairs(sorted_names()) do
        local make = CONSTRUCTORS[name]
        local ok, err = pcall(make, { device = "tpu" })
        assert.is_false(ok, name)
        contains(err, "device: unknown device tpu")
        contains(err, "device_spec.lua:") -- not inside tern
      end
      raises_here(function() local r = tn.zeros(2, { device = "tpu" }) return r end, "device: unknown device tpu")
      raises_here(function() local r = tn.arange(3, { device = "gpu" }) return r end, "device: unknown device gpu")
      raises_here(function() local r = tn.tensor({ 1 }, { device = "tpu" }) return r end, "device: unknown device tpu")
      raises_here(function() local r = tn.tensor(1, { device = "tpu" }) return r end, "device: unknown device tpu")
      raises_here(function() local r = tn.zeros_like(proto, { device = "tpu" }) return r end,
        "device: unknown device tpu")
      raises_here(function() local r = tn.eye(2, { device = "tpu" }) return r end, "device: unknown device tpu")
    end)

    it("are refused by conversions, naming the call", function()
      local t = tn.ones(2)
      raises_here(function() local r = t:to({ device = "tpu" }) return r end, "to: unknown device tpu")
      raises_here(function() local r = t:to({ device = "tpu", dtype = "f64" }) return r end, "to: unknown device tpu")
      raises_here(function() local r = t:to({ device = "cpu", dtype = "f128" }) return r end, "to: unknown dtype f128")
      raises_here(function() local r = t:to("cuda:x") return r end, "to: unknown device cuda:x")
      raises_here(function() local r = t:to("cuda:-1") return r end, "to: unknown device cuda:-1")
      raises_here(function() local r = t:to("cpu:1") return r end, "to: unknown device cpu:1")
      local m = tn.nn.Linear(2, 2)
      raises_here(function() local r = m:to({ device = "tpu" }) return r end, "to: unknown device tpu")
      raises_here(function() local r = m:to("cuda:x") return r end, "to: unknown device cuda:x")
      local path = tmpname()
      tn.save(path, { a = t })
      raises_here(function() local r = tn.load(path, { device = "tpu" }) return r end,
        "load: device: unknown device tpu")
      raises_here(function() local r = tn.load(path, "cuda") return r end, "load: opts must be a table")
      os.remove(path)
    end)
  end)

  describe("t:cpu() and t:to on CPU tensors", function()
    it("return the tensor itself", function()
      local t = tn.randn(2, 3)
      assert.are.equal(t, t:cpu())
      assert.are.equal(t, t:to("cpu"))
      assert.are.equal(t, t:to("cpu:0"))
      assert.are.equal(t, t:to({ device = "cpu" }))
      assert.are.equal(t, t:to({ device = "cpu", dtype = "f32" }))
      local v = t:t()
      assert.are.equal(v, v:cpu()) -- a view stays the same view
    end)

    it("record nothing for autograd", function()
      local x = tn.randn(3):requires_grad(true)
      local y = x:cpu()
      assert.are.equal(x, y)
      assert.is_true(y:is_leaf())
      local z = x:to({ device = "cpu", dtype = "f64" })
      assert.are.equal("f64", z:dtype())
      z:sum():backward()
      assert.tensor_equal({ 1, 1, 1 }, x.grad)
    end)

    it("convert dtypes with device = \"cpu\" as without", function()
      local t = tn.tensor({ 1.5, -2.25, 3 })
      assert.tensor_equal(t:to("f16"), t:to({ device = "cpu", dtype = "f16" }))
      assert.tensor_equal(t:to("i32"), t:to({ dtype = "i32", device = "cpu" }))
      local u = tn.tensor(t, { dtype = "f64", device = "cpu" })
      assert.are.equal("f64", u:dtype())
      u:fill_(0) -- a copy, not a view of t
      assert.tensor_equal({ 1.5, -2.25, 3 }, t)
      local w = tn.tensor(t, { device = "cpu" })
      w:fill_(0)
      assert.tensor_equal({ 1.5, -2.25, 3 }, t)
    end)
  end)

  describe("CPU paths", function()
    it("read and write elements, print and copy as before", function()
      local t = tn.tensor({ { 1, 2 }, { 3, 4 } })
      assert.are.equal(3, t:get({ 2, 1 }))
      t:set({ 2, 1 }, 9)
      assert.are.equal(9, t[2][1])
      t[1][2] = 5
      assert.are.same({ { 1, 5 }, { 9, 4 } }, t:totable())
      assert.are.same({ { 1, 5 }, { 9, 4 } }, t:tolist())
      assert.are.same({ { 1, 9 }, { 5, 4 } }, t:t():totable())
      assert.are.equal(4, t[2]:narrow(1, 2, 1):item())
      assert.are.equal("tensor([[1., 5.],\n        [9., 4.]])\n[f32, shape {2, 2}]", tostring(t))
      local d = tn.zeros(2, 2, { dtype = "f64" })
      d:copy_(t:t())
      assert.are.same({ { 1, 9 }, { 5, 4 } }, d:totable())
      d:copy_(tn.tensor({ 7, 8 }))
      assert.are.same({ { 7, 8 }, { 7, 8 } }, d:totable())
    end)

    it("where() with numbers", function()
      local c = tn.tensor({ 1, 0, 1 })
      assert.tensor_equal({ 2, 3, 2 }, tn.where(c, 2, 3))
      assert.tensor_equal({ 2, -1, 2 }, tn.where(c, 2, tn.tensor({ -1, -1, -1 })))
    end)

    it("save and load, with device = \"cpu\"", function()
      local path = tmpname()
      local a = tn.randn(3, 2)
      tn.save(path, { a = a, b = tn.arange(4, { dtype = "i64" }) })
      local r = tn.load(path, { device = "cpu" })
      assert.are.equal("cpu", r.a:device())
      assert.tensor_equal(a, r.a)
      assert.tensor_equal(tn.arange(4, { dtype = "i64" }), r.b)
      assert.tensor_equal(a, tn.load(path).a)
      os.remove(path)
    end)

    it("gradcheck on CPU inputs", function()
      local x = tn.randn(3, { dtype = "f64" }):requires_grad(true)
      assert.gradcheck(function(a) return (a * a):sum() end, { x })
    end)
  end)

  describe("Module:to", function()
    local function check_flat(m)
      for _, g in ipairs(m:flat_buffers()) do
        local es = g.data:dtype() == "f64" and 8 or (g.data:dtype() == "f32" and 4 or 2)
        local off = 0
        for _, p in ipairs(g.params) do
          assert.are.equal(g.data:data_ptr() + off * es, p:data_ptr())
          assert.are.equal(g.grad:data_ptr() + off * es, p.grad:data_ptr())
          assert.are.equal(g.device, p:device())
          off = off + p:numel()
        end
        assert.are.equal(off, g.data:numel())
      end
    end

    it("to(\"cpu\") and cpu() keep parameters, names and the flat buffers", function()
      local m = tn.nn.Sequential(tn.nn.Linear(3, 4), tn.nn.Linear(4, 2))
      local before = {}
      for name, p in m:named_parameters() do before[name] = { p, p:clone() } end
      assert.are.equal(m, m:to("cpu"))
      assert.are.equal(m, m:cpu())
      assert.are.equal(m, m:to({ device = "cpu" }))
      for name, p in m:named_parameters() do
        assert.are.equal(before[name][1], p) -- the same tensor object
        assert.tensor_equal(before[name][2], p)
        assert.are.equal("cpu", p:device())
      end
      check_flat(m)
    end)

    it("converts dtypes one flat buffer at a time, keeping values, gradients and the invariant", function()
      local m = tn.nn.Sequential(tn.nn.Linear(3, 4), tn.nn.Linear(4, 2))
      local x = tn.randn(5, 3)
      m(x):sum():backward()
      local vals, grads = {}, {}
      for name, p in m:named_parameters() do vals[name], grads[name] = p:clone(), p.grad:clone() end
      m:to({ device = "cpu", dtype = "f64" })
      for name, p in m:named_parameters() do
        assert.are.equal("f64", p:dtype())
        assert.are.equal("f64", p.grad:dtype())
        assert.tensor_near(vals[name], p:float(), { atol = 0, rtol = 0 })
        assert.tensor_near(grads[name], p.grad:float(), { atol = 0, rtol = 0 })
      end
      check_flat(m)
      local y = m(x:double()) -- still trains
      y:sum():backward()
      m:to("f32")
      check_flat(m)
    end)

    it("merges groups that land on one dtype into one flat buffer", function()
      local m = tn.nn.Sequential(tn.nn.Linear(2, 3), tn.nn.Linear(3, 2, { dtype = "f16" }))
      assert.are.equal(2, #m:flat_buffers())
      m:to("f16")
      local groups = m:flat_buffers()
      assert.are.equal(1, #groups)
      assert.are.equal("f16", groups[1].dtype)
      check_flat(m)
    end)

    it("moves buffers too", function()
      local m = tn.nn.SRU(4, 3, { num_layers = 1, rescale = true })
      local sx = m.rnn_lst[1].scale_x
      local v = sx:item()
      m:to({ device = "cpu", dtype = "f64" })
      assert.are.equal(sx, m.rnn_lst[1].scale_x)
      assert.are.equal("f64", sx:dtype())
      assert.are.equal(v, sx:item())
    end)

    it("lets an optimizer built before a dtype change refuse clearly", function()
      local m = tn.nn.Linear(2, 2)
      local opt = tn.optim.SGD(m, { lr = 0.1 })
      m:to("f64")
      local ok, err = pcall(opt.step, opt)
      assert.is_false(ok)
      contains(err, "build the optimizer after model:to()")
    end)
  end)

  describe("without a GPU", function()
    if tn.cuda.is_available() then return end

    it("tn.cuda.is_available() is false", function()
      assert.is_false(tn.cuda.is_available())
      assert.are.equal(0, tn.cuda.device_count())
    end)

    local function cuda_error(fn)
      local err = raises_here(fn)
      assert.truthy(err:find("CUDA", 1, true) or err:find("cuda", 1, true), err)
      return err
    end

    it("every constructor raises a clear error for device = \"cuda\"", function()
      for _, name in ipairs(sorted_names()) do
        local make = CONSTRUCTORS[name]
        for _, dev in ipairs({ "cuda", "cuda:0", 1 }) do
          local ok, err = pcall(make, { device = dev })
          assert.is_false(ok, name)
          assert.truthy(tostring(err):lower():find("cuda", 1, true), name .. ": " .. tostring(err))
          contains(err, "device_spec.lua:") -- raised at the caller's line, not inside tern
        end
      end
      cuda_error(function() local r = tn.zeros(2, { device = "cuda" }) return r end)
      cuda_error(function() local r = tn.arange(4, { device = "cuda" }) return r end)
      cuda_error(function() local r = tn.tensor({ 1, 2 }, { device = "cuda" }) return r end)
      cuda_error(function() local r = tn.tensor(1, { device = "cuda" }) return r end)
      cuda_error(function() local r = tn.tensor(proto, { device = "cuda" }) return r end)
      cuda_error(function() local r = tn.zeros_like(proto, { device = "cuda" }) return r end)
      cuda_error(function() local r = tn.eye(2, { device = "cuda" }) return r end)
      cuda_error(function() local r = tn.randn(2, { device = "cuda" }) return r end)
    end)

    it("t:cuda() and t:to(\"cuda\") raise a clear error and leave t alone", function()
      local t = tn.randn(2, 3)
      local v = t:clone()
      cuda_error(function() local r = t:cuda() return r end)
      cuda_error(function() local r = t:to("cuda") return r end)
      cuda_error(function() local r = t:to("cuda:0") return r end)
      cuda_error(function() local r = t:to({ device = "cuda" }) return r end)
      cuda_error(function() local r = t:to({ device = "cuda", dtype = "f16" }) return r end)
      cuda_error(function() local r = t:t():cuda() return r end)
      local x = tn.randn(2):requires_grad(true)
      cuda_error(function() local r = x:cuda() return r end)
      assert.are.equal("cpu", t:device())
      assert.tensor_equal(v, t)
    end)

    it("Module:to(\"cuda\") and Module:cuda() raise a clear error and leave the module as it was", function()
      local m = tn.nn.Sequential(tn.nn.Linear(3, 4), tn.nn.SRU(4, 2, { num_layers = 1 }))
      m(tn.randn(2, 1, 3)) -- (L, B, in) through Linear then SRU
      m:flat_buffers()
      local before = {}
      for name, p in m:named_parameters() do before[name] = { p, p:clone(), p._c } end
      cuda_error(function() local r = m:to("cuda") return r end)
      cuda_error(function() local r = m:cuda() return r end)
      cuda_error(function() local r = m:to({ device = "cuda", dtype = "f16" }) return r end)
      for name, p in m:named_parameters() do
        assert.are.equal(before[name][1], p)
        assert.are.equal(before[name][3], p._c) -- not even re-bound
        assert.tensor_equal(before[name][2], p)
        assert.are.equal("cpu", p:device())
      end
      local y = m(tn.randn(2, 1, 3)) -- still usable
      assert.are.equal("cpu", y:device())
    end)

    it("tn.load(path, {device = \"cuda\"}) raises a clear error", function()
      local path = tmpname()
      tn.save(path, { a = tn.ones(2) })
      cuda_error(function() local r = tn.load(path, { device = "cuda" }) return r end)
      os.remove(path)
    end)

    it("reports the CUDA memory of a machine without a GPU as zero", function()
      local st = tn.memory_stats("cuda")
      assert.are.equal(0, st.current)
    end)
  end)

  -- the loops above leave many small tensors to the GC; collect them here so that the
  -- resident-memory figures of the spec files that follow (memory_spec) start from a
  -- collected heap
  teardown(function() collectgarbage() collectgarbage() end)
end)
