-- tern.serialize: safetensors files. tn.save(path, {name = tensor, ...}, metadata) writes
-- atomically (temporary file, fsync, rename); tn.load(path, {device=}) returns {name = tensor},
-- metadata; read_header(path) checks and returns the header alone (tern.checkpoint reads it
-- first). Tensors on a device are saved from a CPU copy; load reads into CPU tensors and moves
-- them to opts.device afterwards.
--
-- Layout (https://github.com/huggingface/safetensors): u64 little-endian header length N,
-- N bytes of JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...,
-- "__metadata__": {str: str}}, padded with spaces to a multiple of 8, then the data buffer,
-- tensors back to back in row-major little-endian order.
local lib = require "tern.lib"
local Tensor = require "tern.tensor"

local ffi, C = lib.ffi, lib.C
local fmt, floor = string.format, math.floor

local M = {}

local to_st = { [0] = "F32", "F64", "F16", "BF16", "I32", "I64", "U8" }
local from_st = { F32 = 0, F64 = 1, F16 = 2, BF16 = 3, I32 = 4, I64 = 5, U8 = 6, BOOL = 6 }

-- JSON ---------------------------------------------------------------------------------------

local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(ch)
    return escapes[ch] or fmt("\\u%04x", ch:byte())
  end) .. '"'
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks)
  return ks
end

-- A small JSON reader: objects, arrays, strings, numbers, true, false, null.
local function json_decode(s, where)
  local pos = 1
  local function fail(msg)
    error(fmt("load: %s: malformed safetensors header: %s at byte %d", where, msg, pos), 0)
  end
  local function ws()
    pos = s:find("[^ \t\r\n]", pos) or #s + 1
  end
  local value
  -- Opens an object or array at pos: true when it is empty (its closing bracket consumed).
  local function open(close)
    pos = pos + 1
    ws()
    if s:sub(pos, pos) == close then pos = pos + 1 return true end
    return false
  end
  -- After a member or element: true at ',', false at the closing bracket (both consumed).
  local function more(close)
    ws()
    local d = s:sub(pos, pos)
    pos = pos + 1
    if d == close then return false end
    if d ~= "," then fail("expected ',' or '" .. close .. "'") end
    return true
  end
  local function str()
    pos = pos + 1 -- opening quote
    local buf = {}
    while true do
      local c = s:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == '"' then pos = pos + 1 break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local simple = { ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t' }
        if simple[e] then
          buf[#buf + 1] = simple[e]
          pos = pos + 2
        elseif e == "u" then
          local hex = s:sub(pos + 2, pos + 5)
          local cp = tonumber(hex, 16)
          if not cp or #hex ~= 4 then fail("bad \\u escape") end
          pos = pos + 6
          if cp >= 0xD800 and cp <= 0xDBFF and s:sub(pos, pos + 1) == "\\u" then
            local lo = tonumber(s:sub(pos + 2, pos + 5), 16)
            if lo and lo >= 0xDC00 and lo <= 0xDFFF then
              cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
              pos = pos + 6
            end
          end
          if cp < 0x80 then buf[#buf + 1] = string.char(cp)
          elseif cp < 0x800 then
            buf[#buf + 1] = string.char(0xC0 + floor(cp / 64), 0x80 + cp % 64)
          elseif cp < 0x10000 then
            buf[#buf + 1] = string.char(0xE0 + floor(cp / 4096), 0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
          else
            buf[#buf + 1] = string.char(0xF0 + floor(cp / 262144), 0x80 + floor(cp / 4096) % 64,
              0x80 + floor(cp / 64) % 64, 0x80 + cp % 64)
          end
        else
          fail("bad escape")
        end
      else
        local stop = s:find('["\\]', pos) or #s + 1
        buf[#buf + 1] = s:sub(pos, stop - 1)
        pos = stop
      end
    end
    return table.concat(buf)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local obj = {}
      if open("}") then return obj end
      repeat
        ws()
        if s:sub(pos, pos) ~= '"' then fail("expected a key") end
        local k = str()
        ws()
        if s:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        obj[k] = value()
      until not more("}")
      return obj
    elseif c == "[" then
      local arr = {}
      if open("]") then return arr end
      repeat arr[#arr + 1] = value() until not more("]")
      return arr
    elseif c == '"' then
      return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4 return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5 return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4 return nil
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num or num == "" then fail("unexpected character '" .. c .. "'") end
      pos = pos + #num
      return tonumber(num)
    end
  end
  local v = value()
  ws()
  if pos <= #s then fail("trailing characters") end
  return v
end
M._json_decode = json_decode
M._json_string = json_string -- tern.checkpoint writes its JSON with it

-- save ---------------------------------------------------------------------------------------

function M.save(path, tensors, metadata)
  if type(path) ~= "string" then error("save: path must be a string, got " .. type(path), 2) end
  if type(tensors) ~= "table" or Tensor.is_tensor(tensors) then
    error("save: expected a table {name = tensor, ...}", 2)
  end
  local names = sorted_keys(tensors)
  local parts, list, offset = {}, {}, 0
  for _, name in ipairs(names) do
    local t = tensors[name]
    if type(name) ~= "string" then error("save: tensor names must be strings, got " .. type(name), 2) end
    if name == "__metadata__" then error("save: '__metadata__' is reserved", 2) end
    if not Tensor.is_tensor(t) then
      error(fmt("save: '%s' is a %s, not a tensor", name, type(t)), 2)
    end
    if t._c.device ~= 0 then
      local h, err = Tensor._host_copy(t)
      if not h then
        error(fmt("save: '%s': cannot copy the %s tensor to the host: %s", name, t:device(), err), 2)
      end
      t = h
    end
    local nbytes = t:numel() * tonumber(C.tn_dtype_size(t._c.dtype))
    local shape = t:shape()
    parts[#parts + 1] = fmt('%s:{"dtype":"%s","shape":[%s],"data_offsets":[%d,%d]}',
      json_string(name), to_st[t._c.dtype], table.concat(shape, ","), offset, offset + nbytes)
    offset = offset + nbytes
    list[#list + 1] = t
  end
  if metadata ~= nil then
    if type(metadata) ~= "table" then error("save: metadata must be a table of strings", 2) end
    local mparts = {}
    for _, k in ipairs(sorted_keys(metadata)) do
      local v = metadata[k]
      if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
        error(fmt("save: metadata entries must map strings to strings, got %s = %s", tostring(k), type(v)), 2)
      end
      mparts[#mparts + 1] = json_string(k) .. ":" .. json_string(tostring(v))
    end
    table.insert(parts, 1, '"__metadata__":{' .. table.concat(mparts, ",") .. "}")
  end
  local header = "{" .. table.concat(parts, ",") .. "}"
  header = header .. string.rep(" ", (8 - (#header % 8)) % 8)
  local arr = ffi.new("const tn_tensor *[?]", math.max(1, #list))
  for i, t in ipairs(list) do arr[i - 1] = t._c end
  lib.check(C.tn_io_write(path, header, #header, arr, #list), 2)
end

-- load ---------------------------------------------------------------------------------------

-- Read and check the header of the safetensors file at path without reading tensor data.
-- Returns hdr ({name = {dtype=, shape=, data_offsets=}, __metadata__ = {...}}), the byte
-- offset where the data buffer starts and the file size. level: the caller's error level.
function M.read_header(path, level)
  level = (level or 1) + 1
  if type(path) ~= "string" then error("load: path must be a string, got " .. type(path), level) end
  local f, err = io.open(path, "rb")
  if not f then error("load: cannot open " .. tostring(err), level) end
  local size = f:seek("end")
  f:seek("set", 0)
  local head = f:read(8)
  if not head or #head < 8 then
    f:close()
    error(fmt("load: %s: file of %d bytes is too short for a safetensors header", path, size), level)
  end
  local n = 0
  for i = 8, 1, -1 do n = n * 256 + head:byte(i) end
  if n > size - 8 or n > 100 * 1024 * 1024 then
    f:close()
    error(fmt("load: %s: header length %d does not fit in a file of %d bytes", path, n, size), level)
  end
  local json = f:read(n)
  f:close()
  local ok, hdr = pcall(json_decode, json, path)
  if not ok then error(hdr, level) end
  if type(hdr) ~= "table" or hdr[1] ~= nil then -- a JSON array decodes to a Lua list
    error("load: " .. path .. ": header is not a JSON object", level)
  end
  return hdr, 8 + n, size
end

function M.load(path, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("load: opts must be a table {device =}, got " .. type(opts), 2)
  end
  local device, index = 0, nil
  if opts and opts.device ~= nil then device, index = Tensor._device_arg(opts.device, "load: device", 2) end
  local hdr, data_start = M.read_header(path, 2)
  local out, metadata = {}, hdr.__metadata__
  for name, info in pairs(hdr) do
    if name ~= "__metadata__" then
      local dt = type(info) == "table" and from_st[info.dtype]
      if not dt then
        error(fmt("load: %s: tensor '%s' has dtype %s, which tern does not support (F32, F64, F16, BF16, I32, I64, U8, BOOL)",
          path, name, type(info) == "table" and tostring(info.dtype) or "?"), 2)
      end
      local shape, offs = info.shape, info.data_offsets
      if type(shape) ~= "table" or type(offs) ~= "table" or #offs ~= 2 then
        error(fmt("load: %s: tensor '%s' lacks shape or data_offsets", path, name), 2)
      end
      local numel = 1 -- checked before allocating: a corrupt shape must not allocate terabytes
      for _, d in ipairs(shape) do
        if type(d) ~= "number" or d < 0 or d ~= floor(d) then
          error(fmt("load: %s: tensor '%s' has a bad shape entry %s", path, name, tostring(d)), 2)
        end
        numel = numel * d
      end
      local nbytes = numel * tonumber(C.tn_dtype_size(dt))
      if type(offs[1]) ~= "number" or type(offs[2]) ~= "number" or offs[2] - offs[1] ~= nbytes or offs[1] < 0 then
        error(fmt("load: %s: tensor '%s' of shape {%s} %s needs %d bytes, data_offsets give [%s, %s]",
          path, name, table.concat(shape, ", "), lib.dtype_names[dt], nbytes, tostring(offs[1]), tostring(offs[2])), 2)
      end
      local t = Tensor.empty(shape, { dtype = dt })
      if nbytes > 0 then lib.check(C.tn_io_read(t._c, path, data_start + offs[1]), 2) end
      if device ~= 0 then t = Tensor._to_device(t, device, index, 2) end
      out[name] = t
    end
  end
  return out, metadata
end

return M
