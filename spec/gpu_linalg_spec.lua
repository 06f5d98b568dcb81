-- Specs of matrix products on CUDA (cuda/linalg.cu behind core/linalg.c): matmul, bmm and the
-- C API's tn_gemm on GPU tensors, each compared with the CPU's result on the same inputs, for
-- f32, f64, f16 and bf16 and every operand layout the code distinguishes: row-major, transposed
-- (column-major) and sliced views go to cuBLAS as they are, other layouts are copied first;
-- batches fold into one GEMM, run as one strided-batched call or as a loop of them. Also the
-- 1-D cases, broadcast and expanded batch dims, empty dims, gemm's alpha / beta / transposes
-- and padded output, TF32 on and off, a large K (f32 accumulation of f16 / bf16), a non-default
-- stream, autograd through matmul, and errors equal to the CPU's.
--
-- The #gpu blocks need a GPU and are skipped (and counted) without one; the TF32 switch itself
-- is a setting and is checked on every build.
local h = require "helpers.init"
local tn = h.tn
local ffi = require "ffi"
local C = tn.C

local DTYPES = { "f32", "f64", "f16", "bf16" }

-- Tolerances of a GPU product against the CPU's with inner size k. f64 and f32 without TF32
-- differ only in summation order; f16 / bf16 are both f32 sums rounded once, so by at most an
-- ulp of the output; TF32 rounds each input to a 10-bit mantissa.
local function tol(dtype, k)
  local s = math.sqrt(math.max(k or 1, 1))
  if dtype == "f64" then return { rtol = 1e-12, atol = 1e-12 * s } end
  if dtype == "f32" then
    if tn.cuda.get_tf32() then return { rtol = 1e-2, atol = 1e-2 * s } end
    return { rtol = 1e-5, atol = 1e-5 * s }
  end
  if dtype == "f16" then return { rtol = 4e-3, atol = 1e-3 * s } end
  return { rtol = 1.6e-2, atol = 8e-3 * s } -- bf16
end

local function rnd(dtype, ...) return tn.randn(...):to(dtype) end

-- the message of an error without its "file:line: " prefix
local function message_of(fn)
  local ok, msg = pcall(fn)
  assert.is_false(ok, "expected an error")
  return (tostring(msg):gsub("^.-:%d+: ", ""))
end

local function c_error()
  return ffi.string(C.tn_last_error())
end

local function gemm(out, a, b, ta, tb, alpha, beta)
  local st = C.tn_gemm(out._c, a._c, b._c, ta, tb, alpha, beta)
  if st ~= 0 then error(c_error(), 2) end
  return out
end

-- Largest |x - y| over two tensors of one shape (CPU tensors).
local function max_abs_diff(x, y)
  local xv, yv = h.values_of(x:double()), h.values_of(y:double())
  local worst = 0
  for i = 1, #xv do worst = math.max(worst, math.abs(xv[i] - yv[i])) end
  return worst
end

describe("tn.cuda.set_tf32", function()
  local before
  setup(function() before = tn.cuda.get_tf32() end)
  teardown(function() tn.cuda.set_tf32(before) end)

  it("is on by default and keeps the value set", function()
    assert.is_true(before)
    tn.cuda.set_tf32(false)
    assert.is_false(tn.cuda.get_tf32())
    tn.cuda.set_tf32(true)
    assert.is_true(tn.cuda.get_tf32())
  end)

  it("takes only a boolean", function()
    assert.error_matches(function() tn.cuda.set_tf32(1) end, "tn.cuda.set_tf32: expected a boolean, got number")
  end)
end)

describe("linalg on CUDA #gpu", function()
  local tf32_before
  setup(function() tf32_before = tn.cuda.get_tf32() end)
  teardown(function() tn.cuda.set_tf32(tf32_before) end)
  before_each(function() tn.cuda.set_tf32(false) end)

  -- Each case: the shapes of two random base tensors and the views taken of them (the same
  -- views on the CPU and on the GPU copies), and the inner size k for the tolerance.
  local matmul_cases = {
    { "2-D x 2-D", { 7, 5 }, { 5, 6 }, function(x, y) return x, y end, 5 },
    { "transposed a", { 5, 7 }, { 5, 6 }, function(x, y) return x:t(), y end, 5 },
    { "transposed b", { 7, 5 }, { 6, 5 }, function(x, y) return x, y:t() end, 5 },
    { "both transposed", { 5, 7 }, { 6, 5 }, function(x, y) return x:t(), y:t() end, 5 },
    { "sliced columns (row stride above the width)", { 7, 12 }, { 5, 9 },
      function(x, y) return x:narrow(2, 3, 5), y:narrow(2, 2, 6) end, 5 },
    { "sliced rows of a transposed view", { 9, 7 }, { 8, 6 },
      function(x, y) return x:narrow(1, 2, 5):t(), y:narrow(1, 1, 5) end, 5 },
    { "permuted operands with no unit stride (copied first)", { 5, 4, 7 }, { 7, 4, 6 },
      function(x, y) return x:permute(3, 1, 2), y end, 4 },
    { "vector x matrix", { 5 }, { 5, 6 }, function(x, y) return x, y end, 5 },
    { "matrix x vector", { 7, 5 }, { 5 }, function(x, y) return x, y end, 5 },
    { "dot", { 5 }, { 5 }, function(x, y) return x, y end, 5 },
    { "strided vectors", { 5, 3 }, { 4, 5 }, function(x, y) return x:select(2, 2), y:select(1, 3) end, 5 },
    { "single row x single column", { 1, 5 }, { 5, 1 }, function(x, y) return x, y end, 5 },
    { "column x row (k = 1)", { 6, 1 }, { 1, 4 }, function(x, y) return x, y end, 1 },
    { "batch x matrix (folded into one GEMM)", { 2, 3, 4, 5 }, { 5, 6 }, function(x, y) return x, y end, 5 },
    { "batch x transposed matrix", { 2, 3, 4, 5 }, { 6, 5 }, function(x, y) return x, y:t() end, 5 },
    { "batch x matrix, batch not contiguous", { 3, 2, 4, 5 }, { 5, 6 },
      function(x, y) return x:transpose(1, 2), y end, 5 },
    { "batch of transposed x matrix", { 3, 5, 4 }, { 5, 6 }, function(x, y) return x:transpose(2, 3), y end, 5 },
    { "matrix x batch (a broadcast)", { 4, 5 }, { 3, 5, 6 }, function(x, y) return x, y end, 5 },
    { "batch x batch", { 3, 4, 5 }, { 3, 5, 6 }, function(x, y) return x, y end, 5 },
    { "broadcast batch dims", { 2, 1, 4, 5 }, { 3, 5, 6 }, function(x, y) return x, y end, 5 },
    { "broadcast batch dims on both sides", { 2, 1, 4, 5 }, { 1, 3, 5, 6 }, function(x, y) return x, y end, 5 },
    { "expanded (stride 0) batch", { 1, 4, 5 }, { 3, 5, 6 },
      function(x, y) return x:expand(3, 4, 5), y end, 5 },
    { "batches of transposed views", { 3, 5, 4 }, { 3, 6, 5 },
      function(x, y) return x:transpose(2, 3), y:transpose(2, 3) end, 5 },
    { "batch x vector", { 3, 4, 5 }, { 5 }, function(x, y) return x, y end, 5 },
    { "vector x batch", { 5 }, { 3, 5, 6 }, function(x, y) return x, y end, 5 },
    { "size-1 batch", { 1, 4, 5 }, { 1, 5, 6 }, function(x, y) return x, y end, 5 },
    { "odd sizes", { 33, 17 }, { 17, 65 }, function(x, y) return x, y end, 17 },
    { "K larger than M and N", { 3, 1000 }, { 1000, 2 }, function(x, y) return x, y end, 1000 },
  }

  describe("matmul", function()
    for _, dtype in ipairs(DTYPES) do
      for _, case in ipairs(matmul_cases) do
        local name, sa, sb, view, k = case[1], case[2], case[3], case[4], case[5]
        it("matches the CPU for " .. name .. " in " .. dtype, function()
          tn.manual_seed(11)
          local x, y = rnd(dtype, sa), rnd(dtype, sb)
          local a, b = view(x, y)
          local want = a:matmul(b)
          local ga, gb = view(x:cuda(), y:cuda())
          local got = ga:matmul(gb)
          assert.are.equal("cuda", got:device())
          assert.are.equal(dtype, got:dtype())
          assert.are.same(want:shape(), got:shape())
          assert.tensor_near(want, got:cpu(), tol(dtype, k))
        end)
      end
    end

    it("gives zeros for an empty inner dim and nothing for empty outer dims", function()
      for _, dtype in ipairs(DTYPES) do
        local z = tn.zeros(3, 0, { dtype = dtype }):cuda():matmul(tn.zeros(0, 4, { dtype = dtype }):cuda())
        assert.tensor_equal(tn.zeros(3, 4, { dtype = dtype }), z:cpu())
        local zb = tn.zeros(2, 3, 0, { dtype = dtype }):cuda():matmul(tn.zeros(2, 0, 4, { dtype = dtype }):cuda())
        assert.tensor_equal(tn.zeros(2, 3, 4, { dtype = dtype }), zb:cpu())
        assert.are.same({ 0, 4, 3 }, rnd(dtype, 0, 4, 5):cuda():matmul(rnd(dtype, 0, 5, 3):cuda()):shape())
        assert.are.same({ 2, 0 }, rnd(dtype, 2, 5):cuda():matmul(rnd(dtype, 5, 0):cuda()):shape())
      end
    end)

    it("takes 1-D operands through the C API", function()
      tn.manual_seed(12)
      local OUT = ffi.new("tn_tensor *[1]")
      for _, dtype in ipairs(DTYPES) do
        local v, m, w = rnd(dtype, 5), rnd(dtype, 5, 6), rnd(dtype, 4, 5)
        local cases = {
          { v, m, { 6 } },   -- (5) x (5, 6) -> (6)
          { w, v, { 4 } },   -- (4, 5) x (5) -> (4)
          { v, v, {} },      -- dot -> 0-d
          { rnd(dtype, 2, 4, 5), v, { 2, 4 } },
          { v, rnd(dtype, 2, 5, 3), { 2, 3 } },
        }
        for _, cs in ipairs(cases) do
          local a, b, shape = cs[1], cs[2], cs[3]
          local want = tn.empty(shape, { dtype = dtype })
          OUT[0] = want._c
          assert.are.equal(0, C.tn_matmul(OUT, a._c, b._c), c_error())
          local got = tn.empty(shape, { dtype = dtype, device = "cuda" })
          OUT[0] = got._c
          assert.are.equal(0, C.tn_matmul(OUT, a:cuda()._c, b:cuda()._c), c_error())
          assert.tensor_near(want, got:cpu(), tol(dtype, 5))
        end
      end
    end)

    it("writes into a preallocated non-contiguous output", function()
      tn.manual_seed(13)
      local OUT = ffi.new("tn_tensor *[1]")
      for _, dtype in ipairs(DTYPES) do
        local a, b = rnd(dtype, 4, 5), rnd(dtype, 5, 3)
        local base = tn.zeros(3, 4, { dtype = dtype }):cuda()
        local out = base:t() -- (4, 3), strides (1, 4)
        OUT[0] = out._c
        assert.are.equal(0, C.tn_matmul(OUT, a:cuda()._c, b:cuda()._c), c_error())
        assert.tensor_near(a:matmul(b), out:cpu(), tol(dtype, 5))
      end
    end)

    it("computes f16 and bf16 in f32 over a large K", function()
      for _, dtype in ipairs({ "f16", "bf16" }) do
        -- an f32 accumulator counts to 8192 exactly; an f16 one would stall at 2048
        local ones = tn.ones(1, 8192, { dtype = dtype }):cuda()
        assert.are.same({ { 8192 } }, ones:matmul(ones:t()):cpu():totable())
        tn.manual_seed(14)
        local a, b = rnd(dtype, 4, 20000), rnd(dtype, 20000, 3)
        assert.tensor_near(a:matmul(b), a:cuda():matmul(b:cuda()):cpu(), tol(dtype, 20000))
      end
    end)

    it("matches the CPU over a large K in f32 and f64", function()
      tn.manual_seed(15)
      for _, dtype in ipairs({ "f32", "f64" }) do
        local a, b = rnd(dtype, 8, 20000), rnd(dtype, 20000, 8)
        assert.tensor_near(a:matmul(b), a:cuda():matmul(b:cuda()):cpu(), tol(dtype, 20000))
      end
    end)

    it("runs on the thread's current stream", function()
      tn.manual_seed(16)
      local a, b = rnd("f32", 3, 64, 32), rnd("f32", 32, 48)
      local want = a:matmul(b)
      local s = tn.cuda.Stream()
      tn.cuda.set_stream(s)
      local ok, err = pcall(function()
        local ga, gb = a:cuda(), b:cuda()
        local got = ga:matmul(gb)
        local got2 = ga:bmm(gb:expand(3, 32, 48))
        s:synchronize()
        assert.tensor_near(want, got:cpu(), tol("f32", 32))
        assert.tensor_near(want, got2:cpu(), tol("f32", 32))
      end)
      tn.cuda.set_stream(nil)
      s:free()
      assert(ok, err)
    end)

    it("backpropagates through GPU products like the CPU", function()
      tn.manual_seed(17)
      local x, w, g = tn.randn(2, 3, 4), tn.randn(4, 5), tn.randn(2, 3, 5)
      local function grads(dev)
        -- fresh leaves on each device (x itself stays a tensor without grad)
        local xa = (dev == "cpu" and x:clone() or x:cuda()):requires_grad(true)
        local wa = (dev == "cpu" and w:clone() or w:cuda()):requires_grad(true)
        local loss = (xa:matmul(wa) * g:to(dev)):sum()
        loss:backward()
        return xa.grad:cpu(), wa.grad:cpu()
      end
      local gx, gw = grads("cpu")
      local cx, cw = grads("cuda")
      assert.tensor_near(gx, cx, tol("f32", 5))
      assert.tensor_near(gw, cw, tol("f32", 6))
    end)
  end)

  describe("bmm", function()
    local bmm_cases = {
      { "contiguous", { 3, 4, 5 }, { 3, 5, 6 }, function(x, y) return x, y end },
      { "transposed", { 3, 5, 4 }, { 3, 6, 5 }, function(x, y) return x:transpose(2, 3), y:transpose(2, 3) end },
      { "sliced", { 3, 4, 9 }, { 3, 7, 6 }, function(x, y) return x:narrow(3, 2, 5), y:narrow(2, 3, 5) end },
      { "batch-major views (batch stride 1)", { 4, 5, 3 }, { 5, 6, 3 },
        function(x, y) return x:permute(3, 1, 2), y:permute(3, 1, 2) end },
      { "expanded batch", { 1, 4, 5 }, { 3, 5, 6 }, function(x, y) return x:expand(3, 4, 5), y end },
      { "batch of one", { 1, 4, 5 }, { 1, 5, 6 }, function(x, y) return x, y end },
    }
    for _, dtype in ipairs(DTYPES) do
      for _, case in ipairs(bmm_cases) do
        local name, sa, sb, view = case[1], case[2], case[3], case[4]
        it("matches the CPU for " .. name .. " operands in " .. dtype, function()
          tn.manual_seed(21)
          local x, y = rnd(dtype, sa), rnd(dtype, sb)
          local a, b = view(x, y)
          local ga, gb = view(x:cuda(), y:cuda())
          local got = ga:bmm(gb)
          assert.are.equal(dtype, got:dtype())
          assert.tensor_near(a:bmm(b), got:cpu(), tol(dtype, 5))
        end)
      end
    end
  end)

  describe("gemm (C API)", function()
    -- out (n, m) = alpha * op(a) op(b) + beta * out with n = 4, k = 5, m = 6
    local function operands(dtype, ta, tb)
      local a = ta == 1 and rnd(dtype, 5, 4) or rnd(dtype, 4, 5)
      local b = tb == 1 and rnd(dtype, 6, 5) or rnd(dtype, 5, 6)
      return a, b
    end
    for _, dtype in ipairs(DTYPES) do
      for _, tr in ipairs({ { 0, 0 }, { 1, 0 }, { 0, 1 }, { 1, 1 } }) do
        local ta, tb = tr[1], tr[2]
        it(string.format("matches the CPU with trans_a %d, trans_b %d and alpha / beta in %s", ta, tb, dtype),
          function()
            tn.manual_seed(31)
            local a, b = operands(dtype, ta, tb)
            for _, ab in ipairs({ { 1, 0 }, { 0.5, 2 }, { -1.5, 1 }, { 0, 0.5 }, { 2, -1 } }) do
              local c0 = rnd(dtype, 4, 6)
              local want = gemm(c0:clone(), a, b, ta, tb, ab[1], ab[2])
              local got = gemm(c0:cuda(), a:cuda(), b:cuda(), ta, tb, ab[1], ab[2])
              assert.tensor_near(want, got:cpu(), tol(dtype, 5 * 4))
            end
          end)
      end

      it("writes a padded output (row stride above the width) and leaves the padding in " .. dtype, function()
        tn.manual_seed(32)
        local a, b = operands(dtype, 0, 1)
        local base = rnd(dtype, 4, 10)
        local want_base, got_base = base:clone(), base:cuda()
        gemm(want_base:narrow(2, 3, 6), a, b, 0, 1, 1.5, 0.5)
        gemm(got_base:narrow(2, 3, 6), a:cuda(), b:cuda(), 0, 1, 1.5, 0.5)
        assert.tensor_near(want_base, got_base:cpu(), tol(dtype, 5 * 4))
      end)

      it("does not read out when beta is 0 in " .. dtype, function()
        tn.manual_seed(33)
        local a, b = operands(dtype, 0, 0)
        local nan = tn.full({ 4, 6 }, 0 / 0, { dtype = dtype })
        local want = gemm(nan:clone(), a, b, 0, 0, 1, 0)
        local got = gemm(nan:cuda(), a:cuda(), b:cuda(), 0, 0, 1, 0)
        assert.tensor_near(want, got:cpu(), tol(dtype, 5))
        assert.tensor_near(a:matmul(b), got:cpu(), tol(dtype, 5))
      end)

      it("scales out by beta when k is 0 in " .. dtype, function()
        local c0 = rnd(dtype, 4, 6)
        local a, b = tn.zeros(4, 0, { dtype = dtype }), tn.zeros(0, 6, { dtype = dtype })
        for _, beta in ipairs({ 0, 0.5 }) do
          local want = gemm(c0:clone(), a, b, 0, 0, 1, beta)
          local got = gemm(c0:cuda(), a:cuda(), b:cuda(), 0, 0, 1, beta)
          assert.tensor_equal(want, got:cpu())
        end
      end)

      it("copies an operand that is also the output in " .. dtype, function()
        tn.manual_seed(34)
        local x, y = rnd(dtype, 5, 5), rnd(dtype, 5, 5)
        local want = gemm(x:clone(), x, y, 0, 0, 1, 1)
        local gx = x:cuda()
        gemm(gx, gx, y:cuda(), 0, 0, 1, 1)
        assert.tensor_near(want, gx:cpu(), tol(dtype, 5 * 4))
      end)
    end
  end)

  describe("TF32", function()
    -- 512^3 f32 with full-mantissa inputs: TF32 (10-bit mantissa) is off the exact product by
    -- ~1e-2 somewhere, full f32 by ~1e-4 at most
    local function errors()
      tn.manual_seed(41)
      local a, b = tn.randn(512, 512), tn.randn(512, 512)
      local exact = a:double():matmul(b:double())
      local ga, gb = a:cuda(), b:cuda()
      tn.cuda.set_tf32(false)
      local full = max_abs_diff(exact, ga:matmul(gb):cpu())
      tn.cuda.set_tf32(true)
      local tf32 = max_abs_diff(exact, ga:matmul(gb):cpu())
      return full, tf32
    end

    it("is used for f32 only when on", function()
      local full, tf32 = errors()
      assert.is_true(full < 1e-3, "full f32 error " .. full)
      assert.is_true(tf32 > 1e-3, "TF32 error " .. tf32 .. ": TF32 seems not to be used")
      assert.is_true(tf32 < 0.5, "TF32 error " .. tf32)
    end)

    it("keeps f32 products within TF32 tolerance of the CPU", function()
      tn.cuda.set_tf32(true)
      tn.manual_seed(42)
      for _, sh in ipairs({ { { 64, 128 }, { 128, 96 } }, { { 4, 64, 128 }, { 128, 32 } }, { { 3, 8, 256 }, { 3, 256, 8 } } }) do
        local a, b = tn.randn(sh[1]), tn.randn(sh[2])
        local k = sh[1][#sh[1]]
        assert.tensor_near(a:matmul(b), a:cuda():matmul(b:cuda()):cpu(), tol("f32", k))
      end
    end)

    it("leaves f64 products in f64", function()
      tn.cuda.set_tf32(true)
      tn.manual_seed(43)
      local a, b = tn.randn(64, 300, { dtype = "f64" }), tn.randn(300, 32, { dtype = "f64" })
      assert.tensor_near(a:matmul(b), a:cuda():matmul(b:cuda()):cpu(), { rtol = 1e-12, atol = 1e-12 * math.sqrt(300) })
    end)
  end)

  describe("errors", function()
    -- the same call on CPU tensors and on their CUDA copies raises the same message
    local function same_error(fn, ...)
      local cpu_args, gpu_args = { ... }, {}
      for i, t in ipairs(cpu_args) do gpu_args[i] = t:cuda() end
      local want = message_of(function() local r = fn(unpack(cpu_args)) return r end)
      local got = message_of(function() local r = fn(unpack(gpu_args)) return r end)
      assert.are.equal(want, got)
      return got
    end

    it("are the CPU's for shapes that do not fit", function()
      local mm = function(a, b) return a:matmul(b) end
      local bmm = function(a, b) return a:bmm(b) end
      assert.truthy(same_error(mm, tn.zeros(2, 3), tn.zeros(4, 5)):find("cannot be multiplied", 1, true))
      assert.truthy(same_error(mm, tn.zeros(2, 2, 3), tn.zeros(3, 3, 4)):find("not broadcastable", 1, true))
      assert.truthy(same_error(mm, tn.zeros(3), tn.zeros(4)):find("matmul", 1, true))
      assert.truthy(same_error(bmm, tn.zeros(2, 3), tn.zeros(3, 2)):find("bmm: expected 3-D", 1, true))
      assert.truthy(same_error(bmm, tn.zeros(2, 2, 3), tn.zeros(3, 3, 4)):find("batch sizes differ", 1, true))
      same_error(bmm, tn.zeros(1, 2, 2), tn.zeros(1, 2, 2, { dtype = "f64" }))
    end)

    it("are the CPU's for integer dtypes", function()
      local OUT = ffi.new("tn_tensor *[1]")
      local a = tn.ones(2, 2, { dtype = "i64" })
      OUT[0] = nil
      assert.are_not.equal(0, C.tn_matmul(OUT, a._c, a._c))
      local want = c_error()
      local ga = a:cuda()
      OUT[0] = nil
      assert.are_not.equal(0, C.tn_matmul(OUT, ga._c, ga._c))
      assert.are.equal(want, c_error())
      assert.truthy(want:find("matmul: i64 is not supported", 1, true))
    end)

    it("are the CPU's for gemm", function()
      local function gemm_error(out, a, b)
        assert.are_not.equal(0, C.tn_gemm(out._c, a._c, b._c, 0, 0, 1, 0))
        return c_error()
      end
      -- each case makes (out, a, b) on a device
      for _, make in ipairs({
        function(d) return tn.zeros(4, 6, d), tn.zeros(4, 5, d), tn.zeros(4, 6, d) end,     -- k mismatch
        function(d) return tn.zeros(4, 7, d), tn.zeros(4, 5, d), tn.zeros(5, 6, d) end,     -- out shape
        function(d) return tn.zeros(6, 4, d):t(), tn.zeros(4, 5, d), tn.zeros(5, 6, d) end, -- out not row-major
        function(d)                                                                       -- out dtype
          return tn.zeros(4, 6, { dtype = "f64", device = d.device }), tn.zeros(4, 5, d), tn.zeros(5, 6, d)
        end,
      }) do
        local want = gemm_error(make({ device = "cpu" }))
        local got = gemm_error(make({ device = "cuda" }))
        assert.are.equal(want, got)
      end
    end)

    it("name both devices when CPU and CUDA tensors meet", function()
      local a, b = tn.zeros(2, 3), tn.zeros(3, 4):cuda()
      assert.truthy(message_of(function() local r = a:matmul(b) return r end)
        :find("matmul: tensors on different devices (cpu and cuda)", 1, true))
      assert.truthy(message_of(function() local r = b:t():bmm(a:view(1, 2, 3)) return r end):find("bmm", 1, true))
      assert.are_not.equal(0, C.tn_gemm(tn.zeros(2, 4)._c, a._c, b._c, 0, 0, 1, 0))
      assert.truthy(c_error():find("gemm: tensors on different devices", 1, true))
    end)
  end)
end)
