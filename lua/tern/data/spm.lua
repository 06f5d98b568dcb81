-- tern.data.SentencePiece: SentencePiece tokens through libsentencepiece (core/spm.c).
--
--   local sp = tn.data.SentencePiece("exp/tokens/unigram256.model")
--   sp.size                      -- pieces in the vocabulary
--   sp:encode("where is my cup") -- {ids} (the model's 0-based ids)
--   sp:decode(ids)               -- "where is my cup"
--   sp:piece(id), sp:id("▁cup"), sp:kind(id)  -- "normal" | "unknown" | "control" | "unused" | "byte"
--   tn.data.SentencePiece.train{ input = "text.txt", model_prefix = "exp/tokens/unigram256",
--     vocab_size = 256, model_type = "unigram", ... }   -- any spm_train flag by name
--
-- train() writes <model_prefix>.model and .vocab (the library's own files). tn.data.SentencePiece.
-- available() says whether this build has the library (Debian: libsentencepiece-dev).
local lib = require "tern.lib"

local ffi, C = lib.ffi, lib.C
local fmt = string.format

local SP = {}
SP.__index = SP

local KINDS = { [0] = "normal", "unknown", "control", "unused", "byte" }

local function new(path)
  if type(path) ~= "string" or path == "" then
    error("tn.data.SentencePiece: expects the path of a .model file, got " .. tostring(path), 2)
  end
  local box = ffi.new("tn_spm*[1]")
  lib.check(C.tn_spm_load(path, box), 2)
  local self = setmetatable({ handle = ffi.gc(box[0], C.tn_spm_free), path = path }, SP)
  self.size = tonumber(C.tn_spm_size(self.handle))
  return self
end

local n_out = ffi.new("int64_t[1]")

function SP:encode(text)
  if type(text) ~= "string" then error("SentencePiece:encode: text must be a string, got " .. type(text), 2) end
  local cap = #text + 8
  local buf = ffi.new("int32_t[?]", cap)
  lib.check(C.tn_spm_encode(self.handle, text, buf, cap, n_out), 2)
  local n = tonumber(n_out[0])
  if n > cap then -- (byte fallback can give more ids than bytes)
    cap = n
    buf = ffi.new("int32_t[?]", cap)
    lib.check(C.tn_spm_encode(self.handle, text, buf, cap, n_out), 2)
  end
  local ids = {}
  for i = 1, n do ids[i] = buf[i - 1] end
  return ids
end

function SP:decode(ids)
  if type(ids) ~= "table" then error("SentencePiece:decode: ids must be a list of integers, got " .. type(ids), 2) end
  local n = #ids
  local arr = ffi.new("int32_t[?]", math.max(n, 1))
  for i = 1, n do
    local v = ids[i]
    if type(v) ~= "number" or v ~= math.floor(v) or v < 0 or v >= self.size then
      error(fmt("SentencePiece:decode: ids[%d] = %s is not an id in [0, %d)", i, tostring(v), self.size), 2)
    end
    arr[i - 1] = v
  end
  local cap = 16 * n + 16
  local out = ffi.new("char[?]", cap)
  lib.check(C.tn_spm_decode(self.handle, arr, n, out, cap, n_out), 2)
  if n_out[0] >= cap then
    cap = tonumber(n_out[0]) + 1
    out = ffi.new("char[?]", cap)
    lib.check(C.tn_spm_decode(self.handle, arr, n, out, cap, n_out), 2)
  end
  return ffi.string(out, n_out[0])
end

local function check_id(self, id, what)
  if type(id) ~= "number" or id ~= math.floor(id) or id < 0 or id >= self.size then
    error(fmt("SentencePiece:%s: id %s is not in [0, %d)", what, tostring(id), self.size), 3)
  end
end

function SP:piece(id)
  check_id(self, id, "piece")
  local out = ffi.new("char[256]")
  lib.check(C.tn_spm_piece(self.handle, id, out, 256, n_out), 2)
  if n_out[0] >= 256 then
    local big = ffi.new("char[?]", n_out[0] + 1)
    lib.check(C.tn_spm_piece(self.handle, id, big, n_out[0] + 1, n_out), 2)
    return ffi.string(big, n_out[0])
  end
  return ffi.string(out, n_out[0])
end

-- the id of a piece, or nil when the vocabulary does not hold it
function SP:id(piece)
  local id = C.tn_spm_piece_to_id(self.handle, tostring(piece))
  return id >= 0 and tonumber(id) or nil
end

function SP:kind(id)
  check_id(self, id, "kind")
  return KINDS[tonumber(C.tn_spm_kind(self.handle, id))]
end

local M = setmetatable({}, { __call = function(_, path) return new(path) end })

function M.available() return C.tn_spm_available() ~= 0 end

-- train{input=, model_prefix=, vocab_size=, ...}: every key is an spm_train flag (values as
-- strings, numbers or booleans; lists are joined with commas).
function M.train(opts)
  if type(opts) ~= "table" then error("tn.data.SentencePiece.train: expects a table of spm_train flags", 2) end
  for _, k in ipairs({ "input", "model_prefix", "vocab_size" }) do
    if opts[k] == nil then error("tn.data.SentencePiece.train: " .. k .. " is required", 2) end
  end
  local keys = {}
  for k in pairs(opts) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = opts[k]
    if type(v) == "table" then v = table.concat(v, ",") end
    v = tostring(v)
    if v:find("%s") then
      error(fmt("tn.data.SentencePiece.train: %s = '%s' holds white space (spm_train flags cannot)", k, v), 2)
    end
    parts[#parts + 1] = fmt("--%s=%s", k, v)
  end
  lib.check(C.tn_spm_train(table.concat(parts, " ")), 2)
  return tostring(opts.model_prefix) .. ".model"
end

M.Processor = SP
return M
