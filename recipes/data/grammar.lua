-- recipes/data/grammar.lua: the sentences of the default (synthesised) data set.
--
-- A small weighted context-free grammar over the word classes of recipes/data/words.txt.
-- Sentences are everyday statements, requests, questions, times, dates, prices, recipes and
-- directions, so each word is predictable from its context (a prediction network can learn the
-- structure) while the number of distinct sentences runs into the billions (the model cannot
-- learn the training sentences by heart).
--
--   local grammar = dofile("recipes/data/grammar.lua")
--   local g = grammar.new()               -- reads words.txt next to this file
--   local text = g:sentence(rng)          -- rng: any object with rng:uniform() in [0, 1)
--   g.vocabulary                          -- sorted list of every word the grammar can say
--   g.classes.object                      -- {"box", "chair", ...}; g.plural.box == "boxes"
--
-- Rules: each nonterminal is a list of alternatives, a string or {weight, string}; "<name>"
-- inside a string expands the rule or word class `name` ("<name+s>" takes the plural of a
-- countable class), a Lua function alternative returns text itself (numbers, times, prices).
-- "a~" is the indefinite article, written "an" before a vowel letter. Text is lower case
-- letters, apostrophes and single spaces.

local M = {}

local here = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."
M.WORDS = here .. "/words.txt"

-- ---- numbers -----------------------------------------------------------------------------

local DIGITS = { [0] = "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
  "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
  "eighteen", "nineteen" }
local TENS = { "ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety" }
local ORDINALS = { "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
  "ninth", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth",
  "seventeenth", "eighteenth", "nineteenth", "twentieth" }

-- 0 <= n <= 9999 in words, British style: "three hundred and twelve", "two thousand and five"
local function number_words(n)
  assert(n >= 0 and n <= 9999 and n == math.floor(n), "number_words: 0..9999")
  if n < 20 then return DIGITS[n] end
  if n < 100 then
    local t, u = math.floor(n / 10), n % 10
    return u == 0 and TENS[t] or TENS[t] .. " " .. DIGITS[u]
  end
  local parts = {}
  if n >= 1000 then
    parts[#parts + 1] = DIGITS[math.floor(n / 1000)] .. " thousand"
    n = n % 1000
  end
  if n >= 100 then
    parts[#parts + 1] = DIGITS[math.floor(n / 100)] .. " hundred"
    n = n % 100
  end
  if n > 0 then parts[#parts + 1] = "and " .. number_words(n) end
  return table.concat(parts, " ")
end
M.number_words = number_words

-- 1 <= n <= 31: "first", "twenty third", "thirtieth", "thirty first"
local function ordinal_words(n)
  if n <= 20 then return ORDINALS[n] end
  if n == 30 then return "thirtieth" end
  return TENS[math.floor(n / 10)] .. " " .. ORDINALS[n % 10]
end
M.ordinal_words = ordinal_words

-- ---- grammar ---------------------------------------------------------------------------------

local function int(rng, lo, hi) return lo + math.floor(rng:uniform() * (hi - lo + 1)) end

-- a count that is mostly small: 2..12 often, up to 999 now and then
local function count(rng)
  local r = rng:uniform()
  if r < 0.6 then return int(rng, 2, 12) elseif r < 0.9 then return int(rng, 13, 99) end
  return int(rng, 100, 999)
end
local function count_words(rng) return number_words(count(rng)) end

local function clock(rng)
  local h = int(rng, 1, 12)
  local r = rng:uniform()
  local hw = number_words(h)
  if r < 0.2 then return hw .. " o'clock"
  elseif r < 0.3 then return "half past " .. hw
  elseif r < 0.4 then return "quarter past " .. hw
  elseif r < 0.45 then return rng:uniform() < 0.5 and "noon" or "midnight" end
  return hw .. " " .. number_words(int(rng, 2, 11) * 5)
end

local function price(rng, G)
  local cur = G.classes.currency[int(rng, 1, 3)]        -- dollar, euro, pound
  if rng:uniform() < 0.05 then return "one " .. cur end
  local n = count(rng)
  local s = number_words(n) .. " " .. G.plural[cur]
  if cur == "dollar" and rng:uniform() < 0.4 then
    s = s .. " and " .. number_words(int(rng, 2, 99)) .. " cents"
  end
  return s
end

local function digits(k)
  return function(rng)
    local t = {}
    for i = 1, k do t[i] = DIGITS[int(rng, 0, 9)] end
    return table.concat(t, " ")
  end
end

local function year(rng)
  local y = int(rng, 1950, 2029)
  if y < 2000 then return "nineteen " .. number_words(y - 1900) end
  if y < 2010 then return number_words(y) end
  return "twenty " .. number_words(y - 2000)
end

M.rules = {
  S = {
    { 5, "<statement>" }, { 3, "<command>" }, { 2, "<counting>" }, { 2, "<question>" },
    { 2, "<travel>" }, { 1, "<weather_report>" }, { 1, "<date>" }, { 1, "<shopping>" },
    { 1, "<codes>" }, { 1, "<directions>" }, { 1, "<cooking>" }, { 2, "<talk>" },
  },
  statement = {
    { 3, "<subject> <verb_past> the <thing> <place_pp> <when_opt>" },
    "<subject> <verb_past> <possessor> <thing> <when_opt>",
    "<possessor> <object> is <place_pp>",
    "<possessor> <objects> are <place_pp>",
    "there is a~ <thing> <place_pp>",
  },
  command = {
    { 2, "please <verb_imp> the <thing> <place_pp>" },
    "<verb_imp> the <thing> <place_pp> please",
    "don't <verb_imp> the <thing> <place_pp>",
    "please <verb_imp> <possessor> <thing> <when_opt>",
    "don't forget the <thing>",
  },
  counting = {
    { 2, "<subject> <count_verb> <count> <qualities> <objects> <when_opt>" },
    "there are <count> <objects> <place_pp>",
    "how many <objects> are there <place_pp>",
    "<subject> <count_verb> <count> <fruit+s> <when_opt>",
  },
  question = {
    "where did <subject> put the <thing>",
    "did <subject> see the <thing> <place_pp>",
    "who <verb_past> the <thing> <place_pp>",
    "what time does the <vehicle> from <city> arrive",
    "when does the <vehicle> leave <when_day>",
    "where is <possessor> <object>",
  },
  travel = {
    { 2, "the <vehicle> from <city> <travel_verb> at <clock> <daypart_opt>" },
    "the <vehicle> <travel_verb> from platform <small_number> at <clock>",
    "our flight <travel_verb> from gate <small_number> at <clock> <when_day>",
    "<subject> will arrive in <city> on <day>",
    "the <vehicle> is late <when_day>",
  },
  weather_report = {
    "<when_future> will be <two_weathers> in <city>",
    "it's <weather> in <city> <when_now>",
    "it was <two_weathers> in <city> <when_past>",
    "the forecast says it will be <weather> on <day>",
  },
  date = {
    "<possessor> birthday is on <month> <day_of_month>",
    "the meeting is on <day> <month> <day_of_month>",
    "<subject> was born on <month> <day_of_month> <year>",
    "<subject> was born in <city> in <year>",
  },
  shopping = {
    "the <thing> costs <price>",
    "<subject> paid <price> <when_past>",
    "<count> <objects> cost <price>",
    "a~ <unit> of <ingredient> costs <price>",
  },
  codes = {
    "the code is <digits4>",
    "call <name> at <digits7>",
    "room <number> is on the <floor_ordinal> floor",
    "the gate number is <small_number>",
  },
  directions = {
    "turn <side> at the <place> and go straight",
    "walk past the <place> and turn <side>",
    "the <place> is on the <side>",
    "the <place> is <small_number> minutes from the <place>",
  },
  cooking = {
    "add <small_number> <unit+s> of <ingredient> and <small_number> <unit+s> of <ingredient>",
    "add a~ <unit> of <ingredient>",
    "add a~ <fruit> and a~ <unit> of <ingredient>",
    "<subject> needs <ingredient> <ingredient> and <ingredient>",
    "<subject> needs <small_number> <fruit+s> and <ingredient>",
  },
  talk = {
    "i can't find <possessor> <thing>",
    "i'm looking <preposition> the <place>",
    "let's meet at the <place> at <clock>",
    "we didn't see <subject> <when_past>",
    "it's <clock> and the <vehicle> is late",
    "nobody <verb_past> the <thing>",
    "someone <verb_past> <possessor> <thing> <when_past>",
    "everything is ready",
    "the <place> is closed <when_day>",
    "it's <clock> <daypart_opt>",
  },

  subject = { { 3, "<name>" }, { 2, "my <relative>" }, "our <relative>", "the <relative>",
    "your <relative>", "<name> and <name>", "<pronoun>" },
  possessor = { { 2, "my" }, "our", "your", "his", "her", { 2, "<name>'s" },
    "my <relative>'s", "the <relative>'s" },
  thing = { { 2, "<object>" }, { 3, "<quality> <object>" }, { 2, "<colour> <object>" },
    "<quality> <colour> <object>" },
  qualities = { { 3, "" }, "<quality>", "<colour>" },
  place_pp = { { 4, "<preposition> the <place>" }, "<preposition> the <place_quality> <place>",
    "<preposition> <possessor> <place>" },
  when_opt = { { 4, "" }, "<when_past>" },
  when_past = { "yesterday", "this morning", "last night", "last week", "on <day>",
    "on <day> <daypart>", "last <day>", "after lunch", "before dinner", "at <clock>",
    "early", "then" },
  when_now = { "today", "tonight", "this morning", "this afternoon", "this evening", "this week" },
  when_day = { "today", "tonight", "tomorrow", "on <day>", "this weekend", "every <day>",
    "tomorrow <daypart>", "" },
  when_future = { "today", "tonight", { 2, "tomorrow" }, "tomorrow <daypart>", "this weekend",
    "<day>", "<day> <daypart>" },
  daypart_opt = { { 2, "" }, "in the <daypart>" },

  count = count_words,
  two_weathers = function(rng, G)
    local list = G.classes.weather
    local a = int(rng, 1, #list)
    local b = int(rng, 1, #list - 1)
    if b >= a then b = b + 1 end
    return list[a] .. " and " .. list[b]
  end,
  small_number = function(rng) return number_words(int(rng, 2, 20)) end,
  number = function(rng) return number_words(int(rng, 1, 999)) end,
  clock = clock,
  price = price,
  year = year,
  digits4 = digits(4),
  digits7 = digits(7),
  day_of_month = function(rng) return ordinal_words(int(rng, 1, 31)) end,
  floor_ordinal = function(rng) return ordinal_words(int(rng, 1, 12)) end,
}

-- ---- word list -------------------------------------------------------------------------------

-- reads words.txt: classes[name] = {singular words}, plural[singular] = plural
function M.load_words(path)
  path = path or M.WORDS
  local f, err = io.open(path, "r")
  if not f then error("grammar.load_words: cannot open " .. tostring(path) .. ": " .. tostring(err), 2) end
  local classes, plural, n = {}, {}, 0
  for line in f:lines() do
    n = n + 1
    if not line:match("^%s*#") and line:match("%S") then
      local class, body = line:match("^([%w_]+):%s*(.*)$")
      if not class then
        f:close()
        error(("grammar.load_words: %s:%d: expected 'class: word word ...', got %q"):format(path, n, line), 2)
      end
      local list, seen = classes[class] or {}, {}
      for item in body:gmatch("%S+") do
        local one, many = item:match("^([^/]+)/([^/]+)$")
        one = one or item
        if not one:match("^[a-z']+$") or (many and not many:match("^[a-z']+$")) then
          f:close()
          error(("grammar.load_words: %s:%d: %q is not lower-case letters and apostrophes"):format(path, n, item), 2)
        end
        if not seen[one] then seen[one] = true; list[#list + 1] = one end
        if many then plural[one] = many end
      end
      classes[class] = list
    end
  end
  f:close()
  return classes, plural
end

-- ---- expansion -------------------------------------------------------------------------------

local G = {}
G.__index = G

-- picks an alternative of a rule by weight
local function pick(alts, rng)
  local total = alts._total
  if not total then
    total = 0
    for _, a in ipairs(alts) do total = total + (type(a) == "table" and a[1] or 1) end
    alts._total = total
  end
  local r = rng:uniform() * total
  for _, a in ipairs(alts) do
    local w = type(a) == "table" and a[1] or 1
    if r < w then return type(a) == "table" and a[2] or a end
    r = r - w
  end
  local a = alts[#alts]
  return type(a) == "table" and a[2] or a
end

function G:expand(sym, rng, depth)
  depth = (depth or 0) + 1
  if depth > 20 then error("grammar: rule recursion deeper than 20 at <" .. sym .. ">") end
  local base, plural = sym:match("^([%w_]+)%+s$")
  if base then plural = true else base = sym end
  local rule = self.rules[base]
  if rule ~= nil and not plural then
    if type(rule) == "function" then return rule(rng, self) end
    local alt = pick(rule, rng)
    if type(alt) == "function" then return alt(rng, self) end
    return (alt:gsub("<([%w_+]+)>", function(s) return self:expand(s, rng, depth) end))
  end
  -- plural of a countable class (<object+s>), or the class's own plural rule (<objects>)
  local class = self.classes[base]
  if not class and base:sub(-1) == "s" and self.classes[base:sub(1, -2)] then
    class, plural = self.classes[base:sub(1, -2)], true
  end
  if not class then error("grammar: no rule or word class named <" .. sym .. ">") end
  local w = class[1 + math.floor(rng:uniform() * #class)]
  if plural then
    local p = self.plural[w]
    if not p then error("grammar: word '" .. w .. "' of <" .. sym .. "> has no plural in words.txt") end
    return p
  end
  return w
end

-- one sentence: words separated by single spaces, articles agreed
function G:sentence(rng)
  local s = self:expand("S", rng)
  local words = {}
  for w in s:gmatch("%S+") do words[#words + 1] = w end
  for i, w in ipairs(words) do
    if w == "a~" then words[i] = (words[i + 1] or ""):match("^[aeiou]") and "an" or "a" end
  end
  return table.concat(words, " ")
end

-- calls fn(s, set) for every string alternative of the rules ({weight, s} gives s; the
-- functions among them make their words at random, so there is nothing to read off them),
-- then gives the keys of set, sorted
local function collect_rule_words(self, set, fn)
  for _, rule in pairs(self.rules) do
    if type(rule) == "table" then
      for _, a in ipairs(rule) do
        local s = type(a) == "table" and a[2] or a
        if type(s) == "string" then fn(s, set) end
      end
    end
  end
  local out = {}
  for w in pairs(set) do out[#out + 1] = w end
  table.sort(out)
  return out
end

-- every word the grammar can say: the words of words.txt with their plurals, and the forms
-- the rules make by writing a suffix after a word class ("<name>'s" gives "emma's", ...)
local function vocabulary(self)
  local set = {}
  for _, list in pairs(self.classes) do
    for _, w in ipairs(list) do set[w] = true; if self.plural[w] then set[self.plural[w]] = true end end
  end
  return collect_rule_words(self, set, function(s)
    for sym, suffix in s:gmatch("<([%w_+]+)>([^%s<]+)") do
      local list = self.classes[sym]
      if not list then
        error("grammar: a suffix may only follow a word class, not <" .. sym .. ">" .. suffix)
      end
      for _, w in ipairs(list) do set[w .. suffix] = true end
    end
  end)
end

-- literal words of the rules (everything outside <...>), for checks against the word list
function G:literal_words()
  return collect_rule_words(self, {}, function(s, set)
    for w in s:gsub("<[%w_+]+>[^%s<]*", " "):gmatch("%S+") do
      if w ~= "a~" then set[w] = true end
    end
  end)
end

-- grammar.new{words = path, rules = table}: both optional
function M.new(opts)
  opts = opts or {}
  local classes, plural = M.load_words(opts.words)
  local self = setmetatable({ classes = classes, plural = plural, rules = opts.rules or M.rules }, G)
  self.vocabulary = vocabulary(self)
  return self
end

return M
