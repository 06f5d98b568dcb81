-- recipes/asr/tokenizer.lua: the recipe's tokens. Id 0 is always the blank.
--   Chars()              space, apostrophe and a-z (vocab 29)
--   SentencePiece(path)  a SentencePiece model (libsentencepiece) whose id 0 is "<blk>" or a
--                        control / unknown / unused piece (icefall's models qualify)
--   train_spm(texts, {dir, vocab_size, model_type, log}) -> path of dir/spm.model, trained on
--                        the texts (icefall's flags: <blk> = 0, <sos/eos> = 1, <unk> = 2), kept
--                        while the texts and options stay the same (dir/spm.stamp)
--   make(cfg.tokens, {mode, dir, train_texts = fn, log}) -> the tokenizer the config asks for
-- Text is normalised first (lower case; characters outside [a-z' ] dropped, runs of spaces
-- collapsed).
--   local tok = Chars()    tok.vocab == 29
--   tok:encode("Hello world") -> {9, 6, 13, 13, 16, 1, ...};  tok:decode(ids) -> "hello world"
local M = {}

local Chars = {}
Chars.__index = Chars

function M.normalize(s)
  s = s:lower():gsub("[^a-z' ]", " "):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  return s
end

function M.Chars()
  local self = setmetatable({ kind = "chars", symbols = { [0] = "<blk>" }, ids = {} }, Chars)
  local list = { " ", "'" }
  for c = string.byte("a"), string.byte("z") do list[#list + 1] = string.char(c) end
  for i, c in ipairs(list) do
    self.symbols[i], self.ids[c] = c, i
  end
  self.vocab = #list + 1
  return self
end

function Chars:encode(text)
  local out = {}
  for c in M.normalize(text):gmatch(".") do out[#out + 1] = self.ids[c] end
  return out
end

function Chars:decode(ids)
  local s = {}
  for i, v in ipairs(ids) do s[i] = self.symbols[v] or "" end
  return (table.concat(s):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""))
end

-- SentencePiece ---------------------------------------------------------------------------------

local SPTok = {}
SPTok.__index = SPTok

function M.SentencePiece(path)
  local tn = require "tern"
  local sp = tn.data.SentencePiece(path)
  local k0 = sp:kind(0)
  if k0 == "normal" and sp:piece(0) ~= "<blk>" then
    error(string.format("tokenizer: SentencePiece model %s has the normal piece '%s' at id 0; the blank needs "
      .. "id 0 (train with --user_defined_symbols=<blk>,... or --pad_id=0)", path, sp:piece(0)), 2)
  end
  local self = setmetatable({ kind = "spm", sp = sp, path = path, vocab = sp.size, emit = {} }, SPTok)
  for id = 1, sp.size - 1 do self.emit[id] = sp:kind(id) == "normal" and sp:piece(id) ~= "<sos/eos>" end
  return self
end

function SPTok:encode(text)
  local ids = self.sp:encode(M.normalize(text))
  for i = 1, #ids do
    if ids[i] == 0 then error("tokenizer: SentencePiece encoded '" .. text .. "' with id 0 (the blank)", 2) end
  end
  return ids
end

-- ids the model emitted -> text (the blank and special pieces are dropped)
function SPTok:decode(ids)
  local keep = {}
  for _, v in ipairs(ids) do
    if self.emit[v] then keep[#keep + 1] = v end
  end
  return M.normalize(self.sp:decode(keep))
end

function M.train_spm(texts, opts)
  local tn = require "tern"
  local D = tn.data
  local dir, vocab, mtype = opts.dir, opts.vocab_size or 256, opts.model_type or "unigram"
  local log = opts.log or function() end
  local lines = {}
  for i, t in ipairs(texts) do lines[i] = M.normalize(t) end
  local body = table.concat(lines, "\n") .. "\n"
  local stamp = string.format("%s %d %s %d", mtype, vocab, D._hash(body), #lines)
  local model, stamp_path = dir .. "/spm.model", dir .. "/spm.stamp"
  local f = io.open(stamp_path, "rb")
  local old = f and f:read("*a")
  if f then f:close() end
  if old == stamp and D._stat(model) then
    log(string.format("tokens: SentencePiece %s %d (cached) %s", mtype, vocab, model))
    return model
  end
  D._mkdir_p(dir)
  local input = dir .. "/spm.train.txt"
  f = assert(io.open(input, "wb"))
  f:write(body)
  f:close()
  local t0 = D._now()
  local tmp = dir .. "/spm.tmp"
  tn.data.SentencePiece.train{ input = input, model_prefix = tmp, vocab_size = vocab, model_type = mtype,
    character_coverage = 1.0, unk_id = 2, bos_id = -1, eos_id = -1, user_defined_symbols = { "<blk>", "<sos/eos>" },
    minloglevel = 2, num_threads = 2 }
  -- the model last, each by rename: a killed run never leaves a stamp over a partial model
  os.rename(tmp .. ".vocab", dir .. "/spm.vocab")
  assert(os.rename(tmp .. ".model", model))
  f = assert(io.open(stamp_path .. ".tmp", "wb"))
  f:write(stamp)
  f:close()
  assert(os.rename(stamp_path .. ".tmp", stamp_path))
  log(string.format("tokens: SentencePiece %s %d trained on %d transcripts in %.1f s -> %s", mtype, vocab, #lines,
    D._now() - t0, model))
  return model
end

-- cfg: {type = "chars" | "spm", model = "" (a .model path) , vocab_size, model_type};
-- ctx: {mode, dir (where a trained model goes), train_texts = function() -> list, log}
function M.make(cfg, ctx)
  if cfg.type == "chars" then return M.Chars() end
  if cfg.type ~= "spm" then
    error("asr_train: --tokens.type must be chars or spm, got " .. tostring(cfg.type), 0)
  end
  if cfg.model ~= "" then return M.SentencePiece(cfg.model) end
  local path = ctx.dir .. "/spm.model"
  if ctx.mode == "train" then
    path = M.train_spm(ctx.train_texts(), { dir = ctx.dir, vocab_size = cfg.vocab_size, model_type = cfg.model_type,
      log = ctx.log })
  else
    local f = io.open(path, "rb")
    if not f then
      error("asr_train: --tokens.type=spm without --tokens.model needs " .. path .. " (made by --mode=train)", 0)
    end
    f:close()
  end
  return M.SentencePiece(path)
end

return M
