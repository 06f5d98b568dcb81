-- tern.data.batches: the bucketing batch sampler and the background loader over a FeatureCache.
--
--   local batches = tn.data.Batches{ items = entries, max_frames = 20000, seed = 1, buckets = 10,
--     cache = cache, cmvn = cache:cmvn(entries), spec_augment = true, rank = r, world_size = n }
--   for batch in batches:iter(epoch) do
--     -- batch.feats (B, T, 80) f32, batch.feat_lens (B) i64, batch.texts, batch.ids, batch.items
--   end
--   batches:plan(epoch)         -- this rank's batches as lists of 1-based item positions
--   batches:num_batches(epoch)  -- #plan(epoch)
--
-- Sampling. Items are sorted by length in feature frames (entry.frames, or computed from
-- duration) and cut into `buckets` buckets of equal count. Each epoch, with a generator seeded
-- from (seed, epoch) (splitmix64; not math.random, not the global tensor generator), every
-- bucket is shuffled and packed greedily into batches whose padded size B * T_max stays within
-- max_frames (and B within max_batch when given); then the batches of all buckets are
-- shuffled together. With shuffle = false nothing is shuffled (shortest first). An item longer
-- than max_frames gets a batch of its own (reported once). Every item appears exactly once per
-- epoch before sharding.
--
-- Sharding. Every rank computes the same epoch plan; rank r takes batches r+1, r+1+W, ...
-- (W = world_size). So that every rank runs the same number of steps (a collective per step
-- must not hang), the list is first padded to a multiple of W by repeating its first batches
-- (those utterances are seen twice in that epoch), or, with drop_last = true, cut down to a
-- multiple of W (the last batches of the shuffled list are not seen that epoch).
--
-- Loading. iter(epoch) hands the plan to a C loader (core/loader.c): a pthread worker reads
-- each batch's features from the cache's shards, applies CMVN ((x - mean) / std, then zero
-- padding) and SpecAugment (training only: spec_augment = true or a table of options), up to
-- `prefetch` batches ahead, so the training loop does not wait on I/O. prefetch = 0 assembles
-- in the calling thread; both give identical batches. The masks are drawn from a Philox stream
-- keyed by (seed, epoch, rank): the same for every run, different each epoch.
local lib = require "tern.lib"
local data = require "tern.data"
local Tensor = require "tern.tensor"

local ffi, C = lib.ffi, lib.C
local fmt, floor = string.format, math.floor
local bxor, rshift = bit.bxor, bit.rshift

local M = {}

-- splitmix64 ------------------------------------------------------------------------------------

local U64 = ffi.typeof("uint64_t")
local GOLDEN = 0x9E3779B97F4A7C15ULL

local function mix64(z)
  z = bxor(z, rshift(z, 30)) * 0xBF58476D1CE4E5B9ULL
  z = bxor(z, rshift(z, 27)) * 0x94D049BB133111EBULL
  return bxor(z, rshift(z, 31))
end

local function u64_of(x)
  return ffi.cast("uint64_t", ffi.cast("int64_t", x))
end

-- A generator seeded from a list of integers.
local Rng = {}
Rng.__index = Rng
local function new_rng(...)
  local s = U64(0x853C49E6748FEA9BULL)
  for i = 1, select("#", ...) do s = mix64(s + u64_of(select(i, ...)) + GOLDEN) end
  return setmetatable({ state = s }, Rng)
end
M._new_rng = new_rng

function Rng:next64()
  self.state = self.state + GOLDEN
  return mix64(self.state)
end

-- uniform in [0, 1) with 53 bits
function Rng:uniform()
  return tonumber(rshift(self:next64(), 11)) * 1.1102230246251565e-16
end

function Rng:shuffle(t)
  for i = #t, 2, -1 do
    local j = floor(self:uniform() * i) + 1
    t[i], t[j] = t[j], t[i]
  end
  return t
end

-- frames --------------------------------------------------------------------------------------

-- Feature frames of an item: item.frames, else from item.duration with Kaldi's snip_edges
-- framing (1 + (samples - window) // shift).
function M.frames_of(item, sample_rate, frame_shift, frame_length)
  if item.frames then return item.frames end
  if type(item.duration) ~= "number" then return nil end
  local sr = sample_rate or 16000
  local shift = floor(sr * (frame_shift or 10) / 1000)
  local win = floor(sr * (frame_length or 25) / 1000)
  local n = floor(item.duration * sr + 0.5)
  if n < win then return 0 end
  return 1 + floor((n - win) / shift)
end

-- Batches ---------------------------------------------------------------------------------------

local Batches = {}
Batches.__index = Batches

local SA_DEFAULTS = { time_masks = 2, time_width = 0.1, freq_masks = 2, freq_width = 27, value = 0 }

local known = { items = true, max_frames = true, max_batch = true, shuffle = true, seed = true, buckets = true,
  drop_last = true, rank = true, world_size = true, cache = true, cmvn = true, spec_augment = true,
  prefetch = true, sample_rate = true, frame_shift = true, frame_length = true, quiet = true, log = true }

local function int_arg(args, name, default, min, level)
  local v = args[name]
  if v == nil then return default end
  if type(v) ~= "number" or v ~= floor(v) or v < min then
    error(fmt("tn.data.Batches: %s must be an integer >= %d, got %s", name, min, tostring(v)), level + 1)
  end
  return v
end

function M.Batches(args)
  if type(args) ~= "table" then
    error("tn.data.Batches: expected a table {items=, max_frames=, ...}, got " .. type(args), 2)
  end
  for k in pairs(args) do
    if not known[k] then error(fmt("tn.data.Batches: unknown option '%s'", tostring(k)), 2) end
  end
  local items = args.items
  if type(items) ~= "table" or #items == 0 then error("tn.data.Batches: items must be a non-empty list", 2) end
  if type(args.max_frames) ~= "number" or args.max_frames < 1 then
    error("tn.data.Batches: max_frames (padded frames per batch, B * T_max) must be a positive number, got "
      .. tostring(args.max_frames), 2)
  end
  local world = int_arg(args, "world_size", 1, 1, 2)
  local rank = int_arg(args, "rank", 0, 0, 2)
  if rank >= world then error(fmt("tn.data.Batches: rank %d must be below world_size %d", rank, world), 2) end
  local self = setmetatable({
    items = items, max_frames = args.max_frames, max_batch = int_arg(args, "max_batch", nil, 1, 2),
    shuffle = args.shuffle ~= false, seed = int_arg(args, "seed", 0, -2 ^ 53, 2),
    num_buckets = int_arg(args, "buckets", 10, 1, 2), drop_last = args.drop_last == true,
    rank = rank, world_size = world, cache = args.cache, prefetch = int_arg(args, "prefetch", 4, 0, 2),
    log = data._logger(args),
  }, Batches)
  -- lengths
  local frames = {}
  for i, it in ipairs(items) do
    local f = type(it) == "table" and M.frames_of(it, args.sample_rate, args.frame_shift, args.frame_length)
    if not f then error(fmt("tn.data.Batches: item %d has neither frames nor duration", i), 2) end
    frames[i] = f
  end
  self.frames = frames
  local order = {}
  for i = 1, #items do order[i] = i end
  table.sort(order, function(a, b)
    if frames[a] ~= frames[b] then return frames[a] < frames[b] end
    return a < b
  end)
  local nb = math.min(self.num_buckets, #items)
  self.buckets = {}
  for b = 1, nb do
    local lo, hi = floor((b - 1) * #items / nb) + 1, floor(b * #items / nb)
    local bucket = {}
    for j = lo, hi do bucket[#bucket + 1] = order[j] end
    self.buckets[b] = bucket
  end
  local over = 0
  for i = 1, #items do
    if frames[i] > self.max_frames then over = over + 1 end
  end
  if over > 0 then
    self.log(fmt("Batches: %d utterance(s) longer than max_frames = %d frames (longest %d); "
      .. "each gets a batch of its own", over, self.max_frames, frames[order[#order]]))
  end
  -- loader options
  if args.cmvn ~= nil then
    local c = args.cmvn
    if Tensor.is_tensor(c) then
      self.cmvn = c
    elseif type(c) == "table" and Tensor.is_tensor(c.tensor) then
      self.cmvn = c.tensor
    elseif type(c) == "table" and Tensor.is_tensor(c.mean) and Tensor.is_tensor(c.std) then
      self.cmvn = Tensor.stack({ c.mean:float(), (1 / c.std):float() })
    else
      error("tn.data.Batches: cmvn must be FeatureCache:cmvn()'s table, {mean=, std=} or a (2, dim) tensor "
        .. "of mean and 1/std", 2)
    end
    -- the loader's threads read it on the CPU
    self.cmvn = self.cmvn:detach():cpu():float():contiguous()
  end
  local sa = args.spec_augment
  if sa == true then sa = {} end
  if sa then
    if type(sa) ~= "table" then error("tn.data.Batches: spec_augment must be true, false or a table of options", 2) end
    local o = {}
    for k, v in pairs(SA_DEFAULTS) do o[k] = v end
    for k, v in pairs(sa) do
      if SA_DEFAULTS[k] == nil then
        error(fmt("tn.data.Batches: unknown spec_augment option '%s' (expected time_masks, time_width, freq_masks, "
          .. "freq_width, value)", tostring(k)), 2)
      end
      if type(v) ~= "number" or v < 0 then
        error(fmt("tn.data.Batches: spec_augment.%s must be a non-negative number, got %s", k, tostring(v)), 2)
      end
      o[k] = v
    end
    self.spec_augment = o
  end
  if self.cache ~= nil and (type(self.cache) ~= "table" or type(self.cache._store) ~= "function") then
    error("tn.data.Batches: cache must be a tn.data.FeatureCache", 2)
  end
  return self
end

-- The whole epoch's batches, before sharding (lists of item positions).
function Batches:_epoch_batches(epoch)
  local rng = new_rng(self.seed, epoch)
  local frames, budget, cap = self.frames, self.max_frames, self.max_batch
  local all = {}
  for _, bucket in ipairs(self.buckets) do
    local list = { unpack(bucket) }
    if self.shuffle then rng:shuffle(list) end
    local cur, tmax = {}, 0
    for _, i in ipairs(list) do
      local f = frames[i]
      local t = math.max(tmax, f)
      if #cur > 0 and (t * (#cur + 1) > budget or (cap and #cur >= cap)) then
        all[#all + 1] = cur
        cur, t = {}, f
      end
      cur[#cur + 1] = i
      tmax = t
    end
    if #cur > 0 then all[#all + 1] = cur end
  end
  if self.shuffle then rng:shuffle(all) end
  return all
end

-- This rank's batches for an epoch (1-based positions into items).
function Batches:plan(epoch)
  epoch = epoch or 1
  if type(epoch) ~= "number" or epoch ~= floor(epoch) then
    error("Batches:plan: epoch must be an integer, got " .. tostring(epoch), 2)
  end
  if self._plan_epoch == epoch then return self._plan end
  local all = self:_epoch_batches(epoch)
  local W, n = self.world_size, #all
  local per = self.drop_last and floor(n / W) or math.ceil(n / W)
  local mine = {}
  for j = 1, per do
    local k = (j - 1) * W + self.rank + 1
    if k > n then k = (k - n - 1) % n + 1 end -- padding: repeat from the start
    mine[j] = all[k]
  end
  self._plan_epoch, self._plan = epoch, mine
  return mine
end

function Batches:num_batches(epoch)
  return #self:plan(epoch)
end

-- Loader ------------------------------------------------------------------------------------------

local Loader = {}
Loader.__index = Loader
Loader.__call = function(self) return self:next() end

-- iter(epoch, {prefetch=, augment=, start=}) -> a loader; `for batch in batches:iter(epoch) do`.
-- augment = false turns SpecAugment off for this pass (e.g. validation on a training set);
-- start = k skips the first k batches of the epoch without reading them (resuming inside an
-- epoch): the batches after them, masks included, are those of an uninterrupted epoch.
function Batches:iter(epoch, opts)
  opts = opts or {}
  epoch = epoch or 1
  if not self.cache then
    error("Batches:iter: needs cache = a tn.data.FeatureCache (plan(epoch) gives the index lists alone)", 2)
  end
  local plan = self:plan(epoch)
  local start = opts.start or 0
  if type(start) ~= "number" or start < 0 or start ~= floor(start) then
    error("Batches:iter: start must be a non-negative integer, got " .. tostring(start), 2)
  end
  start = math.min(start, #plan)
  local total = 0
  for j = start + 1, #plan do total = total + #plan[j] end
  local offsets = ffi.new("int64_t[?]", #plan - start + 1)
  local utts = ffi.new("int64_t[?]", math.max(total, 1))
  local k = 0
  for j = start + 1, #plan do
    for _, i in ipairs(plan[j]) do
      local u = self.items[i].utt
      if type(u) ~= "number" then
        error(fmt("Batches:iter: item %d has no features (use the entries FeatureCache:add returns)", i), 2)
      end
      utts[k] = u
      k = k + 1
    end
    offsets[j - start] = k
  end
  local o = ffi.new("tn_loader_opts")
  o.prefetch = opts.prefetch or self.prefetch
  o.batch_base = start
  local sa = self.spec_augment
  if sa and opts.augment ~= false then
    o.time_masks, o.time_width = sa.time_masks, sa.time_width
    o.freq_masks, o.freq_width, o.mask_value = sa.freq_masks, sa.freq_width, sa.value
    o.seed = new_rng(self.seed, epoch, self.rank, 0x5A):next64()
  end
  local store = self.cache:_store(2)
  local box = ffi.new("tn_loader_t *[1]")
  local st = C.tn_loader_create(box, store, self.cmvn and self.cmvn._c or nil, #plan - start, offsets, utts, o)
  if st ~= 0 then error("Batches:iter: " .. lib.last_error(), 2) end
  return setmetatable({ handle = ffi.gc(box[0], C.tn_loader_free), plan = plan, batches = self, epoch = epoch,
    count = start }, Loader)
end

local idx_box = ffi.new("int64_t[1]")

-- The next batch, or nil after the last one (the loader is closed then).
function Loader:next()
  if not self.handle then return nil end
  local OUT, OUT2 = lib.OUT, lib.OUT2
  OUT[0], OUT2[0] = nil, nil
  local st = C.tn_loader_next(self.handle, OUT, OUT2, idx_box)
  if st ~= 0 then
    local msg = lib.last_error()
    self:close()
    error("tn.data.Batches: " .. msg, 2)
  end
  if OUT[0] == nil then
    self:close()
    return nil
  end
  local feats, lens = lib.wrap(OUT[0]), lib.wrap(OUT2[0])
  local i = tonumber(idx_box[0]) + 1
  local items = self.batches.items
  local b = { feats = feats, feat_lens = lens, texts = {}, ids = {}, items = {}, index = i, epoch = self.epoch }
  for j, pos in ipairs(self.plan[i]) do
    local it = items[pos]
    b.items[j], b.texts[j], b.ids[j] = it, it.text, it.id
  end
  self.count = i
  return b
end

local wait_box, work_box = ffi.new("double[1]"), ffi.new("double[1]")

-- {wait_s = time next() waited for the worker, work_s = time spent assembling, batches = taken}
function Loader:stats()
  if self.handle then
    C.tn_loader_stats(self.handle, wait_box, work_box)
    self.final = { wait_s = wait_box[0], work_s = work_box[0] }
  end
  local s = self.final or { wait_s = 0, work_s = 0 }
  return { wait_s = s.wait_s, work_s = s.work_s, batches = self.count }
end

-- Stops the worker and frees the batches it prepared but nobody took. Idempotent.
function Loader:close()
  if self.handle then
    self:stats()
    C.tn_loader_free(ffi.gc(self.handle, nil))
    self.handle = nil
  end
end

return M
