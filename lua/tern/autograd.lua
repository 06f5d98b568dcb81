-- tern.autograd: reverse-mode differentiation recorded in Lua.
--
-- Each differentiable op that sees an input requiring grad attaches a node to its output:
-- node.fn(grad_out, node.ctx) returns the gradients of its inputs (in order, nil where none);
-- fn is a top-level function and ctx the values it saved (no closure per op: creating closures
-- would stop LuaJIT from compiling the op's trace). node.edges
-- holds for each input either the producing node, the leaf tensor (to accumulate into .grad),
-- or false. Nodes carry increasing ids, so sorting the reachable nodes by id (descending) is a
-- topological order: backward walks that tape once. The graph hangs off the output tensors, so
-- a graph that is never differentiated dies with its tensors, and backward() drops every
-- closure (and with it the saved tensors) it has run unless retain_graph is set.
--
-- Gradients are computed with recording off: no higher-order gradients.
local lib = require "tern.lib"

local M = {}

local enabled = true
local next_id = 0

function M.is_enabled() return enabled end

function M.set_enabled(on)
  local prev = enabled
  enabled = not not on
  return prev
end

-- Run fn(...) with recording set to mode; restores the mode even when fn raises.
local function with_mode(mode, opname, fn, ...)
  if type(fn) ~= "function" then
    error(opname .. ": expected a function, got " .. type(fn), 3)
  end
  local prev = enabled
  enabled = mode
  local res = { n = 0 }
  local function collect(ok, ...)
    res.n = select("#", ...)
    for i = 1, res.n do res[i] = select(i, ...) end
    return ok
  end
  local ok = collect(pcall(fn, ...))
  enabled = prev
  if not ok then error(res[1], 0) end
  return unpack(res, 1, res.n)
end

-- tn.no_grad(fn, ...): run fn with recording off; returns fn's results.
function M.no_grad(fn, ...) return with_mode(false, "no_grad", fn, ...) end
-- tn.enable_grad(fn, ...): run fn with recording on (inside a no_grad region).
function M.enable_grad(fn, ...) return with_mode(true, "enable_grad", fn, ...) end

-- Does tensor t take part in differentiation?
local function needs(t)
  return t ~= nil and (t._node ~= nil or t._rg == true)
end
M.needs = needs

-- Record that out was computed from inputs (tensors or other values) by an op whose gradient
-- is fn(grad_out, ctx) -> grad_1, grad_2, ... . Does nothing when recording is off or no input
-- needs grad. Returns out.
function M.record(out, name, fn, ctx, ...)
  if not enabled then return out end
  local node = M.make_node(name, fn, ctx, ...)
  if node then out._node = node end
  return out
end

-- A node for inputs ... (nil when none needs grad). edges[i] is the producing node, the leaf
-- tensor, or false; eidx[i] the output index of a multi-output producer (nil otherwise).
function M.make_node(name, fn, ctx, ...)
  local n = select("#", ...)
  local edges, eidx, any = {}, nil, false
  for i = 1, n do
    local t = select(i, ...)
    if type(t) == "table" and t._c ~= nil and needs(t) then
      local nd = t._node
      edges[i] = nd or t
      if nd and nd.nout then
        eidx = eidx or {}
        eidx[i] = t._oi
      end
      any = true
    else
      edges[i] = false
    end
  end
  if not any then return nil end
  next_id = next_id + 1
  return { id = next_id, name = name, fn = fn, ctx = ctx, edges = edges, eidx = eidx, nedges = n }
end

-- Record an op with several outputs (a list of tensors; nil entries allowed): its gradient is
-- fn(grads, ctx) where grads[i] is the gradient of output i or nil when none reached it.
function M.record_multi(outs, name, fn, ctx, ...)
  if not enabled then return end
  local node = M.make_node(name, fn, ctx, ...)
  if not node then return end
  node.nout = table.maxn(outs)
  for i = 1, node.nout do
    local o = outs[i]
    if o then
      o._node = node
      o._oi = i
    end
  end
end

-- Accumulate g into a leaf's .grad: in place when a .grad exists (it may be a view into a
-- flat gradient buffer), else a private copy in the leaf's dtype.
local function accumulate_leaf(leaf, g)
  if g._c.dtype ~= leaf._c.dtype then g = g:to(leaf._c.dtype) end
  local cur = rawget(leaf, "grad")
  if cur then
    cur:add_(g)
  else
    rawset(leaf, "grad", g:clone())
  end
end

local shape_equal = lib.same_shape

-- Backward from root with seed gradient grad (defaults to 1 for a one-element root).
function M.backward(root, grad, opts)
  local retain = opts and opts.retain_graph
  if grad == nil then
    if root:numel() ~= 1 then
      error(string.format("backward: grad can be implicit only for a one-element output, got shape %s; pass a gradient of that shape",
        root:shape_string()), 2) -- tail-called by Tensor.backward
    end
    grad = root:ones_like()
  elseif not shape_equal(grad._c, root._c) then
    error(string.format("backward: gradient of shape %s given for output of shape %s",
      grad:shape_string(), root:shape_string()), 2)
  elseif grad._c.device ~= root._c.device then
    error(string.format("backward: the gradient is on %s but the output is on %s; pass it on %s",
      grad:device(), root:device(), root:device()), 2)
  end
  local node = root._node
  local seed = grad
  if node and node.nout then seed = { [root._oi] = grad } end
  if not node then
    if root._rg then
      local prev = enabled
      enabled = false
      local ok, err = pcall(accumulate_leaf, root, grad)
      if ok and rawget(root, "_on_grad") then ok, err = pcall(rawget(root, "_on_grad"), root) end
      enabled = prev
      if not ok then error(err, 0) end
      return
    end
    error("backward: tensor does not require grad and has no grad_fn "
      .. "(call :requires_grad(true) on a leaf it was computed from)", 2)
  end

  -- reachable nodes, sorted by id: the tape in reverse
  local nodes, seen, stack = {}, {}, { node }
  while #stack > 0 do
    local nd = stack[#stack]
    stack[#stack] = nil
    if not seen[nd] then
      seen[nd] = true
      nodes[#nodes + 1] = nd
      local edges = nd.edges
      if edges then
        for i = 1, nd.nedges do
          local e = edges[i]
          if e and e._c == nil then stack[#stack + 1] = e end
        end
      end
    end
  end
  table.sort(nodes, function(x, y) return x.id > y.id end)

  -- leaves with a grad-ready hook (M.on_grad_ready): fire[k] lists the leaves whose last (in
  -- tape order) feeding node is nodes[k], in edge order, so the hooks run as soon as that
  -- node's gradients are accumulated, in the same order on every rank of a data-parallel job
  local fire, last, seen_edges
  for k = 1, #nodes do
    local nd = nodes[k]
    local edges = nd.edges
    if edges then
      for i = 1, nd.nedges do
        local e = edges[i]
        if e and e._c ~= nil and rawget(e, "_on_grad") then
          if not last then last, seen_edges = {}, {} end
          last[e] = k
          seen_edges[#seen_edges + 1] = k
          seen_edges[#seen_edges + 1] = e
        end
      end
    end
  end
  if last then
    fire = {}
    for j = 1, #seen_edges, 2 do
      local k, e = seen_edges[j], seen_edges[j + 1]
      if last[e] == k then
        last[e] = nil -- listed once
        local at = fire[k]
        if not at then at = {}; fire[k] = at end
        at[#at + 1] = e
      end
    end
  end

  local prev = enabled
  enabled = false
  local ok, err = pcall(function()
    local grads = { [node] = seed }
    for k = 1, #nodes do
      local nd = nodes[k]
      local g = grads[nd]
      grads[nd] = nil
      if g then
        if not nd.fn then
          error("backward: the graph through '" .. nd.name .. "' was freed by an earlier "
            .. "backward(); pass {retain_graph=true} to the first call to keep it", 0)
        end
        local results = { nd.fn(g, nd.ctx) }
        local edges, eidx = nd.edges, nd.eidx
        for i = 1, nd.nedges do
          local e, gi = edges[i], results[i]
          if e and gi then
            if e._c ~= nil then
              accumulate_leaf(e, gi)
            elseif e.nout then
              local k = eidx[i]
              local gt = grads[e]
              if not gt then gt = {}; grads[e] = gt end
              local cur = gt[k]
              gt[k] = cur and cur + gi or gi
            else
              local cur = grads[e]
              grads[e] = cur and cur + gi or gi
            end
          end
        end
      end
      local at = fire and fire[k]
      if at then
        for i = 1, #at do rawget(at[i], "_on_grad")(at[i]) end
      end
      if not retain then
        nd.fn = nil
        nd.ctx = nil
        nd.edges = nil
        nd.eidx = nil
        nd.nedges = 0
      end
    end
  end)
  enabled = prev
  if not ok then error(err, 0) end
end

-- on_grad_ready(leaf, fn): fn(leaf) runs during every backward() that reaches leaf, once, as
-- soon as its .grad holds that backward's whole gradient (after the last node feeding it),
-- with recording off; the data-parallel optimizer starts a bucket's allreduce from it while
-- backward goes on. fn nil removes the hook. Hooks run in a fixed order: by node in tape
-- order, then by the node's input order.
function M.on_grad_ready(leaf, fn)
  if type(leaf) ~= "table" or leaf._c == nil then
    error("on_grad_ready: leaf must be a tensor, got " .. type(leaf), 2)
  end
  if fn ~= nil and type(fn) ~= "function" then
    error("on_grad_ready: fn must be a function or nil, got " .. type(fn), 2)
  end
  rawset(leaf, "_on_grad", fn)
end

-- gradcheck(fn, inputs, opts): compare the Jacobian that backward() gives with central finite
-- differences, for every output element and every input element that requires grad. Inputs
-- that require grad must be f64. Returns true, or raises (opts.raise == false: returns false
-- and the message) naming the input, the element, both values.
-- opts: eps = 1e-6, atol = 1e-5, rtol = 1e-3, raise = true.
-- Inputs and outputs may live on a device: values are read through CPU copies and the
-- perturbations written with t:set (no device pointer is dereferenced).
function M.gradcheck(fn, inputs, opts)
  opts = opts or {}
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-3
  local ffi = require "ffi"
  -- f64 values of tensor t, contiguous and on the CPU (t itself when it already is)
  local function host_f64(t)
    local c = t:detach():double()
    if c:device() ~= "cpu" then c = c:cpu() end
    return c:contiguous()
  end
  local function fail(msg)
    if opts.raise == false then return false, msg end
    error("gradcheck: " .. msg, 3)
  end
  local wrt = {}
  for i, x in ipairs(inputs) do
    if type(x) == "table" and x._c ~= nil and x._rg then
      if x:dtype() ~= "f64" then
        return fail(string.format("input %d is %s; gradcheck needs f64 inputs", i, x:dtype()))
      end
      if not x:is_contiguous() then
        return fail(string.format("input %d is not contiguous", i))
      end
      wrt[#wrt + 1] = i
    end
  end
  if #wrt == 0 then return fail("no input requires grad") end

  local function outputs()
    local res = { fn(unpack(inputs, 1, #inputs)) }
    local outs = {}
    for _, r in ipairs(res) do
      if type(r) == "table" and r._c ~= nil then outs[#outs + 1] = r end
    end
    return outs
  end
  local function flat_values(outs)
    local vals = {}
    M.no_grad(function()
      for _, o in ipairs(outs) do
        local c = host_f64(o)
        vals.keep = c -- c stays alive while p is read
        local p = ffi.cast("double *", c._c.data)
        for j = 0, c:numel() - 1 do vals[#vals + 1] = tonumber(p[j]) end
      end
    end)
    return vals
  end

  -- analytic: one backward per output element
  local outs = outputs()
  if #outs == 0 then return fail("fn returned no tensor") end
  local nout = 0
  for _, o in ipairs(outs) do nout = nout + o:numel() end
  local analytic = {} -- analytic[w][k][j] = d out_j / d in_k
  for w = 1, #wrt do analytic[w] = {} end
  local j = 0
  for oi, o in ipairs(outs) do
    for e = 0, o:numel() - 1 do
      j = j + 1
      for _, idx in ipairs(wrt) do rawset(inputs[idx], "grad", nil) end
      local seed = M.no_grad(function()
        local s = o:zeros_like()
        s:view(-1):set({ e + 1 }, 1)
        return s
      end)
      if o._node or o._rg then
        M.backward(o, seed, { retain_graph = true })
      end
      for w, idx in ipairs(wrt) do
        local g = rawget(inputs[idx], "grad")
        local col = analytic[w]
        if g then
          local gc = M.no_grad(host_f64, g)
          col.keep = gc -- gc stays alive while p is read
          local p = ffi.cast("double *", gc._c.data)
          for k = 0, gc:numel() - 1 do
            col[k + 1] = col[k + 1] or {}
            col[k + 1][j] = p[k]
          end
        end
      end
    end
    outs[oi] = nil
  end
  for _, idx in ipairs(wrt) do rawset(inputs[idx], "grad", nil) end

  -- numeric: central differences
  for w, idx in ipairs(wrt) do
    local x = inputs[idx]
    -- element k of x (contiguous f64): through its pointer on the CPU, t:get/t:set elsewhere
    local xp, flat = nil, x:detach():view(-1)
    if x:device() == "cpu" then xp = ffi.cast("double *", x._c.data) end
    local function get(k) if xp then return xp[k] end return flat:get({ k + 1 }) end
    local function set(k, v) if xp then xp[k] = v else flat:set({ k + 1 }, v) end end
    for k = 0, x:numel() - 1 do
      local orig = get(k)
      set(k, orig + eps)
      local plus = M.no_grad(function() return flat_values(outputs()) end)
      set(k, orig - eps)
      local minus = M.no_grad(function() return flat_values(outputs()) end)
      set(k, orig)
      for jj = 1, nout do
        local num = (plus[jj] - minus[jj]) / (2 * eps)
        local ana = analytic[w][k + 1] and analytic[w][k + 1][jj] or 0
        if not (math.abs(ana - num) <= atol + rtol * math.abs(num)) then
          return fail(string.format(
            "Jacobian mismatch for input %d, element %d, output element %d: analytic %.10g, numeric %.10g",
            idx, k + 1, jj, ana, num))
        end
      end
    end
  end
  return true
end

return M
