-- spec/helpers: assertions and small utilities shared by tern's specs.
--
--   local h = require "helpers.init"   (busted's lpath includes ./spec/?.lua)
--
-- Registers with luassert:
--   assert.tensor_near(expected, actual, {atol = 1e-6, rtol = 1e-5})
--     expected: a tensor, a nested Lua table of numbers or a number (0-d); actual: a tensor.
--     Shapes must match; |e - a| <= atol + rtol * |e| elementwise; NaN matches NaN and
--     infinities match infinities of the same sign. On failure the message names the worst
--     element, its 1-based index, both values and both shapes.
--   assert.tensor_equal(expected, actual): tensor_near with atol = rtol = 0 and equal dtypes
--     when expected is a tensor.
--   assert.gradcheck(fn, inputs, opts): tn.autograd.gradcheck passes (its message on failure).
local tn = require "tern"
local say = require "say"
local assert = require "luassert"

local M = {}
M.tn = tn

local fmt = string.format

-- Shape of a nested table (the first element at each level) and its flattened values.
local function table_shape(t)
  local shape, x = {}, t
  while type(x) == "table" do
    shape[#shape + 1] = #x
    x = x[1]
  end
  return shape
end

local function flatten(t, out)
  out = out or {}
  if type(t) ~= "table" then out[#out + 1] = t return out end
  for i = 1, #t do flatten(t[i], out) end
  return out
end

-- Values and shape of a tensor / nested table / number.
local function values_of(x)
  if tn.is_tensor(x) then
    local v = x:detach():totable()
    return flatten(v), x:shape()
  elseif type(x) == "table" then
    return flatten(x), table_shape(x)
  elseif type(x) == "number" then
    return { x }, {}
  end
  error("tensor_near: expected a tensor, a nested table or a number, got " .. type(x), 3)
end
M.values_of = values_of

local function shape_str(s) return "{" .. table.concat(s, ", ") .. "}" end

-- 1-based multi-index of flat position k (1-based) in shape s.
local function unflatten(k, s)
  local idx, r = {}, k - 1
  for d = #s, 1, -1 do
    idx[d] = r % s[d] + 1
    r = math.floor(r / s[d])
  end
  return "{" .. table.concat(idx, ", ") .. "}"
end

local function close(e, a, atol, rtol)
  if e ~= e then return a ~= a end
  if a ~= a then return false end
  if e == math.huge or e == -math.huge or a == math.huge or a == -math.huge then return e == a end
  return math.abs(e - a) <= atol + rtol * math.abs(e)
end

-- Returns ok, message.
function M.compare(expected, actual, opts)
  opts = opts or {}
  local atol, rtol = opts.atol or 1e-6, opts.rtol or 1e-5
  if not tn.is_tensor(actual) then
    return false, "tensor_near: actual is a " .. type(actual) .. ", not a tensor"
  end
  local ev, es = values_of(expected)
  local av, as = values_of(actual)
  local same = #es == #as
  if same then for i = 1, #es do if es[i] ~= as[i] then same = false end end end
  if not same then
    return false, fmt("tensor_near: shapes differ: expected %s, actual %s (%s)",
      shape_str(es), shape_str(as), actual:dtype())
  end
  local worst, worst_k, bad = -1, nil, 0
  for k = 1, #ev do
    local e, a = ev[k], av[k]
    if not close(e, a, atol, rtol) then
      bad = bad + 1
      local excess
      if e ~= e or a ~= a or math.abs(e) == math.huge or math.abs(a) == math.huge then
        excess = math.huge
      else
        excess = math.abs(e - a) - (atol + rtol * math.abs(e))
      end
      if excess > worst then worst, worst_k = excess, k end
    end
  end
  if bad == 0 then return true end
  return false, fmt("tensor_near: %d of %d elements differ (atol %g, rtol %g); worst at index %s: "
    .. "expected %.10g, actual %.10g (|diff| %.3g); shape %s, actual dtype %s",
    bad, #ev, atol, rtol, unflatten(worst_k, es), ev[worst_k], av[worst_k],
    math.abs(ev[worst_k] - av[worst_k]), shape_str(es), actual:dtype())
end

local function set_message(arguments, msg)
  for i = 1, (arguments.n or #arguments) do arguments[i] = nil end
  arguments[1] = msg
  arguments.n = 1
  arguments.nofmt = { true }
end

local function tensor_near(state, arguments)
  local ok, msg = M.compare(arguments[1], arguments[2], arguments[3])
  set_message(arguments, msg or "tensor_near: tensors are close, expected them to differ")
  return ok
end

local function tensor_equal(state, arguments)
  local e, a = arguments[1], arguments[2]
  local ok, msg = M.compare(e, a, { atol = 0, rtol = 0 })
  if ok and tn.is_tensor(e) and tn.is_tensor(a) and e:dtype() ~= a:dtype() then
    ok, msg = false, fmt("tensor_equal: dtypes differ: expected %s, actual %s", e:dtype(), a:dtype())
  end
  set_message(arguments, msg or "tensor_equal: tensors are equal, expected them to differ")
  return ok
end

local function gradcheck(state, arguments)
  local ok, msg = pcall(tn.autograd.gradcheck, arguments[1], arguments[2], arguments[3])
  set_message(arguments, ok and "gradcheck passed, expected a failure" or tostring(msg))
  return ok and msg == true
end

say:set("assertion.tern_message", "%s")
assert:register("assertion", "tensor_near", tensor_near, "assertion.tern_message", "assertion.tern_message")
assert:register("assertion", "tensor_equal", tensor_equal, "assertion.tern_message", "assertion.tern_message")
assert:register("assertion", "gradcheck", gradcheck, "assertion.tern_message", "assertion.tern_message")

-- fixtures ------------------------------------------------------------------------------------

local function spec_dir()
  local src = debug.getinfo(1, "S").source:match("^@(.*)$")
  return (src:match("^(.*)/helpers/[^/]*$") or "spec")
end
M.fixtures = spec_dir() .. "/fixtures"

local golden
function M.golden()
  if not golden then golden = tn.load(M.fixtures .. "/torch_golden.safetensors") end
  return golden
end

-- A path for a temporary file that no other spec uses.
local tmp_count = 0
-- Whole-file byte I/O for the specs that build or corrupt files.
function M.write_file(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end

function M.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function M.tmpname(suffix)
  tmp_count = tmp_count + 1
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("*n") or 0
  if f then f:close() end
  return fmt("/tmp/tern-spec-%d-%d%s", pid, tmp_count, suffix or "")
end

-- Resident set size in bytes (Linux).
function M.rss()
  local f = assert(io.open("/proc/self/statm"))
  local _, resident = f:read("*n", "*n")
  f:close()
  return resident * 4096
end

-- True when the AddressSanitizer runtime is in this process (a sanitizer build's spec run).
-- Looked for among the mapped libraries: .ci/test.sh gives LuaJIT the runtime with LD_PRELOAD
-- and then removes that from the environment, so that the programs the specs start run plain.
M.asan = (function()
  local f = io.open("/proc/self/maps")
  if not f then return false end
  local maps = f:read("*a")
  f:close()
  return maps:find("libasan", 1, true) ~= nil
end)()

-- Random feasible RNN-T boundary rows {s0, t0, s1, t1} of B utterances (math.random): T_b >= 1,
-- and T_b >= S_b for the modified / constrained types; nonzero begins unless zero_begin; row 1
-- always has S_b = 0.
function M.rnnt_boundary_rows(B, S, T, ty, zero_begin)
  local rows = {}
  for b = 1, B do
    local s0 = zero_begin and 0 or math.random(0, 1)
    local t0 = zero_begin and 0 or math.random(0, 1)
    local s1 = b == 1 and s0 or math.random(s0, S)
    local t1 = math.random(t0 + 1, T)
    if ty ~= "regular" and t1 - t0 < s1 - s0 then t1 = math.min(T, t0 + (s1 - s0)) end
    if ty ~= "regular" and t1 - t0 < s1 - s0 then s1 = s0 + (t1 - t0) end
    rows[b] = { s0, t0, s1, t1 }
  end
  return rows
end

-- f64 leaf of a given shape with deterministic values (seeded), requiring grad.
function M.leaf(shape, seed, opts)
  tn.manual_seed(seed or 1)
  local t = tn.randn(shape, { dtype = "f64" })
  if opts and opts.positive then t = t:abs() + 0.5 end
  return t:requires_grad(true)
end

-- mask_pad (L, B) u8 from valid lengths (1 = padding), as nn.SRU takes it.
function M.pad_mask(lengths, L)
  local rows = {}
  for t = 1, L do
    rows[t] = {}
    for b, n in ipairs(lengths) do rows[t][b] = t > n and 1 or 0 end
  end
  return tn.tensor(rows, { dtype = "u8" })
end

-- Assert that string s contains part (plain text), showing both when it does not.
function M.contains(s, part)
  assert.truthy(tostring(s):find(part, 1, true), "'" .. tostring(s) .. "' does not contain '" .. part .. "'")
end

-- Run fn and return the error message it raises (fails the spec when it does not raise).
function M.error_of(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error, got none")
  return tostring(err)
end

return M
