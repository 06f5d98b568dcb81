-- recipes/asr/tokenizer.lua: character tokens. Id 0 is the blank; then space, apostrophe and
-- a-z (29 symbols). Text is normalised first (lower case; characters outside the set dropped,
-- runs of spaces collapsed).
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

return M
