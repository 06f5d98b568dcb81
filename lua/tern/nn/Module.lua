-- tern.nn.Module: the base of every layer. A module owns named parameters (leaf tensors that
-- require grad), named buffers (state that is saved but not trained, e.g. running statistics)
-- and named child modules, all in registration order.
--
-- Parameters live in one flat buffer per (dtype, device): each parameter (and its .grad) is a
-- view into that buffer, so an optimizer, a gradient clip or an allreduce touches one tensor.
-- flat_buffers() builds (or re-uses) the buffers of a whole module tree; the Lua parameter
-- objects keep their identity when they are moved into a buffer.
--
-- Subclasses: local Linear = Module:extend("Linear"); function Linear:init(...) ... end;
-- function Linear:forward(x) ... end; optional Linear:extra_repr() for printing.
local lib = require "tern.lib"
local Tensor = require "tern.tensor"
local autograd = require "tern.autograd"

local C = lib.C
local fmt = string.format

local Module = { __name = "Module" }
Module.__index = Module

local function instance_mt(cls)
  return {
    __index = cls,
    __call = function(self, ...) return self:forward(...) end,
    __tostring = function(self) return self:repr() end,
  }
end
Module._mt = instance_mt(Module)

-- Create a subclass. Calling the class constructs an instance and runs init(self, ...).
function Module.extend(parent, name)
  local cls = setmetatable({ __name = name, _parent = parent }, {
    __index = parent,
    __call = function(c, ...) return c.new(c, ...) end,
    __tostring = function() return "tern.nn." .. name end,
  })
  cls._mt = instance_mt(cls)
  return cls
end

function Module.new(cls, ...)
  local self = setmetatable({
    training = true,
    _param_names = {}, _params = {},
    _buffer_names = {}, _buffers = {},
    _module_names = {}, _modules = {},
  }, cls._mt)
  if cls.init then cls.init(self, ...) end
  return self
end

function Module.is_module(x)
  return type(x) == "table" and type(x._modules) == "table" and type(x.forward) == "function"
end

-- Constructor argument check shared by the layers: v must be an integer >= min (0 or 1).
-- Raises "<Layer>: <name> must be a positive integer, got <v>" at the constructor's caller.
function Module.check_int(layer, name, v, min)
  if type(v) ~= "number" or v ~= math.floor(v) or v < min then
    error(fmt("%s: %s must be a %s integer, got %s", layer, name,
      min > 0 and "positive" or "non-negative", tostring(v)), 4)
  end
  return v
end

function Module:forward()
  error(self.__name .. ": forward() is not defined for this module", 2)
end

-- registration ---------------------------------------------------------------------------------

local function check_name(self, name, what)
  if type(name) ~= "string" or name == "" or name:find("%.") then
    error(fmt("%s: %s name must be a non-empty string without '.', got %s", self.__name, what,
      tostring(name)), 4)
  end
end

-- Store value under name in the registry of one kind (ordered names + map), and as a field.
local function register(self, kind, name, value, valid, what)
  check_name(self, name, what)
  if value ~= nil and not valid(value) then
    error(fmt("%s: %s '%s' must be a %s, got %s", self.__name, what, name,
      what == "child" and "module" or "tensor", type(value)), 3)
  end
  local map, names = self["_" .. kind], self["_" .. kind:gsub("s$", "") .. "_names"]
  if map[name] == nil then table.insert(names, name) end
  map[name] = value or false
  rawset(self, name, value)
  return value
end

-- Register tensor t as parameter name (it becomes a leaf requiring grad); nil removes it.
function Module:register_parameter(name, t)
  if Tensor.is_tensor(t) and not t:requires_grad() and t:is_floating_point() then
    t:requires_grad(true)
  end
  return register(self, "params", name, t, Tensor.is_tensor, "parameter")
end

-- Register tensor t as buffer name: saved in state_dict, moved by to(), not trained.
function Module:register_buffer(name, t)
  return register(self, "buffers", name, t, Tensor.is_tensor, "buffer")
end

function Module:add_module(name, m)
  return register(self, "modules", name, m, Module.is_module, "child")
end

-- traversal ------------------------------------------------------------------------------------

-- Iterate (name, child) over direct children in order.
function Module:named_children()
  local i = 0
  return function()
    while true do
      i = i + 1
      local name = self._module_names[i]
      if not name then return nil end
      local m = self._modules[name]
      if m then return name, m end
    end
  end
end

function Module:children()
  local r = {}
  for _, m in self:named_children() do r[#r + 1] = m end
  return r
end

-- Iterator over a list of {name, value} entries: for name, value in each_pair(list).
local function each_pair(list)
  local i = 0
  return function()
    i = i + 1
    local e = list[i]
    if e then return e[1], e[2] end
  end
end

-- All modules of the tree (self first), as a list of {name, module}.
local function collect_modules(m, prefix, out, seen)
  if seen[m] then return end
  seen[m] = true
  out[#out + 1] = { prefix, m }
  for name, child in m:named_children() do
    collect_modules(child, prefix == "" and name or prefix .. "." .. name, out, seen)
  end
end

function Module:named_modules()
  local list = {}
  collect_modules(self, "", list, {})
  return each_pair(list)
end

function Module:modules()
  local r = {}
  for _, m in self:named_modules() do r[#r + 1] = m end
  return r
end

-- Ordered list of {dotted name, tensor} for parameters (kind "_params") or buffers.
local function collect_tensors(self, kind, names_field)
  local list, seen = {}, {}
  for prefix, m in self:named_modules() do
    for _, name in ipairs(m[names_field]) do
      local t = m[kind][name]
      if t and not seen[t] then
        seen[t] = true
        list[#list + 1] = { prefix == "" and name or prefix .. "." .. name, t }
      end
    end
  end
  return list
end

-- for name, p in model:named_parameters() do ... end (ordered, shared tensors once)
function Module:named_parameters()
  local list = collect_tensors(self, "_params", "_param_names")
  return each_pair(list)
end

function Module:parameters()
  local r = {}
  for _, e in ipairs(collect_tensors(self, "_params", "_param_names")) do r[#r + 1] = e[2] end
  return r
end

function Module:named_buffers()
  local list = collect_tensors(self, "_buffers", "_buffer_names")
  return each_pair(list)
end

function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

-- Call fn(module) on every module of the tree (children first, as PyTorch's apply).
function Module:apply(fn)
  for _, child in self:named_children() do child:apply(fn) end
  fn(self)
  return self
end

-- modes ------------------------------------------------------------------------------------------

function Module:train(mode)
  if mode == nil then mode = true end
  for _, m in ipairs(self:modules()) do m.training = not not mode end
  return self
end

function Module:eval() return self:train(false) end

-- flat parameter buffers ---------------------------------------------------------------------

-- Move tensor object p onto the storage of view v (v's cdata now belongs to p).
local function rebind(p, v)
  rawset(p, "_c", v._c)
end

local function group_key(p) return p._c.dtype * 16 + p._c.device end

-- Are the params of group g laid out back to back in g.data, in order?
local function still_flat(g)
  local base = g.data._c.data
  local es = tonumber(C.tn_dtype_size(g.data._c.dtype))
  local off = 0
  for _, p in ipairs(g.params) do
    local c = p._c
    if c.data ~= base + off * es or not p:is_contiguous() then return false end
    local gr = rawget(p, "grad")
    if not gr or gr._c.data ~= g.grad._c.data + off * es then return false end
    off = off + p:numel()
  end
  return off == g.data:numel()
end

-- Returns the flat buffers of this module tree: a list of groups
-- { dtype =, device =, data = 1-d tensor, grad = 1-d tensor, params = {...}, names = {...} },
-- building them when the parameters are not laid out in one buffer per (dtype, device) yet.
-- Existing gradients are kept; parameters without one get zeros.
function Module:flat_buffers()
  local named = collect_tensors(self, "_params", "_param_names")
  local groups, order = {}, {}
  for _, e in ipairs(named) do
    local p = e[2]
    local key = group_key(p)
    local g = groups[key]
    if not g then
      g = { dtype = p:dtype(), device = p:device(), params = {}, names = {} }
      groups[key] = g
      order[#order + 1] = key
    end
    g.params[#g.params + 1] = p
    g.names[#g.names + 1] = e[1]
  end
  local cached = rawget(self, "_flat")
  local result = {}
  for _, key in ipairs(order) do
    local g = groups[key]
    local old = cached and cached[key]
    if old and #old.params == #g.params then
      local same = true
      for i, p in ipairs(g.params) do if old.params[i] ~= p then same = false break end end
      if same and still_flat(old) then g = old end
    end
    if g ~= old then
      local total = 0
      for _, p in ipairs(g.params) do total = total + p:numel() end
      autograd.no_grad(function()
        g.data = Tensor.empty({ total }, { dtype = g.dtype, device = g.device })
        g.grad = Tensor.zeros({ total }, { dtype = g.dtype, device = g.device })
        local off = 1
        for _, p in ipairs(g.params) do
          local n = p:numel()
          local shape = p:shape()
          local v = g.data:narrow(1, off, n):view(shape)
          v:copy_(p:detach())
          local gv = g.grad:narrow(1, off, n):view(shape)
          local oldgrad = rawget(p, "grad")
          if oldgrad then gv:copy_(oldgrad) end
          rebind(p, v)
          rawset(p, "grad", gv)
          off = off + n
        end
      end)
    end
    result[#result + 1] = g
    result[key] = g
  end
  rawset(self, "_flat", result)
  return result
end

-- Zero every gradient (one fill per flat buffer).
function Module:zero_grad()
  for _, g in ipairs(self:flat_buffers()) do g.grad:zero_() end
end

-- state ---------------------------------------------------------------------------------------

-- {name = tensor} of parameters and buffers (the tensors themselves, not copies).
function Module:state_dict()
  local sd = {}
  for name, p in self:named_parameters() do sd[name] = p end
  for name, b in self:named_buffers() do sd[name] = b end
  return sd
end

local function shape_str(t) return "{" .. table.concat(t:shape(), ", ") .. "}" end

-- Copy the values of sd (name -> tensor) into the module. opts.strict (default true): missing
-- and unexpected keys are errors. A shape mismatch is always an error. Values are converted
-- to each parameter's dtype. Returns {missing = {...}, unexpected = {...}}.
function Module:load_state_dict(sd, opts)
  if type(sd) ~= "table" then error("load_state_dict: expected a table {name = tensor}", 2) end
  local strict = not (opts and opts.strict == false)
  local own = self:state_dict()
  local missing, unexpected, mismatched = {}, {}, {}
  for name, t in pairs(own) do
    local src = sd[name]
    if src == nil then
      missing[#missing + 1] = name
    elseif not Tensor.is_tensor(src) then
      mismatched[#mismatched + 1] = fmt("%s: expected a tensor, got %s", name, type(src))
    elseif src:numel() ~= t:numel() or #src:shape() ~= #t:shape() or shape_str(src) ~= shape_str(t) then
      mismatched[#mismatched + 1] = fmt("%s: checkpoint %s, model %s", name, shape_str(src), shape_str(t))
    end
  end
  for name in pairs(sd) do
    if own[name] == nil then unexpected[#unexpected + 1] = name end
  end
  table.sort(missing); table.sort(unexpected); table.sort(mismatched)
  local problems = {}
  if #mismatched > 0 then problems[#problems + 1] = "shape mismatch: " .. table.concat(mismatched, "; ") end
  if strict and #missing > 0 then problems[#problems + 1] = "missing keys: " .. table.concat(missing, ", ") end
  if strict and #unexpected > 0 then problems[#problems + 1] = "unexpected keys: " .. table.concat(unexpected, ", ") end
  if #problems > 0 then
    error(fmt("load_state_dict: %s: %s", self.__name, table.concat(problems, "; ")), 2)
  end
  autograd.no_grad(function()
    for name, t in pairs(own) do
      local src = sd[name]
      if src ~= nil then t:copy_(src) end
    end
  end)
  return { missing = missing, unexpected = unexpected }
end

-- conversion ------------------------------------------------------------------------------------

-- to("f64"), to("f16"), to("cuda"), to("cpu"), to{dtype=, device=}: float parameters and float
-- buffers change dtype, everything changes device. Tensor objects keep their identity.
-- Parameters move one flat buffer at a time (one transfer per (dtype, device) group, gradients
-- included): each parameter and its .grad become views of the new group's data and grad, so
-- the flat-buffer invariant holds on the new device without a second copy.
function Module:to(x)
  local opts = type(x) == "table" and x or nil
  local dtype, device
  if opts then
    dtype, device = opts.dtype, opts.device
  elseif type(x) == "string" and lib.devices[x:match("^(%a+)") or ""] then
    device = x
  else
    dtype = x
  end
  local dt = dtype ~= nil and lib.dtype_of(dtype, "to", 2) or nil
  if device ~= nil then Tensor._device_arg(device, "to", 2) end
  -- first every copy (where an allocation or a transfer can fail), then the rebinding: a
  -- failure leaves the module as it was
  local groups, news, bufs = self:flat_buffers(), {}, {}
  local ok, err = pcall(autograd.no_grad, function()
    for i, g in ipairs(groups) do
      local target = { dtype = (dt ~= nil and lib.is_float[g.data._c.dtype]) and dt or nil, device = device }
      local data = g.data:to(target)
      if data ~= g.data then news[i] = { data = data, grad = g.grad:to(target) } end
    end
    for i, b in ipairs(collect_tensors(self, "_buffers", "_buffer_names")) do
      local t = b[2]
      bufs[i] = { t, t:detach():to({ device = device, dtype = t:is_floating_point() and dt or nil }) }
    end
  end)
  if not ok then error((tostring(err):gsub("^[^:\n]*:%d+: ", "")), 2) end
  local moved = {} -- key -> group, or false when two groups land on one key
  for i, g in ipairs(groups) do
    local n = news[i]
    if n then
      local off = 1
      for _, p in ipairs(g.params) do
        local k = p:numel()
        local shape = p:shape()
        rebind(p, n.data:narrow(1, off, k):view(shape))
        rawset(p, "grad", n.grad:narrow(1, off, k):view(shape))
        off = off + k
      end
      g = { dtype = n.data:dtype(), device = n.data:device(), data = n.data, grad = n.grad, params = g.params,
        names = g.names }
    end
    local key = group_key(g.data)
    if moved[key] == nil then moved[key] = g else moved[key] = false end
  end
  for _, e in ipairs(bufs) do
    local t, r = e[1], e[2]
    if r._c ~= t._c then rawset(t, "_c", rawget(r, "_c")) end
  end
  -- the moved groups become the cache; flat_buffers() checks them and rebuilds a group that
  -- two old ones fell into (f32 and f16 parameters after to("f16"))
  local cache = {}
  for key, g in pairs(moved) do
    if g then
      cache[#cache + 1] = g
      cache[key] = g
    end
  end
  rawset(self, "_flat", cache)
  self:flat_buffers()
  return self
end

function Module:cuda() return self:to("cuda") end
function Module:cpu() return self:to("cpu") end
function Module:float() return self:to("f32") end
function Module:double() return self:to("f64") end
function Module:half() return self:to("f16") end

-- printing ----------------------------------------------------------------------------------------

function Module:extra_repr() return "" end

-- PyTorch-style tree: Name(extra) or Name(\n  extra\n  (child): ...\n)
function Module:repr()
  local extra = self:extra_repr()
  local lines = {}
  for name, child in self:named_children() do
    lines[#lines + 1] = "  (" .. name .. "): " .. child:repr():gsub("\n", "\n  ")
  end
  if #lines == 0 then return self.__name .. "(" .. extra .. ")" end
  if extra ~= "" then table.insert(lines, 1, "  " .. extra) end
  return self.__name .. "(\n" .. table.concat(lines, "\n") .. "\n)"
end

return Module
