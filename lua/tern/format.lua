-- tern.format: tostring(t) — values laid out like PyTorch prints them (one format for all
-- elements, chosen from their range; more than 1000 elements are elided to 3 at each edge),
-- followed by a line with dtype, shape, device and autograd state. A tensor on a device is
-- printed from a CPU copy (one transfer, which waits for the device).
local lib = require "tern.lib"
local Tensor = require "tern.tensor"

local ffi = lib.ffi
local fmt, floor, abs, huge = string.format, math.floor, math.abs, math.huge

local M = {}
M.threshold = 1000 -- elements beyond which values are elided
M.edgeitems = 3
M.linewidth = 80

local function is_int(v) return v == floor(v) end

-- Choose a formatter for the printed values.
local function chooser(vals, is_float)
  if not is_float then
    local w = 1
    for _, v in ipairs(vals) do w = math.max(w, #fmt("%d", v)) end
    return function(v) return fmt("%" .. w .. "d", v) end, w
  end
  local maxa, mina, all_int, finite = 0, huge, true, {}
  for _, v in ipairs(vals) do
    if v == v and v ~= huge and v ~= -huge then
      finite[#finite + 1] = v
      local a = abs(v)
      if a > maxa then maxa = a end
      if a ~= 0 and a < mina then mina = a end
      if not is_int(v) then all_int = false end
    end
  end
  local f
  if #finite == 0 then
    f = function(v) return tostring(v) end
  elseif all_int and maxa < 1e8 then
    f = function(v)
      if v ~= v then return "nan" end
      if v == huge then return "inf" end
      if v == -huge then return "-inf" end
      return fmt("%.0f.", v)
    end
  elseif maxa >= 1e8 or (mina < 1e-4 and mina ~= huge) or (maxa / mina > 1e3 and mina < 1e-2) then
    f = function(v)
      if v ~= v then return "nan" end
      if v == huge then return "inf" end
      if v == -huge then return "-inf" end
      return fmt("%.4e", v)
    end
  else
    f = function(v)
      if v ~= v then return "nan" end
      if v == huge then return "inf" end
      if v == -huge then return "-inf" end
      return fmt("%.4f", v)
    end
  end
  local w = 1
  for _, v in ipairs(vals) do w = math.max(w, #f(v)) end
  return function(v)
    local s = f(v)
    return string.rep(" ", w - #s) .. s
  end, w
end

function M.tostring(t)
  local c = t._c
  local shape = t:shape()
  local nd = #shape
  local numel = t:numel()
  local footer = {}
  footer[#footer + 1] = t:dtype()
  footer[#footer + 1] = "shape " .. Tensor._shape_string(shape)
  if c.device ~= 0 then footer[#footer + 1] = t:device() end
  if t._node then
    footer[#footer + 1] = "grad_fn=" .. t._node.name
  elseif t._rg then
    footer[#footer + 1] = "requires_grad"
  end
  local foot = "[" .. table.concat(footer, ", ") .. "]"
  if c.device ~= 0 then
    -- the values of a CPU copy (never the device pointer); without one, none are shown
    local h = Tensor._host_copy(t)
    if not h then return "tensor(<values on " .. t:device() .. ">)\n" .. foot end
    c = h._c
  end

  local summarize = numel > M.threshold
  local p = ffi.cast(lib.ptr_types[c.dtype], c.data)
  local dt = c.dtype
  local strides = {}
  for i = 0, nd - 1 do strides[i + 1] = tonumber(c.strides[i]) end
  local read = Tensor._read_elem

  -- indices printed along a dim of size n
  local function indices(n)
    if summarize and n > 2 * M.edgeitems then
      local r = {}
      for i = 1, M.edgeitems do r[#r + 1] = i end
      r[#r + 1] = false -- the ellipsis
      for i = n - M.edgeitems + 1, n do r[#r + 1] = i end
      return r
    end
    local r = {}
    for i = 1, n do r[i] = i end
    return r
  end

  -- gather the printed values to choose one format
  local vals = {}
  local function collect(d, off)
    if d > nd then vals[#vals + 1] = read(p, dt, off) return end
    for _, i in ipairs(indices(shape[d])) do
      if i then collect(d + 1, off + (i - 1) * strides[d]) end
    end
  end
  if numel > 0 then collect(1, 0) end
  local f = chooser(vals, lib.is_float[dt])

  if nd == 0 then
    return "tensor(" .. f(read(p, dt, 0)):match("^%s*(.-)$") .. ")\n" .. foot
  end
  if numel == 0 then
    return "tensor([])\n" .. foot
  end

  local prefix = "tensor("
  local function render(d, off, indent) -- refers to c: a host copy stays alive while p is read
    if d == c.ndim then
      local parts, line, lines = {}, "", {}
      for _, i in ipairs(indices(shape[d])) do
        parts[#parts + 1] = i and f(read(p, dt, off + (i - 1) * strides[d])) or "..."
      end
      -- wrap long rows
      for k, s in ipairs(parts) do
        local piece = s .. (k < #parts and ", " or "")
        if #line + #piece + indent > M.linewidth and #line > 0 then
          lines[#lines + 1] = line
          line = ""
        end
        line = line .. piece
      end
      lines[#lines + 1] = line
      return "[" .. table.concat(lines, "\n" .. string.rep(" ", indent + 1)) .. "]"
    end
    local rows = {}
    for _, i in ipairs(indices(shape[d])) do
      rows[#rows + 1] = i and render(d + 1, off + (i - 1) * strides[d], indent + 1) or "..."
    end
    local sep = "," .. string.rep("\n", nd - d) .. string.rep(" ", indent + 1)
    return "[" .. table.concat(rows, sep) .. "]"
  end
  return prefix .. render(1, 0, #prefix) .. ")\n" .. foot
end

Tensor._mt.__tostring = M.tostring

return M
