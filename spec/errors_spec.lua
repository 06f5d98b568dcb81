-- Specs of tern's errors: bad shapes, bad dtypes, out-of-range indices and dims, mismatched
-- and missing devices. Each error is a Lua error (never a crash) whose message names the op
-- and the shapes, raised at the caller's line; the C entry points return a status and set
-- tn_last_error().
local h = require "helpers.init"
local tn = h.tn
local ffi = require "ffi"

local function i64(x) return tn.tensor(x, { dtype = "i64" }) end

-- Call fn (which raises on its first line) and check that the message starts with this
-- spec file and that line, then matches pattern.
local function raises_here(fn, pattern)
  local line = debug.getinfo(fn, "S").linedefined
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error")
  err = tostring(err)
  local file, at = err:match("^([^:]*):(%d+): ")
  assert.truthy(file and file:find("errors_spec.lua", 1, true), "error does not point at the spec: " .. err)
  assert.are.equal(line, tonumber(at), "error points at line " .. tostring(at) .. ": " .. err)
  if pattern then assert.truthy(err:find(pattern), "'" .. err .. "' does not match '" .. pattern .. "'") end
end

describe("tern errors", function()
  describe("bad shapes", function()
    it("name the op and both shapes for broadcasting", function()
      local a, b = tn.zeros(2, 3), tn.zeros(4)
      raises_here(function() local r = a + b return r end, "add: shapes %[2, 3%] and %[4%] are not broadcastable")
      raises_here(function() local r = a:mul(b) return r end, "mul: shapes %[2, 3%] and %[4%]")
      raises_here(function() local r = tn.where(tn.ones(3, { dtype = "u8" }), a, b) return r end, "where: shapes")
      raises_here(function() local r = a:masked_fill(tn.ones(4, { dtype = "u8" }), 1) return r end, "masked_fill: shapes")
      raises_here(function() local r = a:clone():copy_(b) return r end, "%[4%].*%[2, 3%]")
    end)

    it("name the op and shapes for matmul and bmm", function()
      raises_here(function() local r = tn.zeros(2, 3):matmul(tn.zeros(4, 5)) return r end,
        "matmul: shapes %[2, 3%] and %[4, 5%] cannot be multiplied")
      raises_here(function() local r = tn.zeros(3):matmul(tn.zeros(4)) return r end, "matmul: shapes {3} and {4}")
      raises_here(function() local r = tn.zeros(2, 2, 3):bmm(tn.zeros(2, 4, 5)) return r end,
        "bmm: shapes %[2, 2, 3%] and %[2, 4, 5%]")
      raises_here(function() local r = tn.zeros(2, 3):bmm(tn.zeros(3, 2)) return r end, "bmm")
      raises_here(function() local r = tn.tensor(1):matmul(tn.zeros(2)) return r end, "matmul: both arguments need at least 1 dim")
    end)

    it("name the op and shapes for views", function()
      local a = tn.zeros(2, 3)
      raises_here(function() local r = a:view(5) return r end, "view: shape %[5%] is invalid for input of size 6")
      raises_here(function() local r = a:reshape(4, 2) return r end, "reshape: shape %[4, 2%] is invalid")
      raises_here(function() local r = a:t():view(6) return r end, "view")
      raises_here(function() local r = a:expand(3, 3) return r end, "expand: cannot expand shape %[2, 3%] to %[3, 3%]")
      raises_here(function() local r = a:view(-1, -1) return r end, "view")
      raises_here(function() local r = a:permute(1, 1) return r end, "permute")
      raises_here(function() local r = a:permute(1) return r end, "permute: expected 2 dims for a 2%-d tensor, got 1")
    end)

    it("name the op and shapes for joining and indexing", function()
      local a = tn.zeros(2, 3)
      raises_here(function() local r = tn.cat({ a, tn.zeros(2, 4) }) return r end, "cat: .*%[2, 4%].*%[2, 3%]")
      raises_here(function() local r = tn.cat({ a, tn.zeros(3) }) return r end, "cat")
      raises_here(function() local r = tn.cat({}) return r end, "cat: expected a non%-empty list")
      raises_here(function() local r = tn.stack({ a, tn.zeros(3, 2) }) return r end, "stack: element 2 has shape {3, 2}")
      raises_here(function() local r = a:gather(2, i64({ 0, 1 })) return r end, "gather: index %[2%] must have as many dims as a %[2, 3%]")
      raises_here(function() local r = a:scatter_add(2, i64({ { 0, 1 }, { 0, 0 } }), tn.ones(1, 1)) return r end,
        "scatter_add: index %[2, 2%] is larger than src %[1, 1%]")
      raises_here(function() local r = a:index_add(1, i64({ 0 }), tn.ones(1, 4)) return r end, "index_add")
      raises_here(function() local r = tn.embedding(tn.zeros(3), i64({ 0 })) return r end, "embedding: weight must be 2%-d")
    end)

    it("reject bad sizes when creating", function()
      raises_here(function() local r = tn.zeros(2, -1) return r end, "zeros: size 2 must be a non%-negative integer, got %-1")
      raises_here(function() local r = tn.empty({ 2.5 }) return r end, "empty: size 1 must be a non%-negative integer")
      raises_here(function() local r = tn.rand(1, 2, 3, 4, 5, 6, 7, 8, 9) return r end, "rand: at most 8 dimensions, got 9")
      raises_here(function() local r = tn.full(2, 3) return r end, "full: expected a shape table first")
      raises_here(function() local r = tn.arange(0, 10, 0) return r end, "arange: step must be nonzero")
      raises_here(function() local r = tn.randint(5, 2, { 3 }) return r end, "randint: need low < high")
    end)

    it("report allocations that cannot be made", function()
      -- (AddressSanitizer prints a warning for a failed 400 TB malloc; skip that one there)
      if not h.asan then
        raises_here(function() local r = tn.empty(1e7, 1e7) return r end, "empty: out of cpu memory allocating 400000000000000 bytes")
      end
      raises_here(function() local r = tn.empty(1e12, 1e12) return r end, "overflows")
    end)

    it("reject backward with a mismatched gradient", function()
      local x = tn.ones(2):requires_grad(true)
      local y = x * 2
      raises_here(function() local r = y:backward(tn.ones(3)) return r end, "backward: gradient of shape {3} given for output of shape {2}")
      raises_here(function() local r = y:backward() return r end, "backward: grad can be implicit only")
    end)
  end)

  describe("bad dtypes", function()
    it("unknown dtype names list the valid ones", function()
      raises_here(function() local r = tn.zeros(2, { dtype = "f128" }) return r end,
        "dtype: unknown dtype f128 %(expected f32, f64, f16, bf16, i32, i64, u8%)")
      raises_here(function() local r = tn.tensor({ 1 }, { dtype = "complex" }) return r end, "unknown dtype complex")
      raises_here(function() local r = tn.ones(2):to("f8") return r end, "to: unknown dtype f8")
    end)

    it("index tensors must be integers", function()
      local a = tn.zeros(2, 3)
      raises_here(function() local r = a:gather(2, tn.zeros(2, 1)) return r end, "gather: index must be an i64 or i32 tensor, got f32")
      raises_here(function() local r = a:index_select(1, tn.zeros(1, { dtype = "u8" })) return r end, "index_select: index must be an i64 or i32 tensor, got u8")
      raises_here(function() local r = tn.embedding(a, tn.zeros(1, { dtype = "f64" })) return r end, "embedding: index must be")
    end)

    it("bmm names both dtypes when they differ", function()
      raises_here(function() local r = tn.zeros(1, 2, 2):bmm(tn.zeros(1, 2, 2, { dtype = "f64" })) return r end,
        "bmm: dtypes differ: a %[1, 2, 2%] f32, b %[1, 2, 2%] f64")
    end)

    it("integer matmul names the dtype", function()
      local C, OUT = tn.C, ffi.new("tn_tensor *[1]")
      local a = tn.ones(2, 2, { dtype = "i64" })
      assert.are_not.equal(0, C.tn_matmul(OUT, a._c, a._c))
      assert.truthy(ffi.string(C.tn_last_error()):find("matmul: i64 is not supported", 1, true))
    end)

    it("only float leaves can require grad", function()
      raises_here(function() local r = tn.zeros(2, { dtype = "i32" }):requires_grad(true) return r end,
        "requires_grad: only float tensors can require grad, got i32")
    end)

    it("operands of the wrong Lua type name the op", function()
      local a = tn.zeros(2)
      raises_here(function() local r = a * "x" return r end, "mul: expected tensors or numbers, got table and string")
      raises_here(function() local r = tn.exp(3) return r end, "exp: expected a tensor, got number")
      raises_here(function() local r = a:matmul(3) return r end, "matmul: other must be a tensor, got number")
      raises_here(function() local r = a:fill_("x") return r end, "fill_: value must be a number, got string")
      raises_here(function() local r = a:clamp("x") return r end, "clamp: min and max must be numbers or nil")
    end)
  end)

  describe("out-of-range indices", function()
    local v, m = tn.zeros(4), tn.zeros(2, 3)
    it("t[i], get and set check every position, 1-based", function()
      raises_here(function() local r = v[5] return r end, "index 5 is out of range for dim 1 of size 4")
      raises_here(function() local r = v[0] return r end, "index 0 is out of range for dim 1 of size 4")
      raises_here(function() local r = v[-5] return r end, "index %-5 is out of range")
      raises_here(function() v[5] = 1 end, "index 5 is out of range")
      raises_here(function() m[3] = 1 end, "select: index 3 is out of range for dim 1 of size 2")
      raises_here(function() m[1] = tn.ones(4) end, "%[4%].*%[3%]")
      raises_here(function() v[1] = "x" end, "index: value must be a number for a 1%-d tensor")
      raises_here(function() local r = m:get({ 3, 1 }) return r end, "get: index 3 is out of range for dim 1 of size 2 %(shape {2, 3}%)")
      raises_here(function() local r = m:get({ 1 }) return r end, "get: expected 2 indices for a 2%-d tensor of shape {2, 3}, got 1")
      raises_here(function() local r = m:set({ 1, 4 }, 0) return r end, "set: index 4 is out of range for dim 2 of size 3")
      raises_here(function() local r = m:get({ 1, 1.5 }) return r end, "get: index 2 must be an integer")
      raises_here(function() local r = tn.tensor(1)[1] return r end, "a 0%-d tensor cannot be indexed")
    end)

    it("select and narrow check their ranges", function()
      raises_here(function() local r = m:select(1, 3) return r end, "select: index 3 is out of range for dim 1 of size 2")
      raises_here(function() local r = m:select(2, 0) return r end, "select: index 0 is out of range")
      raises_here(function() local r = m:narrow(2, 2, 5) return r end,
        "narrow: start 2, length 5 out of range for dim 2 of size 3 %(shape %[2, 3%]%)")
      raises_here(function() local r = m:narrow(2, 5, 1) return r end, "narrow: start 5, length 1 out of range for dim 2 ")
    end)

    it("index values (0-based) are checked by gather, scatter_add, index_select, index_add and embedding", function()
      raises_here(function() local r = m:gather(2, i64({ { 3 } })) return r end,
        "gather: index 3 is out of range for dim 2 of size 3 %(at position %[1, 1%]%)")
      raises_here(function() local r = m:gather(2, i64({ { -1 } })) return r end, "gather: index %-1 is out of range")
      raises_here(function() local r = m:scatter_add(2, i64({ { 3 } }), tn.ones(1, 1)) return r end, "scatter_add: index 3 is out of range")
      raises_here(function() local r = m:index_select(1, i64({ 2 })) return r end, "index_select: index 2 is out of range")
      raises_here(function() local r = m:index_add(1, i64({ -1 }), tn.ones(1, 3)) return r end, "index_add: index %-1 is out of range")
      raises_here(function() local r = tn.embedding(m, i64({ 0, 7 })) return r end, "embedding: .*index 7 is out of range")
    end)

    it("item needs one element", function()
      raises_here(function() local r = m:item() return r end, "item: needs a one%-element tensor, got shape {2, 3}")
    end)
  end)

  describe("out-of-range dims", function()
    local a = tn.zeros(2, 3)
    it("name the op, the dim and the valid range", function()
      local msg = "dim 3 is out of range for a 2%-d tensor %(valid 1..2 or %-2..%-1%)"
      raises_here(function() local r = a:sum(3) return r end, "sum: " .. msg)
      raises_here(function() local r = a:sum({ 1, 3 }) return r end, "sum: " .. msg)
      raises_here(function() local r = a:mean(3) return r end, "mean: " .. msg)
      raises_here(function() local r = a:var(3) return r end, "var: " .. msg)
      raises_here(function() local r = a:logsumexp(3) return r end, "logsumexp: " .. msg)
      raises_here(function() local r = a:argmax(3) return r end, "argmax: " .. msg)
      raises_here(function() local r = a:max(3) return r end, "max: " .. msg)
      raises_here(function() local r = a:softmax(3) return r end, "softmax: " .. msg)
      raises_here(function() local r = a:log_softmax(-3) return r end, "log_softmax: dim %-3 is out of range")
      raises_here(function() local r = tn.cat({ a, a }, 3) return r end, "cat: " .. msg)
      raises_here(function() local r = a:squeeze(3) return r end, "squeeze: " .. msg)
      raises_here(function() local r = a:size(3) return r end, "size: " .. msg)
      raises_here(function() local r = a:narrow(3, 1, 1) return r end, "narrow: " .. msg)
      raises_here(function() local r = a:gather(3, i64({ { 0 } })) return r end, "gather: " .. msg)
      raises_here(function() local r = a:transpose(1, 3) return r end, "transpose: dim1 3 is out of range")
      raises_here(function() local r = a:unsqueeze(4) return r end, "unsqueeze: dim 4 is out of range for a 3%-d tensor")
    end)

    it("dim 0 is out of range (dims are 1-based)", function()
      raises_here(function() local r = a:sum(0) return r end, "sum: dim 0 is out of range")
      raises_here(function() local r = a:select(0, 1) return r end, "select: dim 0 is out of range")
      raises_here(function() local r = a:transpose(0, 1) return r end, "transpose: dim0 0 is out of range")
    end)
  end)

  -- The C library prints dims, positions, narrow's start, select's index and list positions
  -- with the base tern.lib sets (1): the user reads back the dim they typed. Index values read
  -- from index tensors are data and stay 0-based.
  describe("dims and positions from the C library", function()
    local m = tn.zeros(2, 3)
    it("are 1-based under Lua", function()
      assert.are.equal(1, tn.C.tn_get_dim_base())
    end)

    it("name the user's dim, and the element's 1-based position, for bad index values", function()
      local bad = i64({ { 0, 1 }, { 2, 3 } }) -- 3 is out of range for dim 2 (size 3), at row 2, column 2
      raises_here(function() local r = m:gather(2, bad) return r end,
        "gather: index 3 is out of range for dim 2 of size 3 %(at position %[2, 2%]%)")
      raises_here(function() local r = m:scatter_add(2, bad, tn.ones(2, 2)) return r end,
        "scatter_add: index 3 is out of range for dim 2 of size 3 %(at position %[2, 2%]%)")
      raises_here(function() local r = m:index_select(2, i64({ 0, 2, 5 })) return r end,
        "index_select: index 5 is out of range for dim 2 of size 3 %(at position %[3%]%)")
      raises_here(function() local r = m:index_add(1, i64({ 1, 2 }), tn.ones(2, 3)) return r end,
        "index_add: index 2 is out of range for dim 1 of size 2 %(at position %[2%]%)")
    end)

    it("name narrow's dim and 1-based start", function()
      raises_here(function() local r = m:narrow(2, 2, 5) return r end, "narrow: start 2, length 5 out of range for dim 2 ")
      raises_here(function() local r = m:narrow(1, 4, 0) return r end, "narrow: start 4, length 0 out of range for dim 1 ")
    end)

    it("name cat's tensors by their 1-based position in the list", function()
      raises_here(function() local r = tn.cat({ m, m, tn.zeros(2, 4) }, 1) return r end,
        "cat: tensor 3 has shape %[2, 4%] but tensor 1 has %[2, 3%]; sizes must match except in dim 1")
      raises_here(function() local r = tn.cat({ m, tn.zeros(3, 3) }, 2) return r end,
        "cat: tensor 2 has shape %[3, 3%] but tensor 1 has %[2, 3%]; sizes must match except in dim 2")
    end)

    it("name the other dims 1-based too", function()
      raises_here(function() local r = m:index_add(2, i64({ 0 }), tn.ones(2, 2)) return r end,
        "index_add: src %[2, 2%] must match out %[2, 3%] except in dim 2,")
      raises_here(function() local r = m:expand(3, 4) return r end, "expand: cannot expand shape %[2, 3%] to %[3, 4%] %(dim 1:")
      raises_here(function() local r = tn.zeros(2, 2, 3):matmul(tn.zeros(3, 3, 4)) return r end, "at batch dim 1%)")
    end)

    it("are 0-based for C callers at base 0", function()
      local C, OUT = tn.C, ffi.new("tn_tensor *[1]")
      C.tn_set_dim_base(0)
      local st = C.tn_narrow(OUT, m._c, 1, 1, 5)
      local msg = ffi.string(C.tn_last_error())
      C.tn_set_dim_base(1)
      assert.are_not.equal(0, st)
      assert.are.equal("narrow: start 1, length 5 out of range for dim 1 of size 3 (shape [2, 3])", msg)
      assert.are.equal(1, C.tn_get_dim_base())
    end)
  end)

  describe("devices", function()
    -- a fake cuda tensor: a view of a cpu tensor whose device field says cuda. (Not
    -- t:detach(): detach shares t's tn_tensor struct, so it would turn t into cuda too.)
    local t, f
    before_each(function()
      t = tn.ones(2, 3)
      f = t:view(2, 3)
      f._c.device = 1
      assert.are.equal("cpu", t:device())
    end)
    after_each(function() f._c.device = 0 end)

    it("raise for ops mixing cpu and cuda tensors, naming the op", function()
      raises_here(function() local r = t + f return r end, "add: .*cuda")
      raises_here(function() local r = f + t return r end, "add: .*cuda")
      raises_here(function() local r = t:matmul(f:t()) return r end, "matmul: tensors on different devices %(cpu and cuda%)")
      raises_here(function() local r = tn.cat({ t, f }) return r end, "cat: tensors on different devices %(cpu and cuda%)")
      raises_here(function() local r = t:bmm(f) return r end, "bmm")
      raises_here(function() local r = t:gather(2, i64({ { 0 }, { 1 } })):add(f:narrow(2, 1, 1)) return r end, "add: .*cuda")
      raises_here(function() local r = t:scatter_add(1, i64({ { 0, 0, 0 } }), f:narrow(1, 1, 1)) return r end,
        "scatter_add: tensors on different devices %(cpu and cuda%)")
      raises_here(function() local r = t:index_select(1, f:long()) return r end, "cuda")
      raises_here(function() local r = f:index_select(1, i64({ 0 })) return r end, "index_select: tensors on different devices %(cuda and cpu%)")
      raises_here(function() local r = t:clone():copy_(f) return r end, "cuda")
    end)

    it("raise for ops on a cuda tensor in a cpu build", function()
      raises_here(function() local r = f:exp() return r end, "exp: .*cuda")
      raises_here(function() local r = f:sum() return r end, "sum: .*cuda")
      raises_here(function() local r = f:softmax(1) return r end, "softmax: .*cuda")
      raises_here(function() local r = f + 1 return r end, "add: .*cuda")
      raises_here(function() local r = f:half() return r end, "cuda")
      raises_here(function() local r = f:cpu() return r end, "cuda")
    end)

    it("refuse element access on a cuda tensor", function()
      raises_here(function() local r = f:totable() return r end, "totable: element access needs a cpu tensor; call :cpu%(%) first")
      raises_here(function() local r = f:get({ 1, 1 }) return r end, "get: element access needs a cpu tensor")
      raises_here(function() local r = f:item() return r end, "item")
    end)

    it("print a cuda tensor without reading its values", function()
      assert.are.equal("tensor(<values on cuda>)\n[f32, shape {2, 3}, cuda]", tostring(f))
    end)

    it("raise a clear error when cuda is requested and no device is available", function()
      if tn.has_cuda() then return pending("this machine has a CUDA device") end
      -- a CPU-only build says it was built without CUDA; a CUDA build on a machine without
      -- a GPU must say that no device is available, not that 8 bytes ran out of memory
      local function no_cuda(fn)
        raises_here(fn, "[Cc][Uu][Dd][Aa]")
        local err = select(2, pcall(fn))
        assert.is_nil(err:find("out of cuda memory", 1, true), err)
      end
      no_cuda(function() local r = tn.zeros(2, { device = "cuda" }) return r end)
      no_cuda(function() local r = tn.tensor({ 1 }, { device = "cuda" }) return r end)
      no_cuda(function() local r = t:cuda() return r end)
      no_cuda(function() local r = t:to("cuda") return r end)
    end)

    it("raise for unknown device names", function()
      raises_here(function() local r = tn.zeros(2, { device = "tpu" }) return r end, "device: unknown device tpu %(expected \"cpu\" or \"cuda\"%)")
      raises_here(function() local r = tn.memory_stats("gpu") return r end, "unknown device gpu")
    end)
  end)

  describe("the C API", function()
    local C = tn.C
    local OUT = ffi.new("tn_tensor *[1]")
    before_each(function() OUT[0] = nil end)

    local function status_and_message(st)
      return st, ffi.string(C.tn_last_error())
    end

    it("returns a status and a message naming op, shapes and dtypes", function()
      local a, b = tn.ones(3, { dtype = "i64" }), tn.ones(3)
      local st, msg = status_and_message(C.tn_binary(OUT, a._c, b._c, 0))
      assert.are.equal(3, st) -- TN_ERR_DTYPE
      assert.are.equal("add: dtypes i64 and f32 differ (a [3], b [3])", msg)
    end)

    it("reports integer division by zero", function()
      local a, z = i64({ 7, -7 }), i64({ 0, 2 })
      local st, msg = status_and_message(C.tn_binary(OUT, a._c, z._c, 3))
      assert.are_not.equal(0, st)
      assert.truthy(msg:find("div: integer division by zero", 1, true))
    end)

    it("rejects NULL arguments, bad enums and bad dtypes", function()
      local a = tn.ones(3)
      local st, msg = status_and_message(C.tn_binary(OUT, nil, a._c, 0))
      assert.are.equal(1, st)
      assert.truthy(msg:find("add: argument 'a' is NULL", 1, true))
      st, msg = status_and_message(C.tn_unary(nil, a._c, 0))
      assert.are.equal(1, st)
      assert.truthy(msg:find("out is NULL", 1, true))
      st, msg = status_and_message(C.tn_binary(OUT, a._c, a._c, 99))
      assert.are.equal("binary: invalid op 99", msg)
      st, msg = status_and_message(C.tn_tensor_empty(OUT, 1, ffi.new("int64_t[1]", 2), 9, 0))
      assert.are.equal("empty: invalid dtype 9", msg)
      st, msg = status_and_message(C.tn_tensor_empty(OUT, 9, ffi.new("int64_t[9]", 1), 0, 0))
      assert.are.equal("empty: ndim 9 out of range 0..8", msg)
    end)

    it("checks strided views against the storage", function()
      local a = tn.ones(3)
      local st, msg = status_and_message(C.tn_as_strided(OUT, a._c, 1, ffi.new("int64_t[1]", 10),
        ffi.new("int64_t[1]", 1), 0))
      assert.are.equal(5, st) -- TN_ERR_INDEX
      assert.truthy(msg:find("as_strided: shape [10]", 1, true))
    end)

    it("checks the shape of a preallocated output", function()
      local a, o = tn.ones(3), tn.zeros(2)
      OUT[0] = o._c
      local st, msg = status_and_message(C.tn_binary(OUT, a._c, a._c, 0))
      OUT[0] = nil
      assert.are.equal(2, st) -- TN_ERR_SHAPE
      assert.are.equal("add: out has shape [2] (f32), expected [3] (f32)", msg)
    end)

    it("frees NULL as a no-op", function()
      C.tn_tensor_free(nil)
      assert.is_true(true)
    end)
  end)
end)
