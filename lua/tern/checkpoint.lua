-- tern.checkpoint: training checkpoints, one safetensors file each.
--
--   local ck = tn.checkpoint.Manager{dir = "exp/ckpt", keep_last = 3, keep_best = 1,
--                                    metric = "wer", mode = "min"}
--   local step, epoch = ck:restore{model = model, optimizer = opt, scaler = scaler, lr = sched}
--   ...
--   ck:save{step = step, epoch = epoch, model = model, optimizer = opt, scaler = scaler,
--           lr = sched, metrics = {wer = wer}, extra = {best_loss = 1.25}}
--
-- A checkpoint holds every component's state_dict() (model, optimizer, loss scaler, LR
-- policy, any other object with state_dict/load_state_dict), the global RNG state, step,
-- epoch, metrics and user fields. Contract: state_dict() returns a nested Lua table whose
-- leaves are tern Tensors, numbers, strings, booleans or 64-bit integer cdata; restore
-- hands load_state_dict() the same nested shape back.
--
-- File layout: the tensors under dotted names ("model.encoder.weight", "optimizer.state.3.
-- exp_avg"), so any safetensors reader sees them; __metadata__ = {format = "tern.checkpoint",
-- format_version = "1", tern = <JSON document>, tern_checksum = <hex>}. The document holds the
-- state trees with each tensor replaced by {"$tensor": name}, numbers written so they read
-- back exactly (integers as integers, others as the shortest of %.15g/%.16g/%.17g that
-- round-trips; {"$num": "inf"|"-inf"|"nan"}),
-- 64-bit cdata as {"$u64"|"$i64": "digits"}, tables that are neither lists nor string-keyed
-- as {"$pairs": [[k, v], ...]}, and an FNV-1a-64 checksum of every tensor's bytes.
--
-- Writes go to a temporary file in the same folder, which is fsynced, renamed over the target
-- and the folder fsynced (tern.serialize / core/io.c): a crash or a failed save never leaves a
-- half file and never touches existing files. Loads check the format, the version, the file
-- size against the header, every checksum and, on restore, the model's names, shapes and
-- dtypes; each error names the file and the problem.
local ffi = require "ffi"
local bit = require "bit"
local lib = require "tern.lib"
local Tensor = require "tern.tensor"
local serialize = require "tern.serialize"

local fmt, floor, huge = string.format, math.floor, math.huge
local is_tensor = Tensor.is_tensor

local M = {}

M.FORMAT = "tern.checkpoint"
M.FORMAT_VERSION = 1

-- fields of save{...} that are not components
local RESERVED = { step = true, epoch = true, metrics = true, extra = true }
-- restore order of the usual components (modules first, then these, then the others by name)
local ORDER = { model = 1, optimizer = 2, scaler = 3, lr = 4 }

-- checksums ------------------------------------------------------------------------------------

local FNV_BASIS, FNV_PRIME = 0xcbf29ce484222325ULL, 0x100000001b3ULL
local u64p, u8p = ffi.typeof("const uint64_t *"), ffi.typeof("const uint8_t *")
local bxor = bit.bxor

-- FNV-1a over the 64-bit little-endian words of nbytes bytes at ptr, then the tail bytes.
-- Changing any one word always changes the result (each step is a bijection of the state).
local function fnv64(ptr, nbytes)
  local h = FNV_BASIS
  local nw = floor(nbytes / 8)
  local w = ffi.cast(u64p, ptr)
  for i = 0, nw - 1 do h = bxor(h, w[i]) * FNV_PRIME end
  local b = ffi.cast(u8p, ptr)
  for i = nw * 8, nbytes - 1 do h = bxor(h, b[i]) * FNV_PRIME end
  return bit.tohex(h, 16)
end

local function tensor_checksum(t) -- t: contiguous, on the CPU (never a device pointer)
  if t._c.device ~= 0 or not t:is_contiguous() then
    error("tn.checkpoint: internal error: checksum of a " .. t:device()
      .. " tensor that is not a contiguous CPU tensor", 0)
  end
  local n = t:numel() * tonumber(lib.C.tn_dtype_size(t._c.dtype))
  if n == 0 then return fnv64(nil, 0) end
  return fnv64(t._c.data, n) -- callers keep t (ctx.tensors, the loaded table) while it reads
end

local function string_checksum(s) return fnv64(s, #s) end

-- JSON writing ---------------------------------------------------------------------------------

local json_string = serialize._json_string

-- The shortest decimal that reads back as exactly x; {"$num": ...} for inf and nan.
local function json_number(x)
  if x ~= x then return '{"$num":"nan"}' end
  if x == huge then return '{"$num":"inf"}' end
  if x == -huge then return '{"$num":"-inf"}' end
  if x == 0 then return 1 / x < 0 and "-0" or "0" end
  if x == floor(x) and x > -2 ^ 63 and x < 2 ^ 63 then return fmt("%d", x) end -- integers as integers
  for _, f in ipairs({ "%.15g", "%.16g" }) do
    local s = fmt(f, x)
    if tonumber(s) == x then return s end
  end
  return fmt("%.17g", x)
end

local function key_order(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return ta < tb end
  if ta == "boolean" then return (not a) and b end
  return a < b
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, key_order)
  return ks
end

local function join(prefix, k) return prefix == "" and tostring(k) or prefix .. "." .. tostring(k) end

-- Encode value v (reached by path, the dotted tensor-name prefix) as JSON into buf; tensors go
-- to ctx.tensors under unique dotted names. Raises "where: <problem> at <path>".
local encode
local function encode_table(v, path, ctx, buf)
  if ctx.seen[v] then error(fmt("%s: a table contains itself at '%s'", ctx.where, path), 0) end
  ctx.seen[v] = true
  local n, count, all_string = #v, 0, true
  for k in pairs(v) do
    count = count + 1
    if type(k) ~= "string" or k:sub(1, 1) == "$" then all_string = false end
  end
  if n > 0 and count == n then -- a list 1..n
    buf[#buf + 1] = "["
    for i = 1, n do
      if i > 1 then buf[#buf + 1] = "," end
      encode(v[i], join(path, i), ctx, buf)
    end
    buf[#buf + 1] = "]"
  elseif all_string then
    buf[#buf + 1] = "{"
    for i, k in ipairs(sorted_keys(v)) do
      if i > 1 then buf[#buf + 1] = "," end
      buf[#buf + 1] = json_string(k) .. ":"
      encode(v[k], join(path, k), ctx, buf)
    end
    buf[#buf + 1] = "}"
  else
    buf[#buf + 1] = '{"$pairs":['
    for i, k in ipairs(sorted_keys(v)) do
      local tk = type(k)
      if tk ~= "string" and tk ~= "number" and tk ~= "boolean" then
        error(fmt("%s: a %s key at '%s' (keys must be strings, numbers or booleans)", ctx.where, tk, path), 0)
      end
      if i > 1 then buf[#buf + 1] = "," end
      buf[#buf + 1] = "["
      encode(k, path, ctx, buf)
      buf[#buf + 1] = ","
      encode(v[k], join(path, k), ctx, buf)
      buf[#buf + 1] = "]"
    end
    buf[#buf + 1] = "]}"
  end
  ctx.seen[v] = nil
end

function encode(v, path, ctx, buf)
  local tv = type(v)
  if tv == "number" then
    buf[#buf + 1] = json_number(v)
  elseif tv == "string" then
    buf[#buf + 1] = json_string(v)
  elseif tv == "boolean" then
    buf[#buf + 1] = tostring(v)
  elseif is_tensor(v) then
    local name, k = path, 1
    while ctx.tensors[name] or name == "__metadata__" do
      k = k + 1
      name = path .. "~" .. k
    end
    local t = v:detach()
    if t._c.device ~= 0 then
      -- saved through a CPU copy (contiguous); Lua never reads device memory
      local h, err = Tensor._host_copy(t)
      if not h then
        error(fmt("%s: cannot copy the %s tensor at '%s' to the host: %s", ctx.where, t:device(), path, err), 0)
      end
      t = h
    end
    if not t:is_contiguous() then t = t:contiguous() end
    ctx.tensors[name] = t
    ctx.checksums[name] = tensor_checksum(t)
    buf[#buf + 1] = '{"$tensor":' .. json_string(name) .. "}"
  elseif tv == "table" then
    encode_table(v, path, ctx, buf)
  elseif tv == "cdata" and (ffi.istype("uint64_t", v) or ffi.istype("int64_t", v)) then
    local tag = ffi.istype("uint64_t", v) and "$u64" or "$i64"
    buf[#buf + 1] = fmt('{"%s":"%s"}', tag, (tostring(v):gsub("U?LL$", "")))
  else
    error(fmt("%s: cannot store a %s at '%s' (leaves must be tensors, numbers, strings, booleans "
      .. "or 64-bit integer cdata)", ctx.where, tv, path), 0)
  end
end

-- JSON reading ---------------------------------------------------------------------------------

local function parse_int64(s, ctype)
  local neg = s:sub(1, 1) == "-"
  local digits = neg and s:sub(2) or s
  if not digits:match("^%d+$") or #digits > 20 then return nil end
  local v = ffi.new(ctype, 0)
  for i = 1, #digits do v = v * 10 + (digits:byte(i) - 48) end
  if neg then v = -v end
  return v
end

-- Rebuild a value from its decoded JSON form; tensors come from ctx.tensors.
local function decode(v, ctx)
  if type(v) ~= "table" then return v end
  local tag = v["$tensor"] or v["$num"] or v["$u64"] or v["$i64"] or v["$pairs"]
  if tag ~= nil then
    if v["$tensor"] then
      local t = ctx.tensors[v["$tensor"]]
      if not t then
        ctx.fail(fmt("the document refers to tensor '%s', which the file lacks", tostring(v["$tensor"])))
      end
      return t
    elseif v["$num"] then
      local x = ({ inf = huge, ["-inf"] = -huge, nan = 0 / 0 })[v["$num"]]
      if not x then ctx.fail(fmt("bad number %s", tostring(v["$num"]))) end
      return x
    elseif v["$u64"] or v["$i64"] then
      local s = v["$u64"] or v["$i64"]
      local x = type(s) == "string" and parse_int64(s, v["$u64"] and "uint64_t" or "int64_t")
      if not x then ctx.fail(fmt("bad 64-bit integer %s", tostring(s))) end
      return x
    else
      local r = {}
      for _, kv in ipairs(v["$pairs"]) do
        local k = decode(kv[1], ctx)
        if k == nil or k ~= k then ctx.fail("bad key in a $pairs table") end
        r[k] = decode(kv[2], ctx)
      end
      return r
    end
  end
  local r = {}
  for k, x in pairs(v) do r[k] = decode(x, ctx) end
  return r
end

-- files and folders ----------------------------------------------------------------------------

pcall(ffi.cdef, "typedef struct __dirstream DIR;")
pcall(ffi.cdef, [[struct tn_ck_dirent { uint64_t d_ino; int64_t d_off; unsigned short d_reclen;
  unsigned char d_type; char d_name[256]; };]])
for _, decl in ipairs({
  "DIR *opendir(const char *name);",
  "struct tn_ck_dirent *readdir(DIR *dirp);",
  "int closedir(DIR *dirp);",
  "int mkdir(const char *pathname, unsigned int mode);",
  "int open(const char *pathname, int flags, ...);",
  "int fsync(int fd);",
  "int close(int fd);",
  "char *strerror(int errnum);",
}) do pcall(ffi.cdef, decl) end
-- readdir under its own name: the layout of struct dirent is glibc's on 64-bit Linux
local readdir = ffi.cast("struct tn_ck_dirent *(*)(DIR *)", ffi.C.readdir)

local function strerror(e) return ffi.string(ffi.C.strerror(e)) end

-- Names of the entries of folder dir, or nil, message.
local function list_dir(dir)
  local d = ffi.C.opendir(dir)
  if d == nil then return nil, strerror(ffi.errno()) end
  local names = {}
  while true do
    local e = readdir(d)
    if e == nil then break end
    local name = ffi.string(e.d_name)
    if name ~= "." and name ~= ".." then names[#names + 1] = name end
  end
  ffi.C.closedir(d)
  return names
end

local function is_dir(path)
  local d = ffi.C.opendir(path)
  if d == nil then return false end
  ffi.C.closedir(d)
  return true
end

-- mkdir -p; raises naming the folder.
local function make_dirs(dir, where)
  if is_dir(dir) then return end
  local acc = dir:sub(1, 1) == "/" and "" or "."
  for part in dir:gmatch("[^/]+") do
    acc = acc .. "/" .. part
    if not is_dir(acc) and ffi.C.mkdir(acc, tonumber("777", 8)) ~= 0 then
      local e = ffi.errno()
      if not is_dir(acc) then
        error(fmt("%s: cannot create folder %s: %s", where, acc, strerror(e)), 0)
      end
    end
  end
end

local function sync_dir(dir)
  local fd = ffi.C.open(dir, 0) -- O_RDONLY
  if fd >= 0 then
    ffi.C.fsync(fd)
    ffi.C.close(fd)
  end
end

-- save -----------------------------------------------------------------------------------------

local function check_number(x, what, where)
  if type(x) ~= "number" then error(fmt("%s: %s must be a number, got %s", where, what, type(x)), 0) end
end

-- Gather everything into (tensors, metadata) without writing; raises on any problem.
local function collect(fields, where)
  if type(fields) ~= "table" or is_tensor(fields) then
    error(fmt("%s: expected a table {step =, epoch =, model =, optimizer =, ...}, got %s", where, type(fields)), 0)
  end
  if fields.step ~= nil then check_number(fields.step, "step", where) end
  if fields.epoch ~= nil then check_number(fields.epoch, "epoch", where) end
  if fields.metrics ~= nil then
    if type(fields.metrics) ~= "table" then
      error(fmt("%s: metrics must be a table {name = number}, got %s", where, type(fields.metrics)), 0)
    end
    for k, x in pairs(fields.metrics) do
      if type(k) ~= "string" then error(fmt("%s: metric names must be strings, got %s", where, type(k)), 0) end
      check_number(x, "metrics." .. k, where)
    end
  end
  local names = {}
  for name, comp in pairs(fields) do
    if not RESERVED[name] then
      if type(name) ~= "string" or name == "" or name:find("[.~]") then
        error(fmt("%s: component names must be non-empty strings without '.' or '~', got %s", where, tostring(name)), 0)
      end
      if type(comp) ~= "table" or type(comp.state_dict) ~= "function" then
        error(fmt("%s: component '%s' must have a state_dict() method, got %s (put plain values in extra = {...})",
          where, name, is_tensor(comp) and "a tensor" or type(comp)), 0)
      end
      names[#names + 1] = name
    end
  end
  table.sort(names)
  local ctx = { tensors = {}, checksums = {}, seen = {}, where = where }
  local buf = { "{" }
  local function field(k, sep)
    buf[#buf + 1] = (sep and "," or "") .. json_string(k) .. ":"
  end
  field("format_version")
  buf[#buf + 1] = tostring(M.FORMAT_VERSION)
  field("tern_version", true)
  buf[#buf + 1] = json_string(ffi.string(lib.C.tn_version()))
  field("time", true)
  buf[#buf + 1] = json_number(os.time())
  if fields.step ~= nil then field("step", true) encode(fields.step, "step", ctx, buf) end
  if fields.epoch ~= nil then field("epoch", true) encode(fields.epoch, "epoch", ctx, buf) end
  field("metrics", true)
  encode(fields.metrics or {}, "metrics", ctx, buf)
  field("extra", true)
  encode(fields.extra == nil and {} or fields.extra, "extra", ctx, buf)
  field("rng", true)
  encode(Tensor.rng_state(), "rng", ctx, buf)
  field("state", true)
  buf[#buf + 1] = "{"
  for i, name in ipairs(names) do
    local comp = fields[name]
    local ok, sd = pcall(comp.state_dict, comp)
    if not ok then error(fmt("%s: %s:state_dict() failed: %s", where, name, tostring(sd)), 0) end
    if sd == nil then error(fmt("%s: %s:state_dict() returned nil", where, name), 0) end
    if i > 1 then buf[#buf + 1] = "," end
    buf[#buf + 1] = json_string(name) .. ":"
    encode(sd, name, ctx, buf)
  end
  buf[#buf + 1] = "}"
  field("checksums", true)
  local cks = { "{" }
  for i, k in ipairs(sorted_keys(ctx.checksums)) do
    cks[#cks + 1] = (i > 1 and "," or "") .. json_string(k) .. ":" .. json_string(ctx.checksums[k])
  end
  buf[#buf + 1] = table.concat(cks) .. "}}"
  local doc = table.concat(buf)
  local metadata = {
    format = M.FORMAT,
    format_version = tostring(M.FORMAT_VERSION),
    tern = doc,
    tern_checksum = string_checksum(doc),
  }
  return ctx.tensors, metadata
end

local function write(path, fields, where)
  local tensors, metadata = collect(fields, where .. ": " .. path)
  local ok, err = pcall(serialize.save, path, tensors, metadata)
  if not ok then
    error(fmt("%s: %s: the write failed, existing files are untouched: %s", where, path, tostring(err)), 0)
  end
  return path
end

-- tn.checkpoint.save(path, {step =, epoch =, metrics = {..}, extra = {..}, <name> = component,
-- ...}) writes one checkpoint atomically and returns path. Components are objects with
-- state_dict() (modules, optimizers, scalers, LR policies); the RNG state is always saved.
function M.save(path, fields)
  if type(path) ~= "string" or path == "" then
    error("tn.checkpoint.save: path must be a non-empty string, got " .. tostring(path), 2)
  end
  local ok, err = pcall(write, path, fields, "tn.checkpoint.save")
  if not ok then error(err, 2) end
  return path
end

-- load -----------------------------------------------------------------------------------------

-- msg of a tern.serialize error without its "load: <path>: " prefix
local function strip(msg, path)
  msg = tostring(msg):gsub("^load: ", "")
  if msg:sub(1, #path + 2) == path .. ": " then msg = msg:sub(#path + 3) end
  return msg
end

local function read(path, where)
  local function fail(msg) error(fmt("%s: %s: %s", where, path, msg), 0) end
  local f, oerr = io.open(path, "rb")
  if not f then fail("cannot open: " .. tostring(oerr)) end
  f:close()
  local ok, hdr, data_start, size = pcall(serialize.read_header, path)
  if not ok then fail("not a readable safetensors file: " .. strip(hdr, path)) end
  local meta = hdr.__metadata__
  if type(meta) ~= "table" or meta.format ~= M.FORMAT then
    fail(fmt("not a tern checkpoint (metadata format is %s, expected '%s')",
      type(meta) == "table" and meta.format and ("'" .. tostring(meta.format) .. "'") or "missing", M.FORMAT))
  end
  local version = tonumber(meta.format_version)
  if version ~= M.FORMAT_VERSION then
    fail(fmt("checkpoint format version %s is not supported (this tern reads version %d)",
      tostring(meta.format_version), M.FORMAT_VERSION))
  end
  local data_end = 0
  for name, info in pairs(hdr) do
    if name ~= "__metadata__" then
      local offs = type(info) == "table" and info.data_offsets
      if type(offs) ~= "table" or type(offs[2]) ~= "number" then
        fail(fmt("corrupt header: tensor '%s' has no data_offsets", tostring(name)))
      end
      if offs[2] > data_end then data_end = offs[2] end
    end
  end
  if size < data_start + data_end then
    fail(fmt("truncated: the header needs %d bytes of tensor data, the file holds %d (file of %d bytes, %d expected)",
      data_end, size - data_start, size, data_start + data_end))
  elseif size > data_start + data_end then
    fail(fmt("corrupt: %d bytes after the tensor data (file of %d bytes, %d expected)",
      size - data_start - data_end, size, data_start + data_end))
  end
  if type(meta.tern) ~= "string" or meta.tern_checksum ~= string_checksum(meta.tern) then
    fail("corrupt: the checkpoint document fails its checksum")
  end
  local okd, doc = pcall(serialize._json_decode, meta.tern, path)
  if not okd or type(doc) ~= "table" then fail("corrupt: the checkpoint document is not valid JSON") end
  local okl, tensors = pcall(serialize.load, path)
  if not okl then fail(strip(tensors, path)) end
  local checksums = type(doc.checksums) == "table" and doc.checksums or {}
  for name, t in pairs(tensors) do
    local want = checksums[name]
    if want == nil then fail(fmt("corrupt: tensor '%s' is not listed in the checkpoint document", name)) end
    if tensor_checksum(t) ~= want then
      fail(fmt("corrupt: the data of tensor '%s' (%s %s) fails its checksum", name, t:shape_string(), t:dtype()))
    end
  end
  for name in pairs(checksums) do
    if not tensors[name] then fail(fmt("corrupt: tensor '%s' is missing from the file", name)) end
  end
  local ctx = { tensors = tensors, fail = function(msg) fail("corrupt: " .. msg) end }
  local out = {
    path = path,
    format_version = version,
    tern_version = doc.tern_version,
    time = doc.time,
    step = decode(doc.step, ctx),
    epoch = decode(doc.epoch, ctx),
    metrics = decode(doc.metrics or {}, ctx),
    extra = decode(doc.extra, ctx),
    rng = decode(doc.rng, ctx),
    state = decode(doc.state or {}, ctx),
  }
  return out
end

-- tn.checkpoint.load(path) → {step, epoch, metrics, extra, rng, state = {<component> = its
-- state_dict as saved}, path, time, tern_version, format_version}. Raises naming the file and
-- the problem for a missing, truncated, corrupt or foreign file.
function M.load(path)
  if type(path) ~= "string" then error("tn.checkpoint.load: path must be a string, got " .. type(path), 2) end
  local ok, r = pcall(read, path, "tn.checkpoint.load")
  if not ok then error(r, 2) end
  return r
end

-- Header of path without tensor data: {step, epoch, metrics, time} or nil, message.
local function peek(path)
  local ok, hdr = pcall(serialize.read_header, path)
  if not ok then return nil, tostring(hdr) end
  local meta = hdr.__metadata__
  if type(meta) ~= "table" or meta.format ~= M.FORMAT then return nil, "not a tern checkpoint" end
  if tonumber(meta.format_version) ~= M.FORMAT_VERSION then return nil, "unsupported format version" end
  if type(meta.tern) ~= "string" or meta.tern_checksum ~= string_checksum(meta.tern) then
    return nil, "the checkpoint document fails its checksum"
  end
  local okd, doc = pcall(serialize._json_decode, meta.tern, path)
  if not okd or type(doc) ~= "table" then return nil, "the checkpoint document is not valid JSON" end
  local ctx = { tensors = {}, fail = function(msg) error(msg, 0) end }
  local okm, metrics = pcall(decode, doc.metrics or {}, ctx)
  return { step = tonumber(doc.step), epoch = tonumber(doc.epoch), time = tonumber(doc.time) or 0,
    metrics = okm and metrics or {} }
end
M.peek = peek

-- restore --------------------------------------------------------------------------------------

local function is_module(x)
  return type(x) == "table" and type(x._modules) == "table" and type(x.forward) == "function"
    and type(x.state_dict) == "function"
end

-- Names, shapes and dtypes of saved module state sd against module m.
local function check_module(m, sd, name, fail, strict)
  if type(sd) ~= "table" then fail(fmt("%s: the saved state is a %s, not a table of tensors", name, type(sd))) end
  local own = m:state_dict()
  local missing, unexpected, bad = {}, {}, {}
  for k, t in pairs(own) do
    local s = sd[k]
    if s == nil then
      missing[#missing + 1] = k
    elseif not is_tensor(s) then
      bad[#bad + 1] = fmt("%s: saved a %s, the model has a tensor", k, type(s))
    elseif s:shape_string() ~= t:shape_string() then
      bad[#bad + 1] = fmt("%s: checkpoint %s, model %s", k, s:shape_string(), t:shape_string())
    elseif strict and s:dtype() ~= t:dtype() then
      bad[#bad + 1] = fmt("%s: checkpoint dtype %s, model dtype %s", k, s:dtype(), t:dtype())
    end
  end
  for k in pairs(sd) do
    if own[k] == nil then unexpected[#unexpected + 1] = k end
  end
  table.sort(missing); table.sort(unexpected); table.sort(bad)
  local problems = {}
  if #bad > 0 then problems[#problems + 1] = "shape/dtype mismatch: " .. table.concat(bad, "; ") end
  if strict and #missing > 0 then
    problems[#problems + 1] = "missing from the checkpoint: " .. table.concat(missing, ", ")
  end
  if strict and #unexpected > 0 then
    problems[#problems + 1] = "not in the model: " .. table.concat(unexpected, ", ")
  end
  if #problems > 0 then
    fail(fmt("the saved '%s' state does not match the module: %s", name, table.concat(problems, "; ")))
  end
end

local function apply(src, components, opts, where)
  if type(src) == "string" then src = read(src, where) end
  if type(src) ~= "table" or type(src.state) ~= "table" then
    error(where .. ": expected a checkpoint path or the table tn.checkpoint.load returned", 0)
  end
  local path = src.path or "(checkpoint table)"
  local function fail(msg) error(fmt("%s: %s: %s", where, path, msg), 0) end
  if components ~= nil and type(components) ~= "table" then
    fail("components must be a table {model =, optimizer =, ...}, got " .. type(components))
  end
  components = components or {}
  opts = opts or {}
  local strict = opts.strict ~= false
  local names, saved = {}, sorted_keys(src.state)
  for name, comp in pairs(components) do
    if type(comp) ~= "table" or type(comp.load_state_dict) ~= "function" then
      fail(fmt("component '%s' must have a load_state_dict() method, got %s", tostring(name), type(comp)))
    end
    if src.state[name] == nil then
      fail(fmt("the checkpoint has no '%s' state (it holds: %s)", tostring(name),
        #saved > 0 and table.concat(saved, ", ") or "nothing"))
    end
    names[#names + 1] = name
  end
  -- check every module before changing anything
  for _, name in ipairs(names) do
    if is_module(components[name]) then check_module(components[name], src.state[name], name, fail, strict) end
  end
  table.sort(names, function(a, b)
    local ma, mb = is_module(components[a]) and 0 or 1, is_module(components[b]) and 0 or 1
    if ma ~= mb then return ma < mb end
    local oa, ob = ORDER[a] or 99, ORDER[b] or 99
    if oa ~= ob then return oa < ob end
    return a < b
  end)
  for _, name in ipairs(names) do
    local comp = components[name]
    local ok, err
    if is_module(comp) then
      ok, err = pcall(comp.load_state_dict, comp, src.state[name], { strict = strict })
    else
      ok, err = pcall(comp.load_state_dict, comp, src.state[name])
    end
    if not ok then fail(fmt("%s:load_state_dict() failed: %s", name, tostring(err))) end
  end
  if opts.rng ~= false then
    if type(src.rng) ~= "table" then fail("the checkpoint has no RNG state") end
    local ok, err = pcall(Tensor.set_rng_state, src.rng)
    if not ok then fail("bad RNG state: " .. tostring(err)) end
  end
  return src.step, src.epoch, src.extra, src
end

-- tn.checkpoint.restore(path_or_loaded, {model =, optimizer =, scaler =, lr =, ...}, opts)
-- loads each named component (modules first, checked for names, shapes and dtypes before any
-- is changed) and the RNG state; returns step, epoch, extra, checkpoint. A component named
-- here but absent from the file is an error; components in the file not named are ignored.
-- opts.strict = false lets module keys be missing/unexpected and converts dtypes;
-- opts.rng = false leaves the RNG alone.
function M.restore(src, components, opts)
  local ok, a, b, c, d = pcall(apply, src, components, opts, "tn.checkpoint.restore")
  if not ok then error(a, 2) end
  return a, b, c, d
end

-- Manager --------------------------------------------------------------------------------------

local Manager = {}
Manager.__index = Manager
M.Manager = setmetatable({}, {
  __call = function(_, opts) return Manager.new(opts) end,
  __index = Manager,
})

-- tn.checkpoint.Manager{dir, prefix = "ckpt", keep_last = 3, keep_best = 1 (with metric) or 0,
-- metric = nil, mode = "min" | "max", log = function(msg) (default: a line on stderr)}: files
-- <dir>/<prefix>-<step>.safetensors; after each successful save, files that are neither among
-- the keep_last highest steps nor the keep_best best by metric are deleted (the file just
-- written never is; on equal metrics the newer one ranks first). Files the manager cannot
-- read are left alone.
function Manager.new(opts)
  local where = "tn.checkpoint.Manager"
  if type(opts) ~= "table" then error(where .. ": expected a table {dir =, keep_last =, ...}", 3) end
  local dir = opts.dir
  if type(dir) ~= "string" or dir == "" then
    error(where .. ": dir must be a non-empty string, got " .. tostring(dir), 3)
  end
  dir = dir:gsub("(.)/+$", "%1")
  local prefix = opts.prefix or "ckpt"
  if type(prefix) ~= "string" or not prefix:match("^[%w_%-]+$") then
    error(where .. ": prefix must be a string of letters, digits, '_' and '-', got " .. tostring(prefix), 3)
  end
  local keep_last = opts.keep_last == nil and 3 or opts.keep_last
  if type(keep_last) ~= "number" or keep_last < 1 or (keep_last ~= floor(keep_last) and keep_last ~= huge) then
    error(where .. ": keep_last must be a positive integer or math.huge, got " .. tostring(keep_last), 3)
  end
  local metric = opts.metric
  if metric ~= nil and type(metric) ~= "string" then
    error(where .. ": metric must be a string (a key of save's metrics), got " .. type(metric), 3)
  end
  local keep_best = opts.keep_best == nil and (metric and 1 or 0) or opts.keep_best
  if type(keep_best) ~= "number" or keep_best < 0 or (keep_best ~= floor(keep_best) and keep_best ~= huge) then
    error(where .. ": keep_best must be a non-negative integer, got " .. tostring(keep_best), 3)
  end
  if keep_best > 0 and not metric then
    error(where .. ": keep_best = " .. keep_best .. " needs metric = '<name>'", 3)
  end
  local mode = opts.mode or "min"
  if mode ~= "min" and mode ~= "max" then
    error(where .. ": mode must be 'min' or 'max', got " .. tostring(mode), 3)
  end
  local log = opts.log or function(msg) io.stderr:write(msg, "\n") end
  if type(log) ~= "function" then error(where .. ": log must be a function(msg), got " .. type(log), 3) end
  local ok, err = pcall(make_dirs, dir, where)
  if not ok then error(err, 3) end
  return setmetatable({ dir = dir, prefix = prefix, keep_last = keep_last, keep_best = keep_best,
    metric = metric, mode = mode, log = log }, Manager)
end

function Manager:path_for(step)
  return fmt("%s/%s-%09d.safetensors", self.dir, self.prefix, step)
end

-- Checkpoints in the folder, oldest first: {path, step, epoch, metrics, time}. Files named
-- like checkpoints that cannot be read are listed with .error and no step.
function Manager:list()
  local names, err = list_dir(self.dir)
  if not names then error(fmt("tn.checkpoint.Manager: cannot list %s: %s", self.dir, err), 2) end
  local pat = "^" .. self.prefix:gsub("%-", "%%-") .. "%-(%d+)%.safetensors$"
  local out = {}
  for _, name in ipairs(names) do
    if name:match(pat) then
      local path = self.dir .. "/" .. name
      local info, perr = peek(path)
      if info and info.step then
        info.path = path
        out[#out + 1] = info
      else
        out[#out + 1] = { path = path, error = perr or "no step" }
      end
    end
  end
  local valid = {}
  for _, e in ipairs(out) do if not e.error then valid[#valid + 1] = e end end
  table.sort(valid, function(a, b)
    if a.step ~= b.step then return a.step < b.step end
    return a.path < b.path
  end)
  for _, e in ipairs(out) do if e.error then valid[#valid + 1] = e end end
  return valid
end

-- Entries with a usable value of the metric, best first (newer first on ties).
function Manager:_ranked(entries)
  local ranked = {}
  for _, e in ipairs(entries) do
    local v = not e.error and e.metrics and e.metrics[self.metric]
    if type(v) == "number" and v == v then ranked[#ranked + 1] = e end
  end
  local sign = self.mode == "min" and 1 or -1
  table.sort(ranked, function(a, b)
    local va, vb = sign * a.metrics[self.metric], sign * b.metrics[self.metric]
    if va ~= vb then return va < vb end
    return a.step > b.step
  end)
  return ranked
end

-- Path of the checkpoint with the highest step, or nil.
function Manager:latest()
  local last
  for _, e in ipairs(self:list()) do if not e.error then last = e end end
  return last and last.path
end

-- Path of the checkpoint with the best metric, or nil.
function Manager:best()
  if not self.metric then error("tn.checkpoint.Manager:best: this manager has no metric", 2) end
  local r = self:_ranked(self:list())
  return r[1] and r[1].path
end

-- ck:save{step =, epoch =, metrics =, extra =, model =, optimizer =, ...} → path. step is
-- required (a non-negative integer). Prunes after the file is safely on disk.
function Manager:save(fields)
  local where = "tn.checkpoint.Manager:save"
  if type(fields) ~= "table" then error(where .. ": expected a table {step =, model =, ...}", 2) end
  local step = fields.step
  if type(step) ~= "number" or step < 0 or step ~= floor(step) then
    error(where .. ": step must be a non-negative integer, got " .. tostring(step), 2)
  end
  local path = self:path_for(step)
  local ok, err = pcall(write, path, fields, where)
  if not ok then error(err, 2) end
  local okp, perr = pcall(self._prune, self, path) -- the new file is safe; pruning is best effort
  if not okp then self.log(fmt("tn.checkpoint.Manager: pruning %s failed: %s", self.dir, tostring(perr))) end
  return path
end

function Manager:_prune(just_written)
  local entries = self:list()
  local keep = { [just_written] = true }
  local valid = {}
  for _, e in ipairs(entries) do if not e.error then valid[#valid + 1] = e end end
  for i = #valid, math.max(1, #valid - self.keep_last + 1), -1 do keep[valid[i].path] = true end
  if self.keep_best > 0 then
    local ranked = self:_ranked(valid)
    for i = 1, math.min(#ranked, self.keep_best) do keep[ranked[i].path] = true end
  end
  local removed = false
  for _, e in ipairs(valid) do
    if not keep[e.path] then
      local ok, err = os.remove(e.path)
      if ok then
        removed = true
      else
        self.log(fmt("tn.checkpoint.Manager: could not delete old checkpoint %s: %s", e.path, tostring(err)))
      end
    end
  end
  if removed then sync_dir(self.dir) end
end

-- ck:restore({model =, optimizer =, ...}, opts) restores the newest checkpoint that loads;
-- an unreadable newest file (truncated, corrupt) is reported through log and the one before it
-- is tried. Returns step, epoch, extra, checkpoint; or nil when the folder has no checkpoint.
-- Mismatches with the components (shapes, missing state) raise.
function Manager:restore(components, opts)
  local entries = self:list()
  local problems = {}
  for i = #entries, 1, -1 do
    local e = entries[i]
    if not e.error then
      local ok, loaded = pcall(read, e.path, "tn.checkpoint.Manager:restore")
      if ok then
        local ok2, a, b, c, d = pcall(apply, loaded, components, opts, "tn.checkpoint.Manager:restore")
        if not ok2 then error(a, 2) end
        return a, b, c, d
      end
      problems[#problems + 1] = tostring(loaded)
      self.log(tostring(loaded) .. "; trying an older checkpoint")
    end
  end
  if #problems > 0 then
    error(fmt("tn.checkpoint.Manager:restore: no checkpoint in %s loads: %s", self.dir,
      table.concat(problems, "; ")), 2)
  end
  return nil
end

return M
