-- recipes/asr/wer.lua: word and character error rates by Levenshtein alignment.
--
--   M.align(ref, hyp) -> {sub=, del=, ins=, cor=}: edit operations of a minimal alignment of
--       two lists (ties prefer substitution, then deletion, like sclite / kaldi compute-wer)
--   M.Scorer(): s:add(ref_text, hyp_text) accumulates word and character counts;
--       s:summary() -> {wer=, cer=, words=, chars=, sub=, del=, ins=, sentences=, sent_err=}
local M = {}

function M.align(ref, hyp)
  local n, m = #ref, #hyp
  -- cost and operation counts along one row at a time
  local prev, cur = {}, {}
  for j = 0, m do prev[j] = { c = j, s = 0, d = 0, i = j } end
  for i = 1, n do
    cur[0] = { c = i, s = 0, d = i, i = 0 }
    for j = 1, m do
      local sub = prev[j - 1]
      local same = ref[i] == hyp[j]
      local best = { c = sub.c + (same and 0 or 1), s = sub.s + (same and 0 or 1), d = sub.d, i = sub.i }
      local del = prev[j]
      if del.c + 1 < best.c then best = { c = del.c + 1, s = del.s, d = del.d + 1, i = del.i } end
      local ins = cur[j - 1]
      if ins.c + 1 < best.c then best = { c = ins.c + 1, s = ins.s, d = ins.d, i = ins.i + 1 } end
      cur[j] = best
    end
    prev, cur = cur, prev
  end
  local r = prev[m]
  return { sub = r.s, del = r.d, ins = r.i, cor = n - r.s - r.d, errors = r.c }
end

local function words(s)
  local w = {}
  for x in s:gmatch("%S+") do w[#w + 1] = x end
  return w
end

local function chars(s)
  local c = {}
  for x in s:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""):gmatch(".") do c[#c + 1] = x end
  return c
end
M.words, M.chars = words, chars

local Scorer = {}
Scorer.__index = Scorer

function M.Scorer()
  return setmetatable({ we = 0, wn = 0, ce = 0, cn = 0, sub = 0, del = 0, ins = 0, sents = 0, sent_err = 0 }, Scorer)
end

-- returns the word alignment of this pair
function Scorer:add(ref, hyp)
  local rw, hw = words(ref), words(hyp)
  local a = M.align(rw, hw)
  local c = M.align(chars(ref), chars(hyp))
  self.we, self.wn = self.we + a.errors, self.wn + #rw
  self.ce, self.cn = self.ce + c.errors, self.cn + #chars(ref)
  self.sub, self.del, self.ins = self.sub + a.sub, self.del + a.del, self.ins + a.ins
  self.sents = self.sents + 1
  if a.errors > 0 then self.sent_err = self.sent_err + 1 end
  return a
end

function Scorer:summary()
  return {
    wer = self.wn > 0 and 100 * self.we / self.wn or 0,
    cer = self.cn > 0 and 100 * self.ce / self.cn or 0,
    words = self.wn, chars = self.cn, word_errors = self.we, char_errors = self.ce,
    sub = self.sub, del = self.del, ins = self.ins, sentences = self.sents, sent_err = self.sent_err,
  }
end

return M
