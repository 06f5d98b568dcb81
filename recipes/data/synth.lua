-- recipes/data/synth.lua: the default data set of the ASR recipe, made on this machine.
--
-- Sentences from recipes/data/grammar.lua (over recipes/data/words.txt) are spoken by espeak-ng
-- with a random accent, voice variant, rate and pitch per utterance, resampled from espeak-ng's
-- 22050 Hz to 16 kHz (tn.audio.resample), levelled, padded with a little silence, and on part
-- of the utterances mixed with white, pink, brown or babble noise at a random SNR. Written as
-- 16-bit WAV files with JSONL manifests ({"audio_filepath", "duration", "text", ...}), the same
-- format the recipe reads for real corpora.
--
--   local synth = dofile("recipes/data/synth.lua")   -- or require it with recipes/data on the path
--   local train, test, info = synth.prepare{ dir = "data/synth", seed = 1,
--                                            n_train = 4000, n_test = 300, procs = 2 }
--
-- Generalisation: the test set is spoken by voice variants that never speak in training, and
-- none of its sentences occurs in training. Half of the test set is clean, half noisy.
-- Determinism: every utterance's sentence, voice and noise come from its own generator,
-- seeded by (seed, split, index), so the files do not depend on `procs`.
-- Caching: <dir>/stamp.json records the configuration; prepare() with the same one returns at
-- once, another one regenerates. The stamp is written last and the manifests atomically, so
-- a generation that was killed never counts as done.

local ffi = require "ffi"
local bit = require "bit"

local here = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$")) or "."
local grammar = dofile(here .. "/grammar.lua")

local M = {}

-- Bumped whenever a change here alters the audio or the text of the data set.
M.VERSION = 1

-- espeak-ng accents, spoken in both sets. (en-gb-x-gbcwmd is left out: it drops initial h,
-- which makes at/hat, is/his, old/hold homophones.)
M.ACCENTS = { "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-029",
  "en-us-nyc" }
-- voice variants (espeak-ng --voices=variant): the test set's never speak in training
M.TRAIN_VARIANTS = { "m1", "m2", "m3", "m5", "m6", "m7", "m8", "f1", "f2", "f4", "f5", "klatt",
  "klatt3", "klatt4", "adam", "Andy", "Annie", "aunty", "benjamin", "edward", "john", "linda",
  "max", "norbert", "paul", "robert", "steph", "travis" }
M.TEST_VARIANTS = { "m4", "f3", "klatt2", "michel" }

M.ESPEAK_RATE = 22050   -- espeak-ng --stdout
M.RATE = 16000          -- the data set

M.DEFAULTS = {
  dir = "data/synth",
  seed = 1,
  n_train = 4000,
  n_test = 300,
  procs = 2,
  quiet = false,
  espeak = "espeak-ng",
  -- the interpreter of the worker processes: this one when it is a LuaJIT
  luajit = (arg and type(arg[-1]) == "string" and arg[-1]:match("luajit[^/]*$")) and arg[-1] or "luajit",
  rate = { 130, 210 },            -- espeak-ng -s, words per minute (its default is 175)
  pitch = { 20, 80 },             -- espeak-ng -p, 0..99 (default 50)
  level_db = { -32, -18 },        -- speech RMS, dB full scale
  pad = { 0.05, 0.35 },           -- silence added before and after, seconds
  -- training: noise on `fraction` of the utterances, SNR uniform in snr_db, kind by weight
  -- (babble is the hard case on the test set: training hears more of it, from more talkers)
  noise = { fraction = 0.7, snr_db = { 5, 25 }, kinds = { white = 1, pink = 1, brown = 1, babble = 4 } },
  -- test: every second utterance noisy (exactly half when n_test is even)
  test_noise = { fraction = 0.5, snr_db = { 10, 25 }, kinds = { white = 1, pink = 1, brown = 1, babble = 2 } },
  babble_bank = 12,               -- utterances mixed into the test split's babble source
  train_babble_bank = 48,         -- and into the training split's
}

-- ---- a small deterministic generator --------------------------------------------------------
-- SplitMix64 on uint64 cdata: the same numbers under every LuaJIT build (math.random is not).

local U64 = ffi.typeof("uint64_t")
local GOLDEN = 0x9E3779B97F4A7C15ULL

local function mix64(z)
  z = bit.bxor(z, bit.rshift(z, 30)) * 0xBF58476D1CE4E5B9ULL
  z = bit.bxor(z, bit.rshift(z, 27)) * 0x94D049BB133111EBULL
  return bit.bxor(z, bit.rshift(z, 31))
end

local Rng = {}
Rng.__index = Rng

-- Rng(a, b, c, ...): a generator seeded by a tuple of non-negative integers
function M.Rng(...)
  local s = U64(0x243F6A8885A308D3ULL)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if type(v) ~= "number" or v < 0 or v ~= math.floor(v) or v >= 2 ^ 53 then
      error("synth.Rng: seed parts must be integers in [0, 2^53), got " .. tostring(v), 2)
    end
    s = mix64(s + GOLDEN + U64(v))
  end
  return setmetatable({ s = s }, Rng)
end

function Rng:next64()
  self.s = self.s + GOLDEN
  return mix64(self.s)
end
-- uniform in [0, 1) with 53 bits
function Rng:uniform() return tonumber(bit.rshift(self:next64(), 11)) * 2 ^ -53 end
-- integer in [lo, hi]
function Rng:int(lo, hi) return lo + math.floor(self:uniform() * (hi - lo + 1)) end
-- uniform in [range[1], range[2]]
function Rng:range(r) return r[1] + self:uniform() * (r[2] - r[1]) end
-- a seed for tn.manual_seed (52 bits)
function Rng:seed() return tonumber(bit.rshift(self:next64(), 12)) end
function Rng:pick(list) return list[self:int(1, #list)] end
-- a key of weights {k = w} by weight (keys in sorted order, so the choice is reproducible)
function Rng:weighted(weights)
  local keys, total = {}, 0
  for k, w in pairs(weights) do keys[#keys + 1] = k; total = total + w end
  table.sort(keys)
  local r = self:uniform() * total
  for _, k in ipairs(keys) do
    if r < weights[k] then return k end
    r = r - weights[k]
  end
  return keys[#keys]
end

local STREAM = { train = 1, test = 2, babble_train = 3, babble_test = 4 }

-- ---- small helpers ---------------------------------------------------------------------------

-- text as the character tokens expect it: lower case letters, apostrophes, single spaces
function M.normalize(text)
  text = text:lower():gsub("[^a-z' ]", " "):gsub("%s+", " ")
  return (text:gsub("^ ", ""):gsub(" $", ""))
end

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function ok_status(r) return r == 0 or r == true end

-- one-line JSON / Lua-literal encoding with sorted keys (the stamp compares these strings)
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local named = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\t"] = "\\t", ["\r"] = "\\r" }
    return named[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

local function number_string(v)
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
  return ("%.10g"):format(v)
end

local function encode(v, lua)
  local t = type(v)
  if t == "string" then return lua and ("%q"):format(v) or json_string(v)
  elseif t == "number" then return number_string(v)
  elseif t == "boolean" then return tostring(v)
  elseif v == nil then return lua and "nil" or "null"
  elseif t == "table" then
    local parts = {}
    if #v > 0 or next(v) == nil then
      for i = 1, #v do parts[i] = encode(v[i], lua) end
      return (lua and "{" or "[") .. table.concat(parts, ",") .. (lua and "}" or "]")
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      parts[#parts + 1] = lua and ("[%q]=%s"):format(k, encode(v[k], lua))
        or (json_string(k) .. ":" .. encode(v[k], lua))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  error("synth: cannot encode a " .. t)
end
M.json = function(v) return encode(v, false) end

-- the whole file, or nil where it cannot be opened (the specs read the data set with it too)
local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end
M.read_file = read_file

pcall(ffi.cdef, "int getpid(void);")
pcall(ffi.cdef, "int kill(int pid, int sig);")
pcall(ffi.cdef, "int poll(void *fds, unsigned long nfds, int timeout);")
pcall(ffi.cdef, "char *getcwd(char *buf, size_t size);")

-- writes path.tmp-<pid> then renames it over path
local function write_atomic(path, s)
  local tmp = path .. ".tmp-" .. ffi.C.getpid()
  local f, err = io.open(tmp, "wb")
  if not f then error("synth: cannot write " .. tmp .. ": " .. tostring(err), 0) end
  f:write(s)
  f:close()
  local ok, rerr = os.rename(tmp, path)
  if not ok then error("synth: cannot rename " .. tmp .. " to " .. path .. ": " .. tostring(rerr), 0) end
end

local function sleep_ms(ms) ffi.C.poll(nil, 0, ms) end

pcall(ffi.cdef, [[typedef struct { long tv_sec; long tv_nsec; } synth_timespec;
int synth_clock_gettime(int clk, synth_timespec *ts) __asm__("clock_gettime");]])
local timespec = ffi.new("synth_timespec")

-- monotonic clock, seconds
local function now()
  local ts = timespec
  ffi.C.synth_clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  local buf = ffi.new("char[4096]")
  local cwd = ffi.C.getcwd(buf, 4096)
  if cwd == nil then error("synth: getcwd failed", 0) end
  path = path:gsub("^%./", "")
  return ffi.string(cwd) .. "/" .. path
end

-- FNV-1a over a string, as 8 hex digits (the stamp records the grammar and word list by it)
local function fnv1a(s)
  local h = 0x811C9DC5
  for i = 1, #s do
    h = bit.bxor(h, s:byte(i))
    h = bit.tobit(h * 0x01000193 % 2 ^ 32)
  end
  return bit.tohex(h)
end

-- ---- espeak-ng -------------------------------------------------------------------------------

function M.espeak_available(espeak)
  espeak = espeak or M.DEFAULTS.espeak
  return ok_status(os.execute("command -v " .. shell_quote(espeak) .. " >/dev/null 2>&1"))
end

local function require_espeak(espeak, who)
  if not M.espeak_available(espeak) then
    error(who .. ": " .. espeak .. " not found on PATH; the default data set is spoken by "
      .. "espeak-ng: run `sh .ci/setup.sh` (as root) or `apt-get install espeak-ng`", 3)
  end
end

-- parses a 16-bit PCM mono WAV held in a string (espeak-ng --stdout writes its sizes as
-- 0x7ffffff0, so the data runs to the end of the string). Returns int16 pointer, count, rate.
function M.parse_wav(s)
  if #s < 12 or s:sub(1, 4) ~= "RIFF" or s:sub(9, 12) ~= "WAVE" then
    return nil, "not a RIFF/WAVE stream (" .. #s .. " bytes)"
  end
  local p = ffi.cast("const uint8_t *", s)
  local function u32(o) return p[o] + p[o + 1] * 256 + p[o + 2] * 65536 + p[o + 3] * 16777216 end
  local function u16(o) return p[o] + p[o + 1] * 256 end
  local pos, rate, fmt_ok = 12, nil, false
  while pos + 8 <= #s do
    local id, size = s:sub(pos + 1, pos + 4), u32(pos + 4)
    if id == "fmt " then
      local format, channels, bits = u16(pos + 8), u16(pos + 10), u16(pos + 22)
      rate = u32(pos + 12)
      if format ~= 1 or channels ~= 1 or bits ~= 16 then
        return nil, ("expected 16-bit PCM mono, got format %d, %d channels, %d bits"):format(format, channels, bits)
      end
      fmt_ok = true
    elseif id == "data" then
      if not fmt_ok then return nil, "data chunk before fmt chunk" end
      local n = math.floor(math.min(size, #s - pos - 8) / 2)
      return ffi.cast("const int16_t *", p + pos + 8), n, rate
    end
    pos = pos + 8 + size + size % 2
  end
  return nil, "no data chunk"
end

-- ---- the plan: every utterance's text, voice and noise, decided before any audio -----------

local function check_range(name, r, lo, hi)
  if type(r) ~= "table" or type(r[1]) ~= "number" or type(r[2]) ~= "number" or r[1] > r[2]
    or r[1] < lo or r[2] > hi then
    error(("synth.prepare: %s must be {min, max} within [%g, %g], got %s"):format(
      name, lo, hi, type(r) == "table" and encode(r) or tostring(r)), 0)
  end
end

-- defaults overridden by opts; the noise tables key by key ({noise = {fraction = 0.3}})
local function merge(defaults, opts, prefix)
  local out = {}
  for k, v in pairs(defaults) do out[k] = v end
  for k, v in pairs(opts or {}) do
    if defaults[k] == nil and (prefix or (k ~= "accents" and k ~= "train_variants"
      and k ~= "test_variants" and k ~= "_checked")) then
      error("synth.prepare: unknown option '" .. (prefix or "") .. tostring(k) .. "'", 0)
    end
    if not prefix and (k == "noise" or k == "test_noise") and type(v) == "table" then
      out[k] = merge(defaults[k], v, k .. ".")
    else
      out[k] = v
    end
  end
  return out
end

-- the configuration with defaults filled in and checked
function M.config(opts)
  local cfg = merge(M.DEFAULTS, opts)
  for _, k in ipairs({ "seed", "n_train", "n_test", "procs", "babble_bank", "train_babble_bank" }) do
    local v = cfg[k]
    if type(v) ~= "number" or v < 0 or v ~= math.floor(v) or v >= 2 ^ 53 then
      error(("synth.prepare: %s must be a non-negative integer, got %s"):format(k, tostring(v)), 0)
    end
  end
  if cfg.procs < 1 then error("synth.prepare: procs must be >= 1, got " .. cfg.procs, 0) end
  if cfg.babble_bank < 1 then error("synth.prepare: babble_bank must be >= 1, got 0", 0) end
  if cfg.train_babble_bank < 1 then error("synth.prepare: train_babble_bank must be >= 1, got 0", 0) end
  if type(cfg.dir) ~= "string" or cfg.dir == "" then
    error("synth.prepare: dir must be a directory path, got " .. tostring(cfg.dir), 0)
  end
  check_range("rate", cfg.rate, 80, 450)
  check_range("pitch", cfg.pitch, 0, 99)
  check_range("level_db", cfg.level_db, -80, 0)
  check_range("pad", cfg.pad, 0, 5)
  for _, k in ipairs({ "noise", "test_noise" }) do
    local n = cfg[k]
    if type(n) ~= "table" or type(n.kinds) ~= "table" then
      error(("synth.prepare: %s must be a table {fraction=, snr_db=, kinds=}, got %s"):format(k, tostring(n)), 0)
    end
    if type(n.fraction) ~= "number" or n.fraction < 0 or n.fraction > 1 then
      error(("synth.prepare: %s.fraction must be in [0, 1], got %s"):format(k, tostring(n.fraction)), 0)
    end
    check_range(k .. ".snr_db", n.snr_db, -20, 100)
    for kind, w in pairs(n.kinds) do
      if kind ~= "white" and kind ~= "pink" and kind ~= "brown" and kind ~= "babble" then
        error(("synth.prepare: %s.kinds: unknown noise '%s' (white, pink, brown, babble)"):format(
          k, tostring(kind)), 0)
      end
      if type(w) ~= "number" or w < 0 then
        error(("synth.prepare: %s.kinds.%s must be a weight >= 0, got %s"):format(k, kind, tostring(w)), 0)
      end
    end
  end
  cfg.accents = cfg.accents or M.ACCENTS
  cfg.train_variants = cfg.train_variants or M.TRAIN_VARIANTS
  cfg.test_variants = cfg.test_variants or M.TEST_VARIANTS
  for _, v in ipairs(cfg.test_variants) do
    for _, w in ipairs(cfg.train_variants) do
      if v == w then
        error("synth.prepare: voice variant '" .. v .. "' is in both train_variants and test_variants", 0)
      end
    end
  end
  cfg.dir = absolute(cfg.dir)
  return cfg
end

local the_grammar
local function get_grammar()
  the_grammar = the_grammar or grammar.new()
  return the_grammar
end

local function pad_index(i) return ("%06d"):format(i) end

-- draws `n` sentences for `split` that are not in `taken` (adding them)
local function draw_sentences(g, seed, split, n, taken)
  local out, rngs = {}, {}
  for i = 1, n do
    local rng = M.Rng(seed, STREAM[split], i)
    local s, tries
    tries = 0
    repeat
      s = g:sentence(rng)
      tries = tries + 1
      if tries > 1000 then
        error(("synth: cannot find a new sentence for %s utterance %d after 1000 draws; "
          .. "the grammar is too small for this many utterances"):format(split, i), 0)
      end
    until not taken[s]
    taken[s] = true
    out[i], rngs[i] = s, rng
  end
  return out, rngs
end

-- the jobs of one split (sentence texts already drawn)
local function split_jobs(cfg, split, texts, rngs)
  local variants = split == "train" and cfg.train_variants or cfg.test_variants
  local noise = split == "train" and cfg.noise or cfg.test_noise
  local jobs = {}
  for i, text in ipairs(texts) do
    local r = rngs[i]
    local job = {
      split = split, index = i, text = text,
      path = cfg.dir .. "/" .. split .. "/" .. pad_index(i) .. ".wav",
      voice = r:pick(cfg.accents) .. "+" .. r:pick(variants),
      rate = r:int(cfg.rate[1], cfg.rate[2]),
      pitch = r:int(cfg.pitch[1], cfg.pitch[2]),
      level_db = r:range(cfg.level_db),
      lead = r:range(cfg.pad),
      tail = r:range(cfg.pad),
      noise = "none",
    }
    local noisy_draw, kind, snr, seed = r:uniform(), r:weighted(noise.kinds), r:range(noise.snr_db), r:seed()
    -- training: a random fraction; test: every 1/fraction-th, so the halves are exact
    local noisy
    if split == "train" then
      noisy = noisy_draw < noise.fraction
    else
      noisy = noise.fraction > 0 and math.floor(i * noise.fraction) > math.floor((i - 1) * noise.fraction)
    end
    if noisy then job.noise, job.snr_db, job.noise_seed = kind, snr, seed end
    jobs[i] = job
  end
  return jobs
end

-- synth.plan(opts) -> train jobs, test jobs: what prepare() would synthesise, without audio.
-- A job: {split, index, text, path, voice, rate, pitch, level_db, lead, tail, noise,
-- snr_db, noise_seed}.
function M.plan(opts)
  local cfg = opts and opts._checked and opts
  if not cfg then
    local okc, c = pcall(M.config, opts)
    if not okc then error((c:gsub("^synth%.prepare", "synth.plan")), 2) end
    cfg = c
  end
  local g = get_grammar()
  local taken = {}
  local train_texts, train_rngs = draw_sentences(g, cfg.seed, "train", cfg.n_train, taken)
  local test_texts, test_rngs = draw_sentences(g, cfg.seed, "test", cfg.n_test, taken)
  return split_jobs(cfg, "train", train_texts, train_rngs), split_jobs(cfg, "test", test_texts, test_rngs)
end

-- ---- audio -----------------------------------------------------------------------------------

local tn_mod
local function tn()
  if not tn_mod then
    local T = require "tern"
    if not T.audio.available().sndfile then
      error("synth: this tern was built without libsndfile, so it cannot write WAV files: "
        .. "run `sh .ci/setup.sh` (installs libsndfile1-dev and rebuilds)", 0)
    end
    tn_mod = T
  end
  return tn_mod
end

local function fptr(t) return ffi.cast("float *", t:data_ptr()) end

-- speaks text; returns a 16 kHz f32 tensor
function M.speak(text, voice, rate, pitch, espeak)
  if not text:match("^[a-z' ]+$") then
    error("synth.speak: text must be lower-case letters, apostrophes and spaces, got " .. ("%q"):format(text), 2)
  end
  local cmd = ("%s -v %s -s %d -p %d --stdout %s"):format(espeak or M.DEFAULTS.espeak,
    shell_quote(voice), rate, pitch, shell_quote(text))
  local p = io.popen(cmd, "r")
  local s = p:read("*a")
  p:close()
  local src, n, sr = M.parse_wav(s)
  if not src then error("synth.speak: " .. cmd .. ": " .. tostring(n), 0) end
  if n == 0 then error("synth.speak: " .. cmd .. ": no audio", 0) end
  local T = tn()
  local x = T.empty(n)
  local xp = fptr(x)
  for i = 0, n - 1 do xp[i] = src[i] * (1 / 32768) end
  return T.audio.resample(x, sr, M.RATE), s    -- s keeps src alive until here
end

-- RMS over the 20 ms frames within 40 dB of the loudest (the speech, not the pauses)
local function active_rms(p, n)
  local frame = 320
  local energies, emax = {}, 0
  for f = 0, math.floor(n / frame) - 1 do
    local e = 0
    for i = f * frame, f * frame + frame - 1 do e = e + p[i] * p[i] end
    energies[#energies + 1] = e
    if e > emax then emax = e end
  end
  if emax == 0 then return 0 end
  local sum, count = 0, 0
  for _, e in ipairs(energies) do
    if e >= emax * 1e-4 then sum = sum + e; count = count + 1 end
  end
  return math.sqrt(sum / (count * frame))
end

local function normalize_rms(p, n)
  local e = 0
  for i = 0, n - 1 do e = e + p[i] * p[i] end
  local s = e > 0 and 1 / math.sqrt(e / n) or 0
  for i = 0, n - 1 do p[i] = p[i] * s end
end

-- the babble source of a split: `babble_bank` (test) or `train_babble_bank` (train) utterances by
-- that split's voices, each at unit RMS, one after the other (a float tensor)
function M.babble_bank(cfg, split)
  local variants = split == "train" and cfg.train_variants or cfg.test_variants
  local g = get_grammar()
  local parts, total = {}, 0
  for k = 1, split == "train" and cfg.train_babble_bank or cfg.babble_bank do
    local r = M.Rng(cfg.seed, STREAM["babble_" .. split], k)
    local text = g:sentence(r)
    local y = M.speak(text, r:pick(cfg.accents) .. "+" .. r:pick(variants),
      r:int(cfg.rate[1], cfg.rate[2]), r:int(cfg.pitch[1], cfg.pitch[2]), cfg.espeak)
    normalize_rms(fptr(y), y:numel())
    parts[k] = y
    total = total + y:numel()
  end
  local bank = tn().empty(total)
  local bp, off = fptr(bank), 0
  for _, y in ipairs(parts) do
    ffi.copy(bp + off, fptr(y), y:numel() * 4)
    off = off + y:numel()
  end
  return bank
end

-- fills p[0..n) with unit-RMS noise of the job's kind (job.noise, job.noise_seed)
local function make_noise(job, p, n, bank)
  local T = tn()
  T.manual_seed(job.noise_seed)
  local kind = job.noise
  if kind == "babble" then
    local r = M.Rng(job.noise_seed)
    local bp, L = fptr(bank), bank:numel()
    for i = 0, n - 1 do p[i] = 0 end
    for _ = 1, r:int(3, 6) do                     -- talkers
      local off, gain = r:int(0, L - 1), 10 ^ (r:range({ -6, 0 }) / 20)
      for i = 0, n - 1 do p[i] = p[i] + gain * bp[(off + i) % L] end
    end
  else
    local w = T.randn(n)
    local wp = fptr(w)
    if kind == "white" then
      ffi.copy(p, wp, n * 4)
    elseif kind == "pink" then                      -- Paul Kellet's refined -3 dB/octave filter
      local b0, b1, b2, b3, b4, b5, b6 = 0, 0, 0, 0, 0, 0, 0
      for i = 0, n - 1 do
        local x = wp[i]
        b0 = 0.99886 * b0 + x * 0.0555179
        b1 = 0.99332 * b1 + x * 0.0750759
        b2 = 0.96900 * b2 + x * 0.1538520
        b3 = 0.86650 * b3 + x * 0.3104856
        b4 = 0.55000 * b4 + x * 0.5329522
        b5 = -0.7616 * b5 - x * 0.0168980
        p[i] = b0 + b1 + b2 + b3 + b4 + b5 + b6 + x * 0.5362
        b6 = x * 0.115926
      end
    else                                             -- brown: leaky integral of white noise
      local y = 0
      for i = 0, n - 1 do y = 0.995 * y + wp[i]; p[i] = y end
      local mean = 0
      for i = 0, n - 1 do mean = mean + p[i] end
      mean = mean / n
      for i = 0, n - 1 do p[i] = p[i] - mean end
    end
  end
  normalize_rms(p, n)
end

-- synth.noise(kind, seed, n, bank) -> (n) f32 tensor of unit RMS: "white", "pink", "brown" or
-- "babble" (bank: a synth.babble_bank tensor)
function M.noise(kind, seed, n, bank)
  local t = tn().empty(n)
  make_noise({ noise = kind, noise_seed = seed }, fptr(t), n, bank)
  return t
end

-- synthesises one job into a 16 kHz f32 tensor (the samples written to job.path)
function M.render(job, cfg, banks)
  local T = tn()
  local speech = M.speak(job.text, job.voice, job.rate, job.pitch, cfg.espeak)
  local m = speech:numel()
  local lead, tail = math.floor(job.lead * M.RATE + 0.5), math.floor(job.tail * M.RATE + 0.5)
  local n = lead + m + tail
  local y = T.zeros(n)
  local yp, sp = fptr(y), fptr(speech)
  local rms = active_rms(sp, m)
  local gain = rms > 0 and 10 ^ (job.level_db / 20) / rms or 1
  for i = 0, m - 1 do yp[lead + i] = sp[i] * gain end
  if job.noise ~= "none" then
    local noise = T.empty(n)
    local np = fptr(noise)
    make_noise(job, np, n, banks and banks[job.split])
    local scale = 10 ^ (job.level_db / 20) * 10 ^ (-job.snr_db / 20)
    for i = 0, n - 1 do yp[i] = yp[i] + scale * np[i] end
  end
  local peak = 0
  for i = 0, n - 1 do local a = math.abs(yp[i]); if a > peak then peak = a end end
  if peak > 0.98 then
    local s = 0.98 / peak
    for i = 0, n - 1 do yp[i] = yp[i] * s end
  end
  return y
end

-- ---- workers ---------------------------------------------------------------------------------

-- whether process pid still runs (a killed parent can linger as a zombie nobody reaps)
local function alive(pid)
  if ffi.C.kill(pid, 0) ~= 0 then return false end
  local stat = read_file("/proc/" .. pid .. "/stat")
  return not (stat and stat:match("^%d+ %b() Z"))
end

-- runs the jobs j with (j - 1) % parts == part - 1; progress(count) after each; returns
-- {[j] = duration}. Stops (error) when parent_pid is given and that process is gone.
function M.run_jobs(cfg, jobs, part, parts, progress, parent_pid)
  local T = tn()
  local banks = {}
  local need = {}
  for j = part, #jobs, parts do if jobs[j].noise == "babble" then need[jobs[j].split] = true end end
  for split in pairs(need) do banks[split] = M.babble_bank(cfg, split) end
  local durations, count = {}, 0
  for j = part, #jobs, parts do
    if parent_pid and not alive(parent_pid) then
      error("synth worker: parent process " .. parent_pid .. " is gone", 0)
    end
    local job = jobs[j]
    local y = M.render(job, cfg, banks)
    T.audio.save(job.path, y, M.RATE)
    durations[j] = y:numel() / M.RATE
    y:free()
    count = count + 1
    if progress then progress(count) end
  end
  return durations
end

-- entry point of recipes/data/synth_worker.lua: luajit synth_worker.lua <work file> <part>
-- <parts> <parent pid>
function M.worker_main(workfile, part, parts, parent_pid)
  local chunk = assert(loadfile(workfile))
  local w = chunk()
  part, parts, parent_pid = tonumber(part), tonumber(parts), tonumber(parent_pid)
  tn().set_num_threads(1)
  local dir = w.cfg.dir .. "/.work"
  local prog = assert(io.open(dir .. "/progress-" .. part, "wb"))
  local durations = M.run_jobs(w.cfg, w.jobs, part, parts, function()
    prog:write("."); prog:flush()
  end, parent_pid)
  prog:close()
  local lines = {}
  for j = part, #w.jobs, parts do lines[#lines + 1] = j .. "\t" .. ("%.6f"):format(durations[j]) end
  write_atomic(dir .. "/done-" .. part .. ".tsv", table.concat(lines, "\n") .. "\n")
end

-- ---- prepare ---------------------------------------------------------------------------------

local function say(cfg, s) if not cfg.quiet then io.stderr:write(s) io.stderr:flush() end end

local function fmt_time(s)
  if s >= 3600 then return ("%dh%02dm"):format(math.floor(s / 3600), math.floor(s % 3600 / 60)) end
  if s >= 60 then return ("%dm%02ds"):format(math.floor(s / 60), math.floor(s % 60)) end
  return ("%ds"):format(math.floor(s + 0.5))
end

-- what the stamp records: everything that changes the files (not procs, quiet, programs)
local function stamp_of(cfg)
  return encode({
    version = M.VERSION, seed = cfg.seed, n_train = cfg.n_train, n_test = cfg.n_test,
    dir = cfg.dir, rate = cfg.rate, pitch = cfg.pitch, level_db = cfg.level_db, pad = cfg.pad,
    noise = cfg.noise, test_noise = cfg.test_noise, babble_bank = cfg.babble_bank,
    train_babble_bank = cfg.train_babble_bank,
    accents = cfg.accents, train_variants = cfg.train_variants, test_variants = cfg.test_variants,
    grammar = fnv1a(read_file(here .. "/grammar.lua") or ""),
    words = fnv1a(read_file(grammar.WORDS) or ""),
  }) .. "\n"
end

local function manifest_line(job, duration)
  return encode({
    audio_filepath = job.path, duration = tonumber(("%.3f"):format(duration)), text = job.text,
    voice = job.voice, rate = job.rate, pitch = job.pitch, noise = job.noise,
    snr_db = job.snr_db and tonumber(("%.1f"):format(job.snr_db)) or nil,
  })
end

-- synth.prepare(opts) -> train manifest path, test manifest path, info
-- opts (all optional, defaults in synth.DEFAULTS): dir, seed, n_train, n_test, procs, quiet,
-- rate, pitch, level_db, pad, noise, test_noise, babble_bank, espeak, luajit, accents,
-- train_variants, test_variants. info = {cached = bool, seconds, hours, n_train, n_test}.
function M.prepare(opts)
  local okc, cfg = pcall(M.config, opts)
  if not okc then error(cfg, 2) end
  local train_path, test_path = cfg.dir .. "/train.jsonl", cfg.dir .. "/test.jsonl"
  local stamp_path = cfg.dir .. "/stamp.json"
  local stamp = stamp_of(cfg)
  if read_file(stamp_path) == stamp and read_file(train_path) and read_file(test_path) then
    return train_path, test_path, { cached = true, n_train = cfg.n_train, n_test = cfg.n_test }
  end
  require_espeak(cfg.espeak, "synth.prepare")
  tn()                                               -- fail early without tn.audio
  local t0 = now()
  os.remove(stamp_path)
  local work = cfg.dir .. "/.work"
  os.execute("rm -rf " .. shell_quote(work))
  for _, d in ipairs({ cfg.dir, cfg.dir .. "/train", cfg.dir .. "/test", work }) do
    if not ok_status(os.execute("mkdir -p " .. shell_quote(d))) then
      error("synth.prepare: cannot create directory " .. d, 2)
    end
  end
  cfg._checked = true
  local train_jobs, test_jobs = M.plan(cfg)
  local jobs = {}
  for _, j in ipairs(train_jobs) do jobs[#jobs + 1] = j end
  for _, j in ipairs(test_jobs) do jobs[#jobs + 1] = j end
  local total = #jobs
  say(cfg, ("synth: %d train + %d test utterances -> %s (%d process%s)\n"):format(
    cfg.n_train, cfg.n_test, cfg.dir, cfg.procs, cfg.procs == 1 and "" or "es"))

  local last_print = 0
  local function show(done, final)
    local t = now()
    if not final and t - last_print < 0.5 then return end
    last_print = t
    local el = t - t0
    local rate = el > 0 and done / el or 0
    local eta = rate > 0 and (total - done) / rate or 0
    say(cfg, ("\rsynth: %d/%d utterances  %.1f utt/s  elapsed %s  ETA %s   "):format(
      done, total, rate, fmt_time(el), fmt_time(eta)))
  end

  local durations = {}
  local procs = math.max(1, math.min(cfg.procs, total))
  if procs == 1 then
    durations = M.run_jobs(cfg, jobs, 1, 1, function(c) show(c) end)
  else
    local workfile = work .. "/jobs.lua"
    write_atomic(workfile, "return " .. encode({ cfg = cfg, jobs = jobs }, true) .. "\n")
    local script = here .. "/synth_worker.lua"
    local env = "LUA_PATH=" .. shell_quote(package.path .. ";;")
    local pid = ffi.C.getpid()
    for k = 1, procs do
      local cmd = ("%s %s %s %s %d %d %d"):format(env, cfg.luajit, shell_quote(script),
        shell_quote(workfile), k, procs, pid)
      os.execute(("(%s; echo $? > %s) </dev/null >/dev/null 2>%s &"):format(cmd,
        shell_quote(work .. "/rc-" .. k), shell_quote(work .. "/log-" .. k)))
    end
    while true do
      local done, finished = 0, 0
      for k = 1, procs do
        local f = io.open(work .. "/progress-" .. k, "rb")
        if f then done = done + f:seek("end"); f:close() end
        if read_file(work .. "/rc-" .. k) then finished = finished + 1 end
      end
      show(done)
      if finished == procs then break end
      sleep_ms(200)
    end
    for k = 1, procs do
      local rc = tonumber(read_file(work .. "/rc-" .. k))
      local part = read_file(work .. "/done-" .. k .. ".tsv")
      if rc ~= 0 or not part then
        say(cfg, "\n")
        local log = read_file(work .. "/log-" .. k) or ""
        error(("synth.prepare: worker %d of %d failed (exit %s):\n%s"):format(k, procs,
          tostring(rc), log), 2)
      end
      for j, d in part:gmatch("(%d+)\t([%d.]+)") do durations[tonumber(j)] = tonumber(d) end
    end
  end
  show(total, true)
  say(cfg, "\n")

  local seconds = { train = 0, test = 0 }
  local lines = { train = {}, test = {} }
  for j, job in ipairs(jobs) do
    local d = durations[j]
    if not d then error("synth.prepare: no audio for " .. job.path, 2) end
    seconds[job.split] = seconds[job.split] + d
    local l = lines[job.split]
    l[#l + 1] = manifest_line(job, d)
  end
  -- files of a previous, larger data set
  for split, n in pairs({ train = cfg.n_train, test = cfg.n_test }) do
    local i = n + 1
    while os.remove(cfg.dir .. "/" .. split .. "/" .. pad_index(i) .. ".wav") do i = i + 1 end
  end
  write_atomic(train_path, #lines.train > 0 and table.concat(lines.train, "\n") .. "\n" or "")
  write_atomic(test_path, #lines.test > 0 and table.concat(lines.test, "\n") .. "\n" or "")
  os.execute("rm -rf " .. shell_quote(work))
  write_atomic(stamp_path, stamp)
  local el = now() - t0
  local hours = (seconds.train + seconds.test) / 3600
  say(cfg, ("synth: made %d utterances (train %.2f h, test %.2f h of audio) in %s\n"):format(
    total, seconds.train / 3600, seconds.test / 3600, fmt_time(el)))
  return train_path, test_path, { cached = false, seconds = el, hours = hours,
    train_hours = seconds.train / 3600, test_hours = seconds.test / 3600,
    n_train = cfg.n_train, n_test = cfg.n_test }
end

-- ---- checks ----------------------------------------------------------------------------------

-- synth.homophones{words = list, accents = list, espeak = path} -> list of clashes
-- {accent, a, b, ipa}: two words that espeak-ng pronounces alike (stress marks ignored, flapped
-- and dental t/d counted as t/d).
function M.homophones(opts)
  opts = opts or {}
  local words = opts.words or get_grammar().vocabulary
  local accents = opts.accents or M.ACCENTS
  local espeak = opts.espeak or M.DEFAULTS.espeak
  require_espeak(espeak, "synth.homophones")
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  for _, w in ipairs(words) do f:write(w, ".\n") end
  f:close()
  local clashes = {}
  for _, accent in ipairs(accents) do
    local p = io.popen(("%s -q --ipa -v %s -f %s"):format(espeak, shell_quote(accent), shell_quote(tmp)))
    local lines = {}
    for l in p:lines() do lines[#lines + 1] = l end
    p:close()
    if #lines ~= #words then
      os.remove(tmp)
      error(("synth.homophones: espeak-ng -v %s gave %d lines for %d words"):format(accent, #lines, #words), 2)
    end
    local by = {}
    for i, l in ipairs(lines) do
      local key = l:gsub("ˈ", ""):gsub("ˌ", ""):gsub("ɾ", "d"):gsub("t̪", "t"):gsub("d̪", "d"):gsub("%s", "")
      if by[key] then
        clashes[#clashes + 1] = { accent, by[key], words[i], l }
      else
        by[key] = words[i]
      end
    end
  end
  os.remove(tmp)
  return clashes
end

return M
