-- tern.tensor: the Tensor class — creation, shape queries, views, conversion, element access.
-- Math lives in tern.ops, which adds its methods to this class; printing in tern.format.
--
-- A tensor is a Lua table { _c = tn_tensor* (owned, ffi.gc), _rg = requires grad (leaves),
-- _node = autograd node (computed tensors), grad = accumulated gradient (leaves) }.
-- Positions given as Lua arguments are 1-based (dims, t[i], narrow's start); negative dims
-- count from the end. Values stored in index tensors are 0-based, as in PyTorch.
local lib = require "tern.lib"
local autograd = require "tern.autograd"

local ffi, C = lib.ffi, lib.C
local check, wrap = lib.check, lib.wrap
local OUT = lib.OUT
local record, needs, grad_enabled = autograd.record, autograd.needs, autograd.is_enabled
local dtype_of, dtype_names = lib.dtype_of, lib.dtype_names
local type, select, tonumber, error, fmt = type, select, tonumber, error, string.format
local floor = math.floor

local Tensor = {}
local mt = { __metatable = "tern.Tensor" }
lib.set_tensor_mt(mt)

local SHAPE = ffi.new("int64_t[8]")
local SHAPE2 = ffi.new("int64_t[8]")
local DIMS = ffi.new("int32_t[8]")
local MAX_DIMS = 8

local getmetatable = getmetatable
local function is_tensor(x) return type(x) == "table" and getmetatable(x) == "tern.Tensor" end
Tensor.is_tensor = is_tensor

-- shape helpers ------------------------------------------------------------------------------

local function shape_table(c)
  local s = {}
  for i = 0, c.ndim - 1 do s[i + 1] = tonumber(c.shape[i]) end
  return s
end

local function shape_string(s)
  return "{" .. table.concat(s, ", ") .. "}"
end

-- Read a shape given as a table or as varargs (a trailing options table is ignored) into buf.
-- Returns ndim. opname names the caller in errors; level is the error level of its caller.
local function read_shape(buf, opname, allow_neg, level, ...)
  local first = ...
  local dims
  if type(first) == "table" and not is_tensor(first) then
    dims = first
  else
    dims = { ... }
    if type(dims[#dims]) == "table" then dims[#dims] = nil end
  end
  local n = #dims
  if n > MAX_DIMS then
    error(fmt("%s: at most %d dimensions, got %d", opname, MAX_DIMS, n), level + 1)
  end
  for i = 1, n do
    local v = dims[i]
    if type(v) ~= "number" or v ~= floor(v) or (v < 0 and not (allow_neg and v == -1)) then
      error(fmt("%s: size %d must be a non-negative integer%s, got %s", opname, i,
        allow_neg and " (or -1)" or "", tostring(v)), level + 1)
    end
    buf[i - 1] = v
  end
  return n
end

-- 1-based (or negative) Lua dim -> 0-based C dim, for a tensor of ndim dims.
local function cdim(ndim, d, opname, argname, level)
  level = (level or 2) + 1
  if type(d) ~= "number" or d ~= floor(d) then
    error(fmt("%s: %s must be an integer dimension, got %s", opname, argname or "dim",
      tostring(d)), level)
  end
  local r = d > 0 and d - 1 or ndim + d
  if d == 0 or r < 0 or r >= ndim then
    error(fmt("%s: %s %d is out of range for a %d-d tensor (valid 1..%d or -%d..-1)",
      opname, argname or "dim", d, ndim, ndim, ndim), level)
  end
  return r
end
Tensor._cdim = cdim
Tensor._shape_table = shape_table

local function opts_dtype(opts, default)
  -- dtype_of is tail-called: level 2 is the caller of opts_dtype's caller
  if type(opts) == "table" and opts.dtype ~= nil then return dtype_of(opts.dtype, "dtype", 2) end
  return default
end
-- A device argument: "cpu", "cuda", "cuda:N" or the enum number -> the device type and the
-- CUDA index asked for (nil when none was named). "cuda:N" must name the current CUDA device
-- (tensors are made on the current device; tn.cuda.set_device(N) switches it). argname names
-- the argument in errors; level counts from the caller of device_arg (1 = that caller).
local cuda_index = ffi.new("int32_t[1]")
local function device_arg(d, argname, level)
  level = (level or 1) + 1
  local dev = lib.device_of(d, argname, level)
  if type(d) ~= "string" then return dev, nil end
  local rest = d:match("^%a+(.*)$")
  if rest == "" then return dev, nil end
  local idx = tonumber(rest:match("^:(%d+)$"))
  if idx == nil or (dev == 0 and idx ~= 0) then
    error(fmt("%s: unknown device %s (expected \"cpu\", \"cuda\" or \"cuda:N\")", argname or "device", d), level)
  end
  if dev ~= 0 and C.tn_cuda_get_device(cuda_index) == 0 and cuda_index[0] ~= idx then
    error(fmt("%s: device %s is not the current CUDA device (cuda:%d); call tn.cuda.set_device(%d) first, "
      .. "or say \"cuda\"", argname or "device", d, cuda_index[0], idx), level)
  end -- without a GPU the allocation that follows says so
  return dev, dev ~= 0 and idx or nil
end
Tensor._device_arg = device_arg

-- opts.device (or default) -> device type, CUDA index; level as device_arg's (it is tail-called).
local function opts_device(opts, default, level)
  if type(opts) == "table" and opts.device ~= nil then return device_arg(opts.device, "device", level or 2) end
  return default or 0, nil
end

local function last_opts(...)
  local n = select("#", ...)
  local last = n > 0 and select(n, ...) or nil
  if type(last) == "table" and not is_tensor(last) and (last.dtype or last.device or last.requires_grad ~= nil) then
    return last
  end
  return nil
end

local function finish_opts(t, opts)
  if opts and opts.requires_grad then t:requires_grad(true) end
  return t
end

-- creation -----------------------------------------------------------------------------------

local function new_empty(ndim, shape, dtype, device)
  OUT[0] = nil
  check(C.tn_tensor_empty(OUT, ndim, shape, dtype, device), 3)
  return wrap(OUT[0])
end
Tensor._new_empty = new_empty

-- empty(2, 3, {dtype=, device=}) or empty({2, 3}, {...})
function Tensor.empty(...)
  local opts = last_opts(...)
  local n = read_shape(SHAPE, "empty", false, 2, ...)
  return finish_opts(new_empty(n, SHAPE, opts_dtype(opts, 0), opts_device(opts)), opts)
end

local function filled(opname, value, ...)
  local opts = last_opts(...)
  -- filled is tail-called by zeros, ones and full: level 2 is their caller
  local n = read_shape(SHAPE, opname, false, 2, ...)
  local t = new_empty(n, SHAPE, opts_dtype(opts, 0), opts_device(opts))
  check(C.tn_fill(t._c, value), 2)
  return finish_opts(t, opts)
end

function Tensor.zeros(...) return filled("zeros", 0, ...) end
function Tensor.ones(...) return filled("ones", 1, ...) end

-- full({2, 3}, value, {dtype=}) or full(2, 3, value)? Only the table form is unambiguous:
-- full(shape_table, value, opts)
function Tensor.full(shape, value, opts)
  if type(shape) ~= "table" or is_tensor(shape) then
    error("full: expected a shape table first, e.g. tn.full({2, 3}, 7)", 2)
  end
  if type(value) ~= "number" then
    error("full: value must be a number, got " .. type(value), 2)
  end
  return filled("full", value, shape, opts)
end

-- like-constructors take the source's shape, dtype and device unless opts say otherwise
-- (called by the public *_like functions, not tail-called: their caller is level 3)
local function like(t, opts)
  local c = t._c
  local dtype, device = opts_dtype(opts, c.dtype), opts_device(opts, c.device, 3)
  for i = 0, c.ndim - 1 do SHAPE[i] = c.shape[i] end
  return new_empty(c.ndim, SHAPE, dtype, device)
end

function Tensor.empty_like(t, opts) return finish_opts(like(t, opts), opts) end
function Tensor.zeros_like(t, opts)
  local r = like(t, opts); check(C.tn_fill(r._c, 0)); return finish_opts(r, opts)
end
function Tensor.ones_like(t, opts)
  local r = like(t, opts); check(C.tn_fill(r._c, 1)); return finish_opts(r, opts)
end
function Tensor.full_like(t, value, opts)
  local r = like(t, opts); check(C.tn_fill(r._c, value)); return finish_opts(r, opts)
end

-- arange(stop), arange(start, stop[, step], {dtype=}); default dtype f32, i64 for integers
-- only when asked.
function Tensor.arange(a, b, c, opts)
  if type(b) == "table" then opts, b = b, nil end
  if type(c) == "table" then opts, c = c, nil end
  local start, stop, step
  if b == nil then start, stop, step = 0, a, 1 else start, stop, step = a, b, c or 1 end
  for _, v in ipairs({ start, stop, step }) do
    if type(v) ~= "number" then error("arange: start, stop and step must be numbers", 2) end
  end
  local dtype = opts_dtype(opts, 0)
  local device = opts_device(opts) -- checks a "cuda:N" too
  OUT[0] = nil
  check(C.tn_arange(OUT, start, stop, step, dtype, device), 2)
  return finish_opts(wrap(OUT[0]), opts)
end

function Tensor.eye(n, m, opts)
  if type(m) == "table" then opts, m = m, nil end
  m = m or n
  local ok, t = pcall(filled, "eye", 0, { n, m }, opts)
  if not ok then error((tostring(t):gsub("^[^:\n]*:%d+: ", "")), 2) end -- at the caller's line
  local k = math.min(n, m)
  if k > 0 then
    -- the diagonal is a strided view with stride m + 1
    SHAPE[0] = k
    SHAPE2[0] = m + 1
    OUT[0] = nil
    check(C.tn_as_strided(OUT, t._c, 1, SHAPE, SHAPE2, 0))
    local d = wrap(OUT[0])
    check(C.tn_fill(d._c, 1))
  end
  return t
end

local function random_fill(opname, cfn, a, b, default_dtype, ...)
  local opts = last_opts(...)
  -- tail-called by rand, randn and randint
  local n = read_shape(SHAPE, opname, false, 2, ...)
  local t = new_empty(n, SHAPE, opts_dtype(opts, default_dtype), opts_device(opts))
  check(cfn(t._c, a, b), 2)
  return finish_opts(t, opts)
end

function Tensor.rand(...) return random_fill("rand", C.tn_rand, 0, 1, 0, ...) end
function Tensor.randn(...) return random_fill("randn", C.tn_randn, 0, 1, 0, ...) end
-- randint(low, high, shape_table, opts) or randint(high, shape_table, opts)
function Tensor.randint(low, high, shape, opts)
  if type(high) == "table" then low, high, shape, opts = 0, low, high, shape end
  if type(low) ~= "number" or type(high) ~= "number" then
    error("randint: low and high must be numbers", 2)
  end
  if type(shape) ~= "table" then error("randint: expected a shape table", 2) end
  return random_fill("randint", C.tn_randint, low, high, 5, shape, opts)
end
function Tensor.rand_like(t, opts)
  local r = like(t, opts); check(C.tn_rand(r._c, 0, 1)); return r
end
function Tensor.randn_like(t, opts)
  local r = like(t, opts); check(C.tn_randn(r._c, 0, 1)); return r
end
-- in place: t:uniform_(lo, hi), t:normal_(mean, std), t:bernoulli_(p)
function Tensor.uniform_(t, lo, hi) check(C.tn_rand(t._c, lo or 0, hi or 1)); return t end
function Tensor.normal_(t, mean, std) check(C.tn_randn(t._c, mean or 0, std or 1)); return t end
function Tensor.bernoulli_(t, p) check(C.tn_bernoulli(t._c, p or 0.5)); return t end

function Tensor.manual_seed(seed)
  if type(seed) ~= "number" or seed < 0 or seed ~= floor(seed) then
    error("manual_seed: seed must be a non-negative integer, got " .. tostring(seed), 2)
  end
  C.tn_manual_seed(seed)
end

-- The global generator's state {seed = <uint64_t cdata>, offset = <uint64_t cdata>} (the
-- offset counts the numbers drawn since seeding); set_rng_state(state) puts it back, so a run
-- resumed from a checkpoint draws the same numbers. Fields: non-negative integers as numbers
-- or 64-bit integer cdata.
local u64_state = ffi.new("uint64_t[2]")
function Tensor.rng_state()
  C.tn_rng_get_state(u64_state, u64_state + 1)
  return { seed = u64_state[0], offset = u64_state[1] }
end

local function rng_field(st, k)
  local v = st[k]
  if type(v) == "number" and v >= 0 and v == floor(v) and v < 2 ^ 64 then return v end
  if type(v) == "cdata" and (ffi.istype("uint64_t", v) or (ffi.istype("int64_t", v) and v >= 0)) then
    return v
  end
  error(fmt("set_rng_state: state.%s must be a non-negative integer (number or 64-bit cdata), got %s",
    k, tostring(v)), 3)
end

function Tensor.set_rng_state(st)
  if type(st) ~= "table" then
    error("set_rng_state: expected a table {seed =, offset =} from rng_state(), got " .. type(st), 2)
  end
  C.tn_rng_set_state(rng_field(st, "seed"), rng_field(st, "offset"))
end

-- element writes ------------------------------------------------------------------------------

local ptr_types = lib.ptr_types
local f32_to_f16, f32_to_bf16 = C.tn_f32_to_f16, C.tn_f32_to_bf16
local f16_to_f32, bf16_to_f32 = C.tn_f16_to_f32, C.tn_bf16_to_f32

local function write_elem(p, dtype, i, v)
  if dtype == 2 then
    p[i] = f32_to_f16(v)
  elseif dtype == 3 then
    p[i] = f32_to_bf16(v)
  elseif dtype >= 4 then
    if v ~= v then v = 0 end
    if dtype == 6 then v = v < 0 and 0 or v > 255 and 255 or v end
    p[i] = v < 0 and -floor(-v) or floor(v)
  else
    p[i] = v
  end
end

-- NaNs with a high payload and the sign bit set (bf16 0xffff, as PyTorch writes NaN; f32
-- 0xffff0000) widen to doubles that LuaJIT's NaN-tagging reads as nil or other tagged values,
-- so NaNs are detected on the bits and returned as Lua's canonical NaN.
local band = require("bit").band
local u32p = ffi.typeof("uint32_t *")
local NAN = 0 / 0

local function read_elem(p, dtype, i)
  if dtype == 2 then
    local b = p[i]
    if band(b, 0x7c00) == 0x7c00 and band(b, 0x3ff) ~= 0 then return NAN end
    return tonumber(f16_to_f32(b))
  end
  if dtype == 3 then
    local b = p[i]
    if band(b, 0x7f80) == 0x7f80 and band(b, 0x7f) ~= 0 then return NAN end
    return tonumber(bf16_to_f32(b))
  end
  if dtype == 0 then
    local b = ffi.cast(u32p, p)[i]
    if band(b, 0x7f800000) == 0x7f800000 and band(b, 0x7fffff) ~= 0 then return NAN end
  elseif dtype == 1 then
    local q = ffi.cast(u32p, p)
    local hi = q[2 * i + 1]
    if band(hi, 0x7ff00000) == 0x7ff00000 and (band(hi, 0xfffff) ~= 0 or q[2 * i] ~= 0) then
      return NAN
    end
  end
  return tonumber(p[i])
end
Tensor._read_elem = read_elem

-- tn.tensor(nested_table | number | tensor, {dtype=, device=, requires_grad=}): a new leaf.
-- Values are written on the CPU; on another device a number is filled there (tn_fill) and a
-- table is built on the CPU and copied over.
function Tensor.tensor(data, opts)
  local device, index = opts_device(opts, nil, 2)
  if is_tensor(data) then
    local r = data:detach()
    local dtype = opts_dtype(opts, r._c.dtype)
    if not (type(opts) == "table" and opts.device ~= nil) then device = r._c.device end
    local out
    if device == 0 then -- to the CPU: move first, convert there
      out = Tensor._to_dtype(Tensor._to_device(r, device, index, 2), dtype, 2)
    else
      out = Tensor._to_device(Tensor._to_dtype(r, dtype, 2), device, index, 2)
    end
    if out == r then out = Tensor.clone(r) end
    return finish_opts(out, opts)
  end
  local dtype = opts_dtype(opts, 0)
  if type(data) == "number" or type(data) == "boolean" then
    local v = data == true and 1 or data == false and 0 or data
    local t = new_empty(0, SHAPE, dtype, device)
    if device == 0 then
      write_elem(ffi.cast(ptr_types[dtype], t._c.data), dtype, 0, v)
    else
      check(C.tn_fill(t._c, v), 2) -- the same conversion as write_elem's, on the device
    end
    return finish_opts(t, opts)
  end
  if type(data) ~= "table" then
    error("tensor: expected a nested table of numbers, a number or a tensor, got " .. type(data), 2)
  end
  -- shape from the first elements
  local shape, x = {}, data
  while type(x) == "table" do
    if #shape >= MAX_DIMS then error("tensor: more than 8 levels of nesting", 2) end
    shape[#shape + 1] = #x
    x = x[1]
  end
  local n = #shape
  for i = 1, n do SHAPE[i - 1] = shape[i] end
  local t = new_empty(n, SHAPE, dtype, 0)
  local p = ffi.cast(ptr_types[dtype], t._c.data)
  local k = 0
  local function fill(v, depth, path)
    if depth > n then
      local tv = type(v)
      if tv == "boolean" then v = v and 1 or 0
      elseif tv ~= "number" then
        error(fmt("tensor: element at %s is a %s, expected a number", path, tv), 0)
      end
      write_elem(p, dtype, k, v)
      k = k + 1
      return
    end
    if type(v) ~= "table" then
      error(fmt("tensor: ragged nesting: element at %s is a %s where a table of %d was expected",
        path, type(v), shape[depth]), 0)
    end
    if #v ~= shape[depth] then
      error(fmt("tensor: ragged nesting: %s has %d elements, expected %d (as its first sibling)",
        path, #v, shape[depth]), 0)
    end
    for i = 1, #v do fill(v[i], depth + 1, path .. "[" .. i .. "]") end
  end
  local ok, err = pcall(fill, data, 1, "data")
  if not ok then error(err, 2) end
  if device ~= 0 then t = Tensor._to_device(t, device, index, 2) end
  return finish_opts(t, opts)
end

-- queries ------------------------------------------------------------------------------------

function Tensor.shape(t) return shape_table(t._c) end
function Tensor.shape_string(t) return shape_string(shape_table(t._c)) end
function Tensor.size(t, d)
  if d == nil then return shape_table(t._c) end
  return tonumber(t._c.shape[cdim(t._c.ndim, d, "size")])
end
function Tensor.stride(t, d)
  local c = t._c
  if d == nil then
    local s = {}
    for i = 0, c.ndim - 1 do s[i + 1] = tonumber(c.strides[i]) end
    return s
  end
  return tonumber(c.strides[cdim(c.ndim, d, "stride")])
end
function Tensor.dim(t) return t._c.ndim end
Tensor.ndim = Tensor.dim
function Tensor.numel(t) return tonumber(C.tn_tensor_numel(t._c)) end
function Tensor.dtype(t) return dtype_names[t._c.dtype] end
function Tensor.device(t) return lib.device_names[t._c.device] end
function Tensor.is_contiguous(t) return C.tn_tensor_is_contiguous(t._c) ~= 0 end
function Tensor.is_floating_point(t) return lib.is_float[t._c.dtype] end
-- The address of the first element: a device address for a tensor on a device (pass it to
-- C/CUDA code; never read it from Lua).
function Tensor.data_ptr(t) return t._c.data end
function Tensor.storage_offset(t) return tonumber(t._c.offset) end
function Tensor.is_leaf(t) return t._node == nil end
function Tensor.grad_fn(t) return t._node and t._node.name or nil end

-- t:requires_grad() -> boolean; t:requires_grad(flag) sets it on a leaf and returns t.
function Tensor.requires_grad(t, flag)
  if flag == nil then return t._rg == true or t._node ~= nil end
  if t._node then
    error("requires_grad: only leaf tensors can change requires_grad; this one was computed by '"
      .. t._node.name .. "' (use :detach() for a new leaf)", 2)
  end
  if flag and not lib.is_float[t._c.dtype] then
    error("requires_grad: only float tensors can require grad, got " .. dtype_names[t._c.dtype], 2)
  end
  rawset(t, "_rg", flag and true or nil)
  return t
end

function Tensor.backward(t, grad, opts)
  if is_tensor(grad) or grad == nil then
    return autograd.backward(t, grad, opts)
  end
  if type(grad) == "number" then
    return autograd.backward(t, t:full_like(grad), opts)
  end
  return autograd.backward(t, nil, grad) -- backward({retain_graph=true})
end

function Tensor.zero_grad(t) rawset(t, "grad", nil) end

-- views --------------------------------------------------------------------------------------
-- Backward functions are top-level (fn(g, ctx)); ctx is built only when recording.

local function back_reshape(g, src) return g:reshape(src) end
local function back_transpose(g, ctx) return g:transpose(ctx[1], ctx[2]) end
local function back_permute(g, inv) return g:permute(inv) end
local function back_sum_to(g, src) return g:sum_to(src) end
local function back_identity(g) return g end
local function back_narrow(g, ctx)
  local z = g:new_zeros(ctx.src)
  z:narrow(ctx.d, ctx.start, ctx.length):copy_(g)
  return z
end
local function back_select(g, ctx)
  local z = g:new_zeros(ctx.src)
  z:select(ctx.d, ctx.index):copy_(g)
  return z
end

local function view_out(t, st, name, fn)
  check(st, 3)
  local out = wrap(OUT[0])
  if fn and grad_enabled() and needs(t) then record(out, name, fn, shape_table(t._c), t) end
  return out
end

-- view, reshape and expand: a shape (varargs or a table, -1 allowed) -> cfn(out, t, n, shape).
-- Tail-called by them: its levels are theirs.
local function shaped_view(t, opname, cfn, back, ...)
  local n = read_shape(SHAPE, opname, true, 2, ...)
  OUT[0] = nil
  local r = view_out(t, cfn(OUT, t._c, n, SHAPE), opname, back)
  return r -- no tail call: view_out raises at level 3
end

function Tensor.view(t, ...) return shaped_view(t, "view", C.tn_view, back_reshape, ...) end
function Tensor.reshape(t, ...) return shaped_view(t, "reshape", C.tn_reshape, back_reshape, ...) end

function Tensor.flatten(t)
  return t:reshape(-1)
end

function Tensor.transpose(t, d0, d1)
  local nd = t._c.ndim
  local a, b = cdim(nd, d0, "transpose", "dim0"), cdim(nd, d1, "transpose", "dim1")
  OUT[0] = nil
  local out = view_out(t, C.tn_transpose(OUT, t._c, a, b))
  if grad_enabled() and needs(t) then record(out, "transpose", back_transpose, { d0, d1 }, t) end
  return out
end

-- t:t() — transpose of a 2-d tensor (a 1-d tensor is returned as is)
function Tensor.t(t)
  local nd = t._c.ndim
  if nd > 2 then error(fmt("t: expects a tensor with <= 2 dims, got %d-d", nd), 2) end
  if nd < 2 then return t end
  return t:transpose(1, 2)
end

function Tensor.permute(t, ...)
  local dims = type(...) == "table" and ... or { ... }
  local nd = t._c.ndim
  if #dims ~= nd then
    error(fmt("permute: expected %d dims for a %d-d tensor, got %d", nd, nd, #dims), 2)
  end
  for i = 1, nd do DIMS[i - 1] = cdim(nd, dims[i], "permute") end
  OUT[0] = nil
  local out = view_out(t, C.tn_permute(OUT, t._c, DIMS))
  if grad_enabled() and needs(t) then
    local inv = {}
    for i = 1, nd do inv[DIMS[i - 1] + 1] = i end
    record(out, "permute", back_permute, inv, t)
  end
  return out
end

-- narrow(dim, start, length): start is 1-based (negative counts from the end)
function Tensor.narrow(t, d, start, length)
  local c = t._c
  local dd = cdim(c.ndim, d, "narrow")
  if type(start) ~= "number" or type(length) ~= "number" then
    error("narrow: start and length must be numbers", 2)
  end
  local s0 = start < 0 and tonumber(c.shape[dd]) + start or start - 1
  OUT[0] = nil
  local out = view_out(t, C.tn_narrow(OUT, c, dd, s0, length))
  if grad_enabled() and needs(t) then
    record(out, "narrow", back_narrow,
      { src = shape_table(c), d = dd + 1, start = s0 + 1, length = length }, t)
  end
  return out
end

-- select(dim, index): index is 1-based; negative counts from the end
function Tensor.select(t, d, index)
  local c = t._c
  local dd = cdim(c.ndim, d, "select")
  if type(index) ~= "number" or index ~= floor(index) then
    error("select: index must be an integer, got " .. tostring(index), 2)
  end
  local size = tonumber(c.shape[dd])
  local i0 = index < 0 and size + index or index - 1
  if index == 0 or i0 < 0 or i0 >= size then
    error(fmt("select: index %d is out of range for dim %d of size %d (valid 1..%d or -%d..-1)",
      index, d, size, size, size), 2)
  end
  OUT[0] = nil
  local out = view_out(t, C.tn_select(OUT, c, dd, i0))
  if grad_enabled() and needs(t) then
    record(out, "select", back_select, { src = shape_table(c), d = dd + 1, index = i0 + 1 }, t)
  end
  return out
end

function Tensor.unsqueeze(t, d)
  local c = t._c
  local dd = cdim(c.ndim + 1, d, "unsqueeze")
  OUT[0] = nil
  local r = view_out(t, C.tn_unsqueeze(OUT, c, dd), "unsqueeze", back_reshape)
  return r -- no tail call: view_out raises at level 3
end

function Tensor.squeeze(t, d)
  local c = t._c
  local dd = d == nil and -1 or cdim(c.ndim, d, "squeeze")
  OUT[0] = nil
  local r = view_out(t, C.tn_squeeze(OUT, c, dd), "squeeze", back_reshape)
  return r -- no tail call: view_out raises at level 3
end

-- expand(2, 3) or expand({2, 3}); -1 keeps a size
function Tensor.expand(t, ...) return shaped_view(t, "expand", C.tn_expand, back_sum_to, ...) end

function Tensor.expand_as(t, other) return t:expand(shape_table(other._c)) end

function Tensor.contiguous(t)
  OUT[0] = nil
  check(C.tn_contiguous(OUT, t._c), 2)
  local p = OUT[0]
  if p == t._c then
    C.tn_tensor_free(p) -- contiguous returned t itself, retained
    return t
  end
  local out = wrap(p)
  if grad_enabled() and needs(t) then record(out, "contiguous", back_identity, nil, t) end
  return out
end

-- Release the native memory now instead of at garbage collection (the finalizer is detached
-- first). The tensor is unusable afterwards; views and other references keep their storage.
function Tensor.free(t)
  local c = rawget(t, "_c")
  if c == nil then return end
  ffi.gc(c, nil)
  C.tn_tensor_free(c)
  rawset(t, "_c", nil) -- any later use reaches __index("_c"), which raises
end

-- A new leaf sharing t's storage, outside the graph.
function Tensor.detach(t)
  return wrap(C.tn_tensor_retain(t._c))
end

-- copies and conversion ---------------------------------------------------------------------

function Tensor.clone(t)
  local out = like(t)
  check(C.tn_copy(out._c, t._c), 2)
  if grad_enabled() and needs(t) then record(out, "clone", back_identity, nil, t) end
  return out
end

local function check_inplace(t, opname)
  if t._rg and grad_enabled() then
    error(opname .. ": a leaf tensor that requires grad is used in an in-place operation "
      .. "(wrap it in tn.no_grad, or operate on :detach())", 3)
  end
end
Tensor._check_inplace = check_inplace

-- t:copy_(src): src broadcast to t's shape, converted to t's dtype. Not recorded.
function Tensor.copy_(t, src)
  check_inplace(t, "copy_")
  if type(src) == "number" then
    check(C.tn_fill(t._c, src), 2)
    return t
  end
  if not is_tensor(src) then error("copy_: expected a tensor or a number, got " .. type(src), 2) end
  local tc, sc = t._c, src._c
  if tc.device ~= sc.device then
    -- between devices the bytes move as they are (contiguous, one dtype); the conversion,
    -- the broadcasting and t's strides are dealt with on one side: the CPU's when the source
    -- is there, else the destination's
    if sc.device == 0 and sc.dtype ~= tc.dtype then
      src = Tensor._to_dtype(src:detach(), tc.dtype, 2)
      sc = src._c
    end
    if sc.dtype == tc.dtype and C.tn_tensor_is_contiguous(tc) ~= 0 and lib.same_shape(sc, tc) then
      if C.tn_tensor_is_contiguous(sc) == 0 then
        OUT[0] = nil
        check(C.tn_contiguous(OUT, sc), 2)
        sc = wrap(OUT[0])._c
      end
      check(C.tn_copy(tc, sc), 2)
    else
      check(C.tn_copy(tc, Tensor._to_device(src:detach(), tc.device, nil, 2)._c), 2)
    end
    return t
  end
  check(C.tn_copy(tc, sc), 2)
  return t
end

function Tensor.fill_(t, v)
  check_inplace(t, "fill_")
  if type(v) ~= "number" then error("fill_: value must be a number, got " .. type(v), 2) end
  check(C.tn_fill(t._c, v), 2)
  return t
end
function Tensor.zero_(t) return Tensor.fill_(t, 0) end

function Tensor.new_zeros(t, shape, opts)
  return Tensor.zeros(shape, { dtype = opts_dtype(opts, t._c.dtype), device = opts_device(opts, t._c.device) })
end
function Tensor.new_ones(t, shape, opts)
  return Tensor.ones(shape, { dtype = opts_dtype(opts, t._c.dtype), device = opts_device(opts, t._c.device) })
end
function Tensor.new_full(t, shape, v, opts)
  return Tensor.full(shape, v, { dtype = opts_dtype(opts, t._c.dtype), device = opts_device(opts, t._c.device) })
end
function Tensor.new_tensor(t, data, opts)
  return Tensor.tensor(data, { dtype = opts_dtype(opts, t._c.dtype), device = opts_device(opts, t._c.device) })
end

local function back_to(g, dtype_or_device) return g:to(dtype_or_device) end

-- level: where errors are raised, counted from the caller of to_dtype / to_device (1 = that
-- caller; the public methods tail-call them, so 1 is the user's line there).
local function to_dtype(t, dtype, level)
  local c = t._c
  if c.dtype == dtype then return t end
  OUT[0] = nil
  check(C.tn_to_dtype(OUT, c, dtype), (level or 1) + 1)
  local out = wrap(OUT[0])
  if grad_enabled() and needs(t) and lib.is_float[dtype] then
    record(out, "to", back_to, c.dtype, t)
  end
  return out
end
Tensor._to_dtype = to_dtype

-- A copy of t on device (type; index: the CUDA index asked for, nil = any), same dtype. The
-- copy between devices always sees a contiguous source and a new contiguous destination of
-- one dtype: a plain transfer of bytes (tn_copy), whatever strides t has.
local function to_device(t, device, index, level)
  local c = t._c
  if c.device == device and (index == nil or c.device_index == index) then return t end
  level = (level or 1) + 1
  local src = c
  if C.tn_tensor_is_contiguous(c) == 0 then
    OUT[0] = nil
    check(C.tn_contiguous(OUT, c), level) -- on t's own device
    src = wrap(OUT[0])._c -- the cdata carries the finalizer: holding it keeps the copy alive
  end
  for i = 0, c.ndim - 1 do SHAPE2[i] = c.shape[i] end
  OUT[0] = nil
  check(C.tn_tensor_empty(OUT, c.ndim, SHAPE2, c.dtype, device), level)
  local out = wrap(OUT[0])
  check(C.tn_copy(out._c, src), level)
  if grad_enabled() and needs(t) then
    record(out, "to", back_to, lib.device_names[c.device], t)
  end
  return out
end
Tensor._to_device = to_device

-- A contiguous CPU copy of t outside autograd (t itself when it is on the CPU), or nil and
-- the C message: how element reads, printing and saving see the values of a tensor on a
-- device.
local function host_copy(t)
  local c = t._c
  if c.device == 0 then return t end
  local src = c
  if C.tn_tensor_is_contiguous(c) == 0 then
    OUT[0] = nil
    if C.tn_contiguous(OUT, c) ~= 0 then return nil, lib.last_error() end
    src = wrap(OUT[0])._c
  end
  for i = 0, c.ndim - 1 do SHAPE2[i] = c.shape[i] end
  OUT[0] = nil
  if C.tn_tensor_empty(OUT, c.ndim, SHAPE2, c.dtype, 0) ~= 0 then return nil, lib.last_error() end
  local h = wrap(OUT[0])
  if C.tn_copy(h._c, src) ~= 0 then return nil, lib.last_error() end
  return h
end
Tensor._host_copy = host_copy

-- t:to("f16"), t:to("cuda"), t:to("cuda:0"), t:to{dtype=, device=}. With both, the dtype
-- conversion runs on the CPU side of the move (before an upload, after a download).
function Tensor.to(t, x)
  if type(x) == "table" then
    local device, index
    if x.device ~= nil then device, index = device_arg(x.device, "to", 2) end
    local dtype = x.dtype ~= nil and dtype_of(x.dtype, "to", 2) or nil
    local r = t
    if device == 0 then
      r = to_device(r, device, index, 2)
      if dtype then r = to_dtype(r, dtype, 2) end
    else
      if dtype then r = to_dtype(r, dtype, 2) end
      if device then r = to_device(r, device, index, 2) end
    end
    return r
  end
  if type(x) == "string" and lib.devices[x:match("^(%a+)") or ""] then
    local device, index = device_arg(x, "to", 2)
    return to_device(t, device, index)
  end
  return to_dtype(t, dtype_of(x, "to", 2))
end
function Tensor.type(t, x) if x == nil then return t:dtype() end return t:to(x) end
function Tensor.float(t) return to_dtype(t, 0) end
function Tensor.double(t) return to_dtype(t, 1) end
function Tensor.half(t) return to_dtype(t, 2) end
function Tensor.bfloat16(t) return to_dtype(t, 3) end
function Tensor.int(t) return to_dtype(t, 4) end
function Tensor.long(t) return to_dtype(t, 5) end
function Tensor.byte(t) return to_dtype(t, 6) end
Tensor.bool = Tensor.byte
function Tensor.cpu(t) return to_device(t, 0) end
function Tensor.cuda(t) return to_device(t, 1) end

-- element access -----------------------------------------------------------------------------

-- Byte offset of 1-based index list idx (a table), bounds-checked.
local function element_offset(t, idx, opname)
  local c = t._c
  local nd = c.ndim
  if type(idx) ~= "table" then
    error(fmt("%s: expected a table of %d indices, got %s", opname, nd, type(idx)), 3)
  end
  if #idx ~= nd then
    error(fmt("%s: expected %d indices for a %d-d tensor of shape %s, got %d", opname, nd, nd,
      shape_string(shape_table(c)), #idx), 3)
  end
  local off = 0
  for i = 1, nd do
    local v = idx[i]
    local size = tonumber(c.shape[i - 1])
    if type(v) ~= "number" or v ~= floor(v) then
      error(fmt("%s: index %d must be an integer, got %s", opname, i, tostring(v)), 3)
    end
    local v0 = v < 0 and size + v or v - 1
    if v == 0 or v0 < 0 or v0 >= size then
      error(fmt("%s: index %d is out of range for dim %d of size %d (shape %s)", opname, v, i,
        size, shape_string(shape_table(c))), 3)
    end
    off = off + v0 * tonumber(c.strides[i - 1])
  end
  return off
end

-- The values of a tensor on a device are read through a CPU copy (host_copy: one transfer,
-- which waits for the device's pending work) and written through tn_fill on a one-element
-- view: Lua never dereferences a device pointer. A failed copy raises at level 3 (the caller
-- of the method that called host_values).
local function host_values(t, opname)
  local h, err = host_copy(t)
  if not h then
    local c = t._c
    if c.storage ~= nil and c.storage.device == c.device then
      -- a real device tensor: the copy's own error (say a bad index reported at this
      -- synchronisation, or out of memory) is the news
      error(fmt("%s: %s", opname, err), 3)
    end
    error(fmt("%s: element access needs a cpu tensor; call :cpu() first (the implicit copy of this %s "
      .. "tensor to the host failed: %s)", opname, lib.device_names[c.device], err), 3)
  end
  return h
end

-- The one-element view of t at element offset off (from element_offset), on t's device.
local function element_view(t, off)
  local c = t._c
  OUT[0] = nil
  check(C.tn_as_strided(OUT, c, 0, SHAPE2, SHAPE2, c.offset + off), 3)
  return wrap(OUT[0])
end

-- t:get{i, j} -> number (1-based)
function Tensor.get(t, idx)
  local off = element_offset(t, idx, "get")
  local c = t._c
  local dt = c.dtype
  if c.device ~= 0 then
    local h = host_values(element_view(t, off), "get")
    return read_elem(ffi.cast(ptr_types[dt], h._c.data), dt, 0)
  end
  return read_elem(ffi.cast(ptr_types[dt], c.data), dt, off)
end

-- t:set({i, j}, v); on a device one tn_fill of that element (a kernel launch, no transfer)
function Tensor.set(t, idx, v)
  check_inplace(t, "set")
  if type(v) ~= "number" then error("set: value must be a number, got " .. type(v), 2) end
  local off = element_offset(t, idx, "set")
  local c = t._c
  local dt = c.dtype
  if c.device ~= 0 then
    check(C.tn_fill(element_view(t, off)._c, v), 2)
    return t
  end
  write_elem(ffi.cast(ptr_types[dt], c.data), dt, off, v)
  return t
end

-- The value of a one-element tensor (on a device: copied to the host, which waits for the
-- device; keep it out of the training step).
function Tensor.item(t)
  local c = t._c
  if C.tn_tensor_numel(c) ~= 1 then
    error(fmt("item: needs a one-element tensor, got shape %s", shape_string(shape_table(c))), 2)
  end
  if c.device ~= 0 then c = host_values(t, "item")._c end
  return read_elem(ffi.cast(ptr_types[c.dtype], c.data), c.dtype, 0)
end

-- Nested Lua table of the values (a number for a 0-d tensor); a tensor on a device is read
-- through one CPU copy.
function Tensor.totable(t)
  local c = t._c
  if c.device ~= 0 then c = host_values(t, "totable")._c end
  local p, dt = ffi.cast(ptr_types[c.dtype], c.data), c.dtype
  local nd = c.ndim
  if nd == 0 then return read_elem(p, dt, 0) end
  local shape, strides = shape_table(c), {}
  for i = 0, nd - 1 do strides[i + 1] = tonumber(c.strides[i]) end
  local function build(d, off) -- refers to c: a host copy stays alive while p is read
    local r = {}
    local st = strides[d]
    if d == c.ndim then
      for i = 1, shape[d] do r[i] = read_elem(p, dt, off + (i - 1) * st) end
    else
      for i = 1, shape[d] do r[i] = build(d + 1, off + (i - 1) * st) end
    end
    return r
  end
  return build(1, 0)
end
Tensor.tolist = Tensor.totable

-- metatable plumbing -------------------------------------------------------------------------

-- t[i]: a number for a 1-d tensor (Torch7), else the view t:select(1, i)
mt.__index = function(t, k)
  local m = Tensor[k]
  if m ~= nil then return m end
  if k == "_c" then error("tensor: used after :free()", 3) end
  if type(k) == "number" then
    if t._c.ndim == 1 then return t:get({ k }) end
    if t._c.ndim == 0 then error("index: a 0-d tensor cannot be indexed; use :item()", 2) end
    return t:select(1, k)
  end
  return nil
end

-- t[i] = v: sets an element of a 1-d tensor, or fills/copies into the slice t:select(1, i)
local function copy_row(t, k, v) t:select(1, k):copy_(v) end
mt.__newindex = function(t, k, v)
  if type(k) == "number" then
    if t._c.ndim == 1 then
      if type(v) ~= "number" then error("index: value must be a number for a 1-d tensor", 2) end
      return t:set({ k }, v) -- a tail call: set's errors point at the assignment
    end
    local ok, err = pcall(copy_row, t, k, v)
    if not ok then error((tostring(err):gsub("^[^:\n]*:%d+: ", "")), 2) end
    return
  end
  rawset(t, k, v)
end

Tensor._mt = mt
Tensor._SHAPE = SHAPE
Tensor._DIMS = DIMS
Tensor._read_shape = read_shape
Tensor._shape_string = shape_string
Tensor._like = like

return Tensor
