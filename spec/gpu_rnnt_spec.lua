-- Specs of tn.rnnt on CUDA (cuda/rnnt.cu, cuda/rnnt_prune.cu behind core/rnnt.c and
-- core/rnnt_prune.c): every op and configuration of spec/rnnt_spec.lua run on the CPU and on GPU
-- copies of the same inputs and compared (simple and smoothed logprobs and losses, prune ranges,
-- do_pruning, the fused pruned_tanh, the pruned and full losses, the mutual-information recursion;
-- regular / modified / constrained; with and without boundaries; delay penalty; f32 and f64),
-- gradients by finite differences in f64 on the GPU, f16 / bf16 logits against f32, and bad
-- input giving the CPU's message at the next synchronisation (the GPU checks values on the device
-- and never reads them back inside an op).
--
-- Every block that needs a GPU is tagged #gpu: a machine without one filters them
-- (--exclude-tags=gpu). The last block checks, on the CPU, that f16 / bf16 logits (read as f32 by
-- the band kernels, no f32 copy) give the f32 results of the same values bit for bit, which is
-- what the GPU's f16 / bf16 comparison builds on.
local h = require "helpers.init"
local tn = h.tn
local rnnt = tn.rnnt
local C = tn.C

local TYPES = { "regular", "modified", "constrained" }
local F64 = { atol = 1e-10, rtol = 1e-9 }
local F32 = { atol = 2e-4, rtol = 2e-4 }

local function i64(rows) return tn.tensor(rows, { dtype = "i64" }) end
local function leaf(t) return t:detach():clone():requires_grad(true) end
local function gpu(t) return t and t:cuda() or nil end

-- a random case on the CPU in dtype dt (f64 default); boundary nil unless with_boundary
local function random_case(seed, B, T, S, Cn, ty, with_boundary, dt, dp)
  math.randomseed(seed)
  tn.manual_seed(seed)
  local term = seed % Cn
  local sym = {}
  for b = 1, B do
    sym[b] = {}
    for s = 1, S do
      local v = math.random(0, Cn - 2)
      sym[b][s] = v >= term and v + 1 or v
    end
  end
  dt = dt or "f64"
  local rows = with_boundary and h.rnnt_boundary_rows(B, S, T, ty) or nil
  return {
    lm = tn.randn({ B, S + 1, Cn }, { dtype = dt }),
    am = tn.randn({ B, T, Cn }, { dtype = dt }),
    logits = tn.randn({ B, T, S + 1, Cn }, { dtype = dt }),
    symbols = S > 0 and i64(sym) or tn.zeros({ B, 0 }, { dtype = "i64" }),
    boundary = rows and i64(rows) or nil, rows = rows,
    termination_symbol = term, rnnt_type = ty, delay_penalty = dp or 0.5,
  }
end

-- the case's keyword arguments on the CPU (dev nil) or on the GPU (dev "cuda")
local function args_of(c, dev, extra)
  local mv = dev and gpu or function(t) return t end
  local a = { symbols = mv(c.symbols), termination_symbol = c.termination_symbol, boundary = c.boundary and mv(c.boundary),
    rnnt_type = c.rnnt_type, delay_penalty = c.delay_penalty }
  for k, v in pairs(extra or {}) do a[k] = v end
  return a
end

local function near(expected, actual, tol, what)
  assert.are.equal("cuda", actual:device(), (what or "result") .. " is not on the GPU")
  assert.tensor_near(expected, actual:cpu(), tol)
end

local function same_values(expected, actual)
  assert.are.same(h.values_of(expected), h.values_of(actual:cpu()))
end

-- fixed weights for a weighted sum of per-utterance losses
local function weights(B, dt) return tn.arange(B, { dtype = dt }) + 1 end

-- The CPU's error for fn(nil) and the GPU's for fn("cuda") raised at tn.cuda.synchronize(): the
-- GPU call itself returns, and the message raised at the sync contains the CPU's C message (the
-- part after the Lua function's name) and part.
local function same_error_at_sync(fn, part)
  tn.cuda.synchronize()
  local ok1, e1 = pcall(fn, nil)
  assert.is_false(ok1, "the CPU call did not fail")
  e1 = tostring(e1):gsub("^[^\n]-:%d+: ", "")
  local cpart = e1:gsub("^rnnt[%.%w_]*: ", "")
  local ok2, e2 = pcall(fn, "cuda")
  if ok2 then
    ok2, e2 = pcall(tn.cuda.synchronize)
  end
  assert.is_false(ok2, "the GPU call did not fail, neither at the call nor at the next synchronisation")
  e2 = tostring(e2)
  assert.truthy(e2:find(cpart, 1, true), "'" .. e2 .. "' does not contain the CPU's '" .. cpart .. "'")
  if part then assert.truthy(e2:find(part, 1, true), "'" .. e2 .. "' does not contain '" .. part .. "'") end
  tn.cuda.synchronize() -- raised once: the next sync is clean
  return e2
end

-- Finite differences of the scalar f(x) (x an f64 GPU tensor) at n random entries against the
-- autograd gradient, on the GPU.
local function fd_check(f, x, n, seed)
  math.randomseed(seed)
  local xl = leaf(x)
  f(xl):backward()
  local grad = xl.grad:cpu():contiguous():reshape(-1)
  local base = x:detach():cpu():contiguous()
  local numel, eps = base:numel(), 1e-6
  for _ = 1, n do
    local i = math.random(1, numel)
    local v = base:reshape(-1):get({ i })
    local xp, xm = base:clone(), base:clone()
    xp:reshape(-1):set({ i }, v + eps)
    xm:reshape(-1):set({ i }, v - eps)
    local lp = tn.no_grad(function() return f(xp:cuda()):item() end)
    local lmn = tn.no_grad(function() return f(xm:cuda()):item() end)
    local num, ana = (lp - lmn) / (2 * eps), grad:get({ i })
    assert.is_true(math.abs(num - ana) <= 1e-5 + 1e-5 * math.abs(num),
      ("entry %d: finite difference %.10g, gradient %.10g"):format(i, num, ana))
  end
end

describe("tn.rnnt on CUDA #gpu", function()
  local tf32_before
  setup(function()
    tf32_before = tn.cuda.get_tf32()
    tn.cuda.set_tf32(false) -- the simple logprobs' normaliser is a GEMM: compare without TF32
  end)
  teardown(function() tn.cuda.set_tf32(tf32_before) end)

  for ti, ty in ipairs(TYPES) do
    for _, bd in ipairs({ false, true }) do
      for _, dt in ipairs({ "f64", "f32" }) do
        local tol = dt == "f64" and F64 or F32
        describe(("%s, %s, %s"):format(ty, bd and "boundary" or "no boundary", dt), function()
          local function case(seed) return random_case(seed + 10 * ti, 3, 7, 4, 6, ty, bd, dt) end

          it("get_logprobs gives the CPU's px and py", function()
            local c = case(1)
            local px, py = rnnt.get_logprobs(args_of(c, nil, { lm = c.lm, am = c.am }))
            local gx, gy = rnnt.get_logprobs(args_of(c, "cuda", { lm = gpu(c.lm), am = gpu(c.am) }))
            near(px, gx, tol, "px")
            near(py, gy, tol, "py")
          end)

          for _, smooth in ipairs({ false, true }) do
            local fn = smooth and rnnt.loss_smoothed or rnnt.loss_simple
            it((smooth and "loss_smoothed" or "loss_simple") .. " gives the CPU's losses, occupations and gradients",
              function()
                local c = case(2)
                local function run(dev)
                  local mv = dev and gpu or function(t) return t end
                  local lm, am = leaf(mv(c.lm)), leaf(mv(c.am))
                  local l, pxg, pyg = fn(args_of(c, dev, { lm = lm, am = am, reduction = "none", return_grad = true }))
                  ;(l * mv(weights(3, dt))):sum():backward()
                  return l, pxg, pyg, lm.grad, am.grad
                end
                local e = { run(nil) }
                local g = { run("cuda") }
                for k, what in ipairs({ "loss", "px_grad", "py_grad", "lm.grad", "am.grad" }) do
                  near(e[k], g[k], tol, what)
                end
              end)
          end

          it("get_prune_ranges gives the CPU's ranges for s_range 2, 3 and 6", function()
            local c = case(3)
            local _, pxg, pyg = rnnt.loss_simple(args_of(c, nil, { lm = c.lm, am = c.am, return_grad = true }))
            for _, sr in ipairs({ 2, 3, 6 }) do
              local r = rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg, boundary = c.boundary, s_range = sr }
              local rg = rnnt.get_prune_ranges{ px_grad = gpu(pxg), py_grad = gpu(pyg), boundary = gpu(c.boundary),
                s_range = sr }
              assert.are.same(r:shape(), rg:shape())
              same_values(r, rg)
              if c.rows then -- host rows: s_range decided without reading the device
                local rt = rnnt.get_prune_ranges{ px_grad = gpu(pxg), py_grad = gpu(pyg), boundary = c.rows, s_range = sr }
                same_values(r, rt)
              end
            end
          end)

          it("do_pruning, pruned_tanh and loss_pruned give the CPU's values and gradients", function()
            local c = case(4)
            local _, pxg, pyg = rnnt.loss_simple(args_of(c, nil, { lm = c.lm, am = c.am, return_grad = true }))
            local ranges = rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg, boundary = c.boundary, s_range = 2 }
            local R = ranges:size(3)
            local w = tn.randn({ 3, 7, R, 6 }, { dtype = dt })
            local lg = tn.randn({ 3, 7, R, 6 }, { dtype = dt })
            local function run(dev)
              local mv = dev and gpu or function(t) return t end
              local am, lm, am2, lm2 = leaf(mv(c.am)), leaf(mv(c.lm)), leaf(mv(c.am)), leaf(mv(c.lm))
              local ap, lp = rnnt.do_pruning{ am = am, lm = lm, ranges = mv(ranges) }
              ;((ap + lp):tanh() * mv(w)):sum():backward()
              local hh = rnnt.pruned_tanh{ am = am2, lm = lm2, ranges = mv(ranges) }
              ;(hh * mv(w)):sum():backward()
              local x = leaf(mv(lg))
              local l, px2, py2 = rnnt.loss_pruned(args_of(c, dev, { logits = x, ranges = mv(ranges), reduction = "none",
                return_grad = true }))
              ;(l * mv(weights(3, dt))):sum():backward()
              return lp, am.grad, lm.grad, hh, am2.grad, lm2.grad, l, px2, py2, x.grad
            end
            local e = { run(nil) }
            local g = { run("cuda") }
            for k, what in ipairs({ "lm_pruned", "do_pruning am.grad", "do_pruning lm.grad", "pruned_tanh",
              "pruned_tanh am.grad", "pruned_tanh lm.grad", "loss_pruned", "px_grad", "py_grad", "logits.grad" }) do
              near(e[k], g[k], tol, what)
            end
          end)

          it("loss gives the CPU's losses and logits gradient, also overwriting the logits", function()
            local c = case(5)
            local function run(dev, overwrite)
              local mv = dev and gpu or function(t) return t end
              local x = leaf(mv(c.logits))
              local y = overwrite and x * 1 or x -- a non-leaf may be overwritten
              local l, pxg, pyg = rnnt.loss(args_of(c, dev, { logits = y, reduction = "none", return_grad = true,
                overwrite_logits = overwrite }))
              ;(l * mv(weights(3, dt))):sum():backward()
              return l, pxg, pyg, x.grad
            end
            for _, ow in ipairs({ false, true }) do
              local e = { run(nil, ow) }
              local g = { run("cuda", ow) }
              for k, what in ipairs({ "loss", "px_grad", "py_grad", "logits.grad" }) do near(e[k], g[k], tol, what) end
            end
          end)

          it("mutual_information_recursion gives the CPU's scores, occupations and gradients", function()
            local c = case(6)
            local px, py = rnnt.get_logprobs(args_of(c, nil, { lm = c.lm, am = c.am }))
            local function run(dev)
              local mv = dev and gpu or function(t) return t end
              local x, y = leaf(mv(px)), leaf(mv(py))
              local s, pxg, pyg = rnnt.mutual_information_recursion{ px = x, py = y, boundary = mv(c.boundary),
                return_grad = true }
              ;(s * mv(weights(3, dt))):sum():backward()
              return s, pxg, pyg, x.grad, y.grad
            end
            local e = { run(nil) }
            local g = { run("cuda") }
            for k, what in ipairs({ "scores", "px_grad", "py_grad", "px.grad", "py.grad" }) do near(e[k], g[k], tol, what) end
          end)
        end)
      end
    end
  end

  it("walks long utterances (waves longer than a block, S beyond the shared-memory waves)", function()
    for _, ty in ipairs(TYPES) do
      for _, shape in ipairs({ { 2, 300, 280 }, { 1, 3200, 3100 } }) do
        local B, T, S = shape[1], shape[2], shape[3]
        tn.manual_seed(7)
        local T0 = ty == "regular" and T + 1 or T
        local px = tn.randn({ B, S, T0 }, { dtype = "f64" }) * 0.1
        local py = tn.randn({ B, S + 1, T }, { dtype = "f64" }) * 0.1
        local s, pxg, pyg = rnnt.mutual_information_recursion{ px = px, py = py, return_grad = true }
        local sg, pxgg, pygg = rnnt.mutual_information_recursion{ px = px:cuda(), py = py:cuda(), return_grad = true }
        near(s, sg, F64, "scores")
        near(pxg, pxgg, F64, "px_grad")
        near(pyg, pygg, F64, "py_grad")
      end
    end
  end)

  it("runs the C backward from the saved table (tn_rnnt_mutual_information_backward) like the CPU", function()
    for _, ty in ipairs(TYPES) do
      local c = random_case(40, 3, 6, 3, 5, ty, true, "f64")
      local px, py = rnnt.get_logprobs(args_of(c, nil, { lm = c.lm, am = c.am }))
      local gs = tn.tensor({ 0.5, -1, 2 }, { dtype = "f64" })
      local function run(dev)
        local mv = dev and gpu or function(t) return t end
        local x, y, b = mv(px), mv(py), mv(c.boundary)
        local s = tn.empty({ 3 }, { dtype = "f64", device = x:device() })
        local p = tn.empty({ 3, 4, 7 }, { dtype = "f64", device = x:device() })
        assert.are.equal(0, C.tn_rnnt_mutual_information(s._c, nil, nil, p._c, x._c, y._c, b._c))
        local gx, gy = x:empty_like(), y:empty_like()
        assert.are.equal(0, C.tn_rnnt_mutual_information_backward(gx._c, gy._c, mv(gs)._c, x._c, y._c, b._c, p._c))
        return s, p, gx, gy
      end
      local e = { run(nil) }
      local g = { run("cuda") }
      for k, what in ipairs({ "scores", "p", "px_grad", "py_grad" }) do near(e[k], g[k], F64, what) end
    end
  end)

  it("handles zero-length targets (S = 0)", function()
    for _, ty in ipairs(TYPES) do
      local c = random_case(50, 2, 5, 0, 4, ty, false, "f64")
      local a = rnnt.loss_simple(args_of(c, nil, { lm = c.lm, am = c.am, reduction = "none" }))
      local b = rnnt.loss_simple(args_of(c, "cuda", { lm = gpu(c.lm), am = gpu(c.am), reduction = "none" }))
      near(a, b, F64, "loss")
      local l = rnnt.loss(args_of(c, nil, { logits = c.logits, reduction = "none" }))
      local lg = rnnt.loss(args_of(c, "cuda", { logits = gpu(c.logits), reduction = "none" }))
      near(l, lg, F64, "full loss")
    end
  end)

  describe("gradients by finite differences (f64, on the GPU)", function()
    for ti, ty in ipairs(TYPES) do
      it(ty .. ": loss_smoothed w.r.t. lm and am, loss w.r.t. logits, loss_pruned, pruned_tanh", function()
        local c = random_case(60 + ti, 2, 5, 3, 4, ty, true, "f64")
        local a = args_of(c, "cuda")
        local lm, am = gpu(c.lm), gpu(c.am)
        local function with(extra)
          local t = {}
          for k, v in pairs(a) do t[k] = v end
          for k, v in pairs(extra) do t[k] = v end
          return t
        end
        fd_check(function(x) return rnnt.loss_smoothed(with({ lm = x, am = am })) end, lm, 6, 1)
        fd_check(function(x) return rnnt.loss_smoothed(with({ lm = lm, am = x })) end, am, 6, 2)
        fd_check(function(x) return rnnt.loss(with({ logits = x })) end, gpu(c.logits), 8, 3)
        local _, pxg, pyg = rnnt.loss_simple(with({ lm = lm, am = am, return_grad = true }))
        local ranges = rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg, boundary = a.boundary, s_range = 2 }
        local lg = tn.randn({ 2, 5, ranges:size(3), 4 }, { dtype = "f64" }):cuda()
        fd_check(function(x) return rnnt.loss_pruned(with({ logits = x, ranges = ranges })) end, lg, 8, 4)
        local w = tn.randn({ 2, 5, ranges:size(3), 4 }, { dtype = "f64" }):cuda()
        fd_check(function(x) return (rnnt.pruned_tanh{ am = x, lm = lm, ranges = ranges } * w):sum() end, am, 6, 5)
        fd_check(function(x) return (rnnt.pruned_tanh{ am = am, lm = x, ranges = ranges } * w):sum() end, lm, 6, 6)
      end)
    end
  end)

  it("takes f16 and bf16 logits (log-softmax and recursion in f32) close to f32", function()
    local c = random_case(70, 3, 6, 3, 8, "regular", true, "f32")
    for _, dt in ipairs({ "f16", "bf16" }) do
      local low = c.logits:to(dt)
      local ref = rnnt.loss(args_of(c, nil, { logits = low:float(), reduction = "none" })) -- the same values in f32
      local x = leaf(gpu(low))
      local l = rnnt.loss(args_of(c, "cuda", { logits = x, reduction = "none" }))
      assert.are.equal("f32", l:dtype())
      near(ref, l, F32, dt .. " loss")
      l:sum():backward()
      assert.are.equal(dt, x.grad:dtype())
      local x32 = leaf(low:float())
      rnnt.loss(args_of(c, nil, { logits = x32, reduction = "none" })):sum():backward()
      assert.tensor_near(x32.grad, x.grad:cpu():float(), { atol = dt == "f16" and 2e-3 or 1.6e-2, rtol = 1e-2 })
    end
  end)

  it("makes every output on the input's device and refuses tensors on two devices", function()
    local c = random_case(80, 2, 5, 3, 4, "regular", true, "f32")
    local l, pxg, pyg = rnnt.loss_simple(args_of(c, "cuda", { lm = gpu(c.lm), am = gpu(c.am), return_grad = true }))
    for _, t in ipairs({ l, pxg, pyg }) do assert.are.equal("cuda", t:device()) end
    local r = rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg, s_range = 2 }
    assert.are.equal("cuda", r:device())
    local ok, err = pcall(rnnt.loss_simple, args_of(c, nil, { lm = gpu(c.lm), am = gpu(c.am) }))
    assert.is_false(ok)
    assert.truthy(tostring(err):find("one device", 1, true), tostring(err))
    -- the C entry point checks it as well
    local s = tn.empty({ 2 }):cuda()
    local px, py = tn.zeros({ 2, 3, 6 }):cuda(), tn.zeros({ 2, 4, 5 })
    assert.are_not.equal(0, C.tn_rnnt_mutual_information(s._c, nil, nil, nil, px._c, py._c, nil))
  end)

  describe("errors equal to the CPU's, raised at the next synchronisation", function()
    local c = random_case(90, 2, 5, 3, 4, "regular", false, "f64")
    local function simple(dev, extra)
      local mv = dev and gpu or function(t) return t end
      local a = args_of(c, dev, { lm = mv(c.lm), am = mv(c.am) })
      for k, v in pairs(extra or {}) do a[k] = dev and tn.is_tensor(v) and v:cuda() or v end
      return rnnt.loss_simple(a)
    end

    it("names symbols out of [0, C)", function()
      same_error_at_sync(function(dev) return simple(dev, { symbols = i64({ { 0, 1, 4 }, { 1, 2, 3 } }) }) end,
        "symbols at position")
      same_error_at_sync(function(dev)
        local mv = dev and gpu or function(t) return t end
        return rnnt.loss(args_of(c, dev, { logits = mv(c.logits), symbols = mv(i64({ { 0, -1, 2 }, { 1, 2, 3 } })) }))
      end, "is -1")
    end)

    it("names boundaries outside the tensors and T_b < S_b for modified", function()
      same_error_at_sync(function(dev) return simple(dev, { boundary = i64({ { 0, 0, 4, 5 }, { 0, 0, 3, 5 } }) }) end,
        "boundary row")
      same_error_at_sync(function(dev) return simple(dev, { boundary = i64({ { 0, 0, 3, 5 }, { 0, 3, 3, 2 } }) }) end,
        "boundary row")
      same_error_at_sync(function(dev)
        return simple(dev, { rnnt_type = "modified", boundary = i64({ { 0, 0, 3, 2 }, { 0, 0, 1, 5 } }) })
      end, "frames")
    end)

    it("names NaN and infinite inputs", function()
      local bad = c.lm:clone()
      bad:set({ 1, 2, 3 }, 0 / 0)
      same_error_at_sync(function(dev)
        return rnnt.loss_simple(args_of(c, dev, { lm = dev and bad:cuda() or bad, am = dev and gpu(c.am) or c.am }))
      end, "lm row")
      local lg = c.logits:clone()
      lg:set({ 2, 3, 2, 2 }, math.huge)
      same_error_at_sync(function(dev) return rnnt.loss(args_of(c, dev, { logits = dev and lg:cuda() or lg })) end,
        "logits row")
      local px, py = rnnt.get_logprobs{ lm = c.lm, am = c.am, symbols = c.symbols, termination_symbol = c.termination_symbol }
      local pxn = px:clone()
      pxn:set({ 1, 2, 2 }, 0 / 0)
      same_error_at_sync(function(dev)
        return rnnt.mutual_information_recursion{ px = dev and pxn:cuda() or pxn, py = dev and py:cuda() or py }
      end, "px at position")
      local pyi = py:clone()
      pyi:set({ 2, 1, 3 }, math.huge)
      same_error_at_sync(function(dev)
        return rnnt.mutual_information_recursion{ px = dev and px:cuda() or px, py = dev and pyi:cuda() or pyi }
      end, "+inf")
    end)

    it("names ranges that are not a band inside [0, S] and a wrong s_range", function()
      local r = tn.zeros({ 2, 5, 2 }, { dtype = "i64" }) + tn.arange(2, { dtype = "i64" })
      r:set({ 1, 3, 2 }, 4)
      local lg2 = c.logits:narrow(3, 1, 2):contiguous()
      same_error_at_sync(function(dev)
        local mv = dev and gpu or function(t) return t end
        return rnnt.loss_pruned(args_of(c, dev, { logits = mv(lg2), ranges = mv(r) }))
      end, "ranges at")
      local r9 = r:clone()
      r9:set({ 1, 3, 2 }, 9)
      for _, fn in ipairs({ rnnt.do_pruning, rnnt.pruned_tanh }) do
        same_error_at_sync(function(dev)
          local mv = dev and gpu or function(t) return t end
          return fn{ am = mv(c.am), lm = mv(c.lm), ranges = mv(r9) }
        end, "is 9")
      end
      -- a ranges tensor narrower than tn_rnnt_prune_s_range allows, through the C API
      local _, pxg, pyg = simple(nil, { return_grad = true })
      local bnd = i64({ { 0, 0, 3, 1 }, { 0, 0, 3, 5 } }) -- 3 symbols in 1 frame: s_range >= 4
      same_error_at_sync(function(dev)
        local mv = dev and gpu or function(t) return t end
        local rr = tn.empty({ 2, 5, 2 }, { dtype = "i64", device = dev or "cpu" })
        local st = C.tn_rnnt_prune_ranges(rr._c, mv(pxg)._c, mv(pyg)._c, mv(bnd)._c)
        if st ~= 0 then error("rnnt.get_prune_ranges: " .. require("ffi").string(C.tn_last_error()), 0) end
        return rr
      end, "s_range 2")
    end)
  end)
end)

describe("tn.rnnt f16 / bf16 logits on the CPU", function()
  local g = require "helpers.gpu"
  for _, ty in ipairs(TYPES) do
    it(ty .. ": loss and loss_pruned on f16 / bf16 logits equal f32 on the same values, bit for bit", function()
      local c = random_case(95, 2, 6, 3, 7, ty, true, "f32", 0.3)
      local r = tn.zeros({ 2, 6, 2 }, { dtype = "i64" }) + tn.arange(2, { dtype = "i64" })
      for _, dt in ipairs({ "f16", "bf16" }) do
        for _, pruned in ipairs({ false, true }) do
          local low = pruned and c.logits:narrow(3, 1, 2):contiguous():to(dt) or c.logits:to(dt)
          local function run(x)
            local a = args_of(c, nil, { logits = x, reduction = "none" })
            if pruned then a.ranges = r end
            local l = (pruned and rnnt.loss_pruned or rnnt.loss)(a)
            l:sum():backward()
            return l
          end
          local x, y = leaf(low), leaf(low:float())
          local lx, ly = run(x), run(y)
          assert.are.equal("f32", lx:dtype())
          assert.are.equal(dt, x.grad:dtype())
          g.same_bits(ly, lx, dt .. " loss")
          g.same_bits(y.grad:to(dt), x.grad, dt .. " logits gradient")
        end
      end
    end)
  end
end)
