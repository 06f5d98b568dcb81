-- tern.data.features: the on-disk feature cache.
--
--   local cache = tn.data.FeatureCache{ dir = "exp/feats", opts = { num_mel_bins = 80 } }
--   local entries, info = cache:add(items, { speeds = { 0.9, 1.0, 1.1 } })
--   local cmvn = cache:cmvn(entries)              -- global mean / std, stored with the cache
--   local x = cache:features(entries[1])          -- (frames, 80) f32
--
-- Layout. Features live under dir/fbank-<hash of the options>/ (opts.txt there records the
-- options) in shards: shard-*.safetensors, each holding up to shard_utts utterances (or
-- shard_mb MiB) as one "feats" tensor (rows, dim) f32 (or f16 with dtype = "f16") with the
-- utterances' rows back to back, "offsets" i64 (n + 1) row offsets, "checksums" i64 (n)
-- (tn_data_checksum of each utterance's bytes) and the utterance keys in the metadata. A key
-- is "<absolute audio path>|<size>|<mtime ns>|<speed>", so an edited or replaced audio file
-- gets new features, and a run with the same options finds everything it computed before:
-- the second run reads the shard headers and computes nothing. Shards are written atomically
-- (temporary file + rename) with unique names, so an interrupted run keeps the shards it
-- finished and concurrent writers never clobber each other (duplicated keys: the first one
-- read wins).
--
-- Computing: audio is loaded through libsndfile and resampled to sample_rate when needed,
-- speed-perturbed (tn.audio.speed) for speeds other than 1, and turned into Kaldi fbank by
-- tn.audio.fbank_batch, `chunk` utterances per call in parallel over the OpenMP threads
-- (tn.set_num_threads). Progress goes to stderr on one line (utterances, utt/s, ETA).
--
-- Speed perturbation: each speed is its own cached utterance (icefall's recipe: the training
-- set is the union of the 0.9, 1.0 and 1.1 copies, three times as many utterances per epoch);
-- their ids get the suffix _sp0.9 / _sp1.1. Pass speeds = {1} (the default) for none, and
-- compute the CMVN statistics over the entries the model trains on. With one_speed = true each
-- utterance gets one of the speeds (drawn from the seed and its id): the epoch keeps its size.
--
-- CMVN: cache:cmvn(entries) computes the global per-bin mean and standard deviation (floored
-- at 1e-3) over the entries' features once and stores them as cmvn-<hash of the keys>.safetensors
-- beside the shards.
local lib = require "tern.lib"
local Tensor = require "tern.tensor"
local data = require "tern.data"
local serialize = require "tern.serialize"

local ffi, C = lib.ffi, lib.C
local fmt, floor = string.format, math.floor

local M = {}

local FORMAT = "tern-feats-1"

-- The fbank options of the cache: Kaldi fbank, 80 bins, 25 / 10 ms, dither 0, with the user's
-- options on top. Returns the table for tn.audio and its canonical string.
function M.fbank_opts(user, sample_rate)
  local o = { num_mel_bins = 80, frame_length = 25, frame_shift = 10, dither = 0,
    sample_frequency = sample_rate or 16000 }
  for k, v in pairs(user or {}) do o[k] = v end
  local keys = {}
  for k in pairs(o) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. tostring(o[k]) end
  return o, table.concat(parts, ",")
end

local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
  ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(ch) return escapes[ch] or fmt("\\u%04x", ch:byte()) end) .. '"'
end

local FeatureCache = {}
FeatureCache.__index = FeatureCache

local known = { dir = true, opts = true, dtype = true, sample_rate = true, shard_utts = true,
  shard_mb = true, chunk = true, quiet = true, log = true }

function M.FeatureCache(args)
  if type(args) ~= "table" then
    error("tn.data.FeatureCache: expected a table {dir=, opts=, ...}, got " .. type(args), 2)
  end
  for k in pairs(args) do
    if not known[k] then
      error(fmt("tn.data.FeatureCache: unknown option '%s' (expected dir, opts, dtype, sample_rate, shard_utts, "
        .. "shard_mb, chunk, quiet, log)", tostring(k)), 2)
    end
  end
  if type(args.dir) ~= "string" or args.dir == "" then
    error("tn.data.FeatureCache: dir must be a directory path, got " .. tostring(args.dir), 2)
  end
  local dtype = args.dtype or "f32"
  if dtype ~= "f32" and dtype ~= "f16" then
    error("tn.data.FeatureCache: dtype must be \"f32\" or \"f16\", got " .. tostring(dtype), 2)
  end
  local sr = args.sample_rate or 16000
  if type(sr) ~= "number" or sr <= 0 then
    error("tn.data.FeatureCache: sample_rate must be a positive number, got " .. tostring(sr), 2)
  end
  if args.opts ~= nil and type(args.opts) ~= "table" then
    error("tn.data.FeatureCache: opts must be a table of fbank options, got " .. type(args.opts), 2)
  end
  if args.opts and args.opts.sample_frequency and args.opts.sample_frequency ~= sr then
    error(fmt("tn.data.FeatureCache: opts.sample_frequency (%s) differs from sample_rate (%s)",
      tostring(args.opts.sample_frequency), tostring(sr)), 2)
  end
  for _, k in ipairs({ "shard_utts", "shard_mb", "chunk" }) do
    local v = args[k]
    if v ~= nil and (type(v) ~= "number" or v < 1 or v ~= floor(v)) then
      error(fmt("tn.data.FeatureCache: %s must be a positive integer, got %s", k, tostring(v)), 2)
    end
  end
  local fb, canon = M.fbank_opts(args.opts, sr)
  local tag = canon .. ";dtype=" .. dtype .. ";" .. FORMAT
  local self = setmetatable({
    root = args.dir, fbank = fb, tag = tag, dtype = dtype, sample_rate = sr,
    dim = fb.num_mel_bins + ((fb.use_energy and 1) or 0),
    shard_utts = args.shard_utts or 2000, shard_mb = args.shard_mb or 256, chunk = args.chunk or 32,
    log = data._logger(args), quiet = args.quiet,
    shards = {},       -- {path=, data_offset=, data_bytes=, n=, offsets=Tensor, checksums=Tensor, first=}
    utt_shard = {}, utt_row = {}, utt_frames = {}, keys = {}, by_key = {},
    num_utts = 0, store_dirty = true,
    computed = 0, reused = 0, skipped = 0,
  }, FeatureCache)
  self.dir = args.dir .. "/fbank-" .. data._hash(tag):sub(1, 12)
  data._mkdir_p(self.dir)
  local stamp = self.dir .. "/opts.txt"
  local f = io.open(stamp, "rb")
  if f then
    local old = f:read("*a")
    f:close()
    if old:gsub("%s+$", "") ~= tag then
      error(fmt("tn.data.FeatureCache: %s records other options (%s) than these (%s); delete that directory",
        stamp, old, tag), 2)
    end
  else
    f = io.open(stamp, "wb")
    if not f then error("tn.data.FeatureCache: cannot write " .. stamp, 2) end
    f:write(tag, "\n")
    f:close()
  end
  for _, path in ipairs(data._find(self.dir, "shard-*.safetensors", 1)) do
    self:_load_shard(path, 3)
  end
  return self
end

local function corrupt(path, why, level)
  error(fmt("tn.data.FeatureCache: %s is corrupt (%s); delete it to recompute", path, why), level + 1)
end

-- Reads a shard's header and index tensors; registers its utterances.
function FeatureCache:_load_shard(path, level)
  level = level + 1
  local ok, hdr, data_start, size = pcall(serialize.read_header, path)
  if not ok then corrupt(path, tostring(hdr):gsub("^load: ", ""), level) end
  local meta = hdr.__metadata__
  if type(meta) ~= "table" or meta.format ~= FORMAT then corrupt(path, "not a " .. FORMAT .. " shard", level) end
  if meta.opts ~= self.tag then corrupt(path, "made with other options: " .. tostring(meta.opts), level) end
  local feats, offs, sums = hdr.feats, hdr.offsets, hdr.checksums
  local want_dt = self.dtype == "f16" and "F16" or "F32"
  if type(feats) ~= "table" or feats.dtype ~= want_dt or type(feats.shape) ~= "table" or #feats.shape ~= 2
    or feats.shape[2] ~= self.dim then
    corrupt(path, fmt("'feats' must be (rows, %d) %s", self.dim, want_dt), level)
  end
  local keys = {}
  for k in (meta.keys or ""):gmatch("[^\n]+") do keys[#keys + 1] = k end
  local n = #keys
  for name, t in pairs({ offsets = { offs, n + 1 }, checksums = { sums, n } }) do
    local info = t[1]
    if type(info) ~= "table" or info.dtype ~= "I64" or type(info.shape) ~= "table" or info.shape[1] ~= t[2] then
      corrupt(path, fmt("'%s' must be i64 (%d) for %d keys", name, t[2], n), level)
    end
  end
  local function region(info)
    local o = info.data_offsets
    if type(o) ~= "table" or type(o[1]) ~= "number" or type(o[2]) ~= "number" or o[1] < 0 or o[2] < o[1]
      or data_start + o[2] > size then
      corrupt(path, "data offsets outside the file (truncated?)", level)
    end
    return data_start + o[1], o[2] - o[1]
  end
  local rows = feats.shape[1]
  local f_off, f_bytes = region(feats)
  if f_bytes ~= rows * self.dim * (self.dtype == "f16" and 2 or 4) then corrupt(path, "feats size", level) end
  local offsets = Tensor.empty({ n + 1 }, { dtype = "i64" })
  local checksums = Tensor.empty({ math.max(n, 1) }, { dtype = "i64" })
  local o1 = region(offs)
  local s1 = region(sums)
  if C.tn_io_read(offsets._c, path, o1) ~= 0 then corrupt(path, lib.last_error(), level) end
  if n > 0 and C.tn_io_read(checksums:narrow(1, 1, n)._c, path, s1) ~= 0 then corrupt(path, lib.last_error(), level) end
  local op = ffi.cast("int64_t *", offsets._c.data)
  if op[0] ~= 0 or op[n] ~= rows then corrupt(path, "row offsets do not cover the rows", level) end
  for j = 1, n do
    if op[j] <= op[j - 1] then corrupt(path, "row offsets are not increasing", level) end
  end
  local shard = { path = path, data_offset = f_off, data_bytes = f_bytes, n = n, offsets = offsets,
    checksums = checksums }
  self.shards[#self.shards + 1] = shard
  local si = #self.shards - 1
  for j = 1, n do
    local key = keys[j]
    if not self.by_key[key] then
      local u = self.num_utts
      self.num_utts = u + 1
      self.utt_shard[u + 1] = si
      self.utt_row[u + 1] = tonumber(op[j - 1])
      self.utt_frames[u + 1] = tonumber(op[j] - op[j - 1])
      self.keys[u + 1] = { shard = shard, j = j - 1 }
      self.by_key[key] = u
    end
  end
  self.store_dirty = true
end

-- The C feature store over every shard (rebuilt after new shards were written).
function FeatureCache:_store(level)
  if not self.store_dirty and self.store then return self.store end
  local ns, nu = #self.shards, self.num_utts
  local paths = ffi.new("const char *[?]", math.max(ns, 1)) -- the strings live in self.shards
  local doff, dbytes = ffi.new("int64_t[?]", math.max(ns, 1)), ffi.new("int64_t[?]", math.max(ns, 1))
  for i, s in ipairs(self.shards) do
    paths[i - 1] = s.path
    doff[i - 1] = s.data_offset
    dbytes[i - 1] = s.data_bytes
  end
  local ushard = ffi.new("int32_t[?]", math.max(nu, 1))
  local urow, uframes = ffi.new("int64_t[?]", math.max(nu, 1)), ffi.new("int64_t[?]", math.max(nu, 1))
  local usum = ffi.new("uint64_t[?]", math.max(nu, 1))
  for u = 1, nu do
    ushard[u - 1] = self.utt_shard[u]
    urow[u - 1] = self.utt_row[u]
    uframes[u - 1] = self.utt_frames[u]
    local k = self.keys[u]
    usum[u - 1] = ffi.cast("uint64_t *", k.shard.checksums._c.data)[k.j]
  end
  local box = ffi.new("tn_featstore_t *[1]")
  local st = C.tn_featstore_open(box, ns, paths, doff, dbytes, self.dtype == "f16" and 2 or 0, self.dim, nu,
    ushard, urow, uframes, usum)
  if st ~= 0 then error("tn.data.FeatureCache: " .. lib.last_error(), (level or 1) + 1) end
  if self.store then C.tn_featstore_free(ffi.gc(self.store, nil)) end
  self.store = ffi.gc(box[0], C.tn_featstore_free)
  self.store_dirty = false
  return self.store
end

-- Writes one shard from buf = {{key=, feats=(frames, dim) tensor of the cache dtype, checksum=}}.
function FeatureCache:_write_shard(buf, level)
  local n = #buf
  local offsets = Tensor.empty({ n + 1 }, { dtype = "i64" })
  local checksums = Tensor.empty({ n }, { dtype = "i64" })
  local op, cp = ffi.cast("int64_t *", offsets._c.data), ffi.cast("uint64_t *", checksums._c.data)
  local rows, keys = 0, {}
  op[0] = 0
  local list = ffi.new("const tn_tensor *[?]", n + 2)
  list[0], list[1] = offsets._c, checksums._c
  for i, e in ipairs(buf) do
    rows = rows + e.feats:size(1)
    op[i] = rows
    cp[i - 1] = e.checksum
    keys[i] = e.key
    list[i + 1] = e.feats._c
  end
  local el = self.dtype == "f16" and 2 or 4
  local b_off, b_sum = 8 * (n + 1), 8 * n
  local b_feat = rows * self.dim * el
  local header = fmt('{"__metadata__":{"format":"%s","opts":%s,"keys":%s},'
    .. '"offsets":{"dtype":"I64","shape":[%d],"data_offsets":[0,%d]},'
    .. '"checksums":{"dtype":"I64","shape":[%d],"data_offsets":[%d,%d]},'
    .. '"feats":{"dtype":"%s","shape":[%d,%d],"data_offsets":[%d,%d]}}',
    FORMAT, json_string(self.tag), json_string(table.concat(keys, "\n")),
    n + 1, b_off, n, b_off, b_off + b_sum,
    self.dtype == "f16" and "F16" or "F32", rows, self.dim, b_off + b_sum, b_off + b_sum + b_feat)
  header = header .. string.rep(" ", (8 - #header % 8) % 8)
  self.shard_seq = (self.shard_seq or 0) + 1
  local name = fmt("%s/shard-%s-%04d.safetensors", self.dir,
    data._hash(keys[1] .. tostring(data._now()) .. tostring(os.time()) .. tostring({})):sub(1, 12), self.shard_seq)
  if C.tn_io_write(name, header, #header, list, n + 2) ~= 0 then
    error("tn.data.FeatureCache: " .. lib.last_error(), level + 1)
  end
  self:_load_shard(name, level + 1)
end

local function speed_str(s) return fmt("%.6g", s) end

-- add(items, {speeds = {1}, one_speed = false, seed = 0, progress = true}) -> entries, info
-- entries: one per item and speed that has (or now has) features, in item order with the
-- speeds of an item together: {id=, text=, audio=, duration=, speed=, frames=, utt= (store
-- index, 0-based), key=}. info = {computed=, reused=, skipped=, seconds=}.
-- one_speed = true: each item gets one of the speeds instead of all, chosen from a hash of
-- (seed, item id), so the same on every run and rank.
function FeatureCache:add(items, opts)
  opts = opts or {}
  if type(items) ~= "table" then
    error("FeatureCache:add: items must be a list of {audio=, ...}, got " .. type(items), 2)
  end
  local speeds = opts.speeds or { 1 }
  if type(speeds) ~= "table" or #speeds == 0 then
    error("FeatureCache:add: speeds must be a non-empty list of factors", 2)
  end
  for _, s in ipairs(speeds) do
    if type(s) ~= "number" or s < 0.1 or s > 10 then
      error("FeatureCache:add: each speed must be a number in [0.1, 10], got " .. tostring(s), 2)
    end
  end
  local log = (opts.quiet ~= nil or opts.log ~= nil) and data._logger(opts) or self.log
  local show_progress = opts.progress ~= false and not (opts.quiet or (opts.quiet == nil and self.quiet))
  local t0 = data._now()
  local entries, pending, skipped, reused = {}, {}, 0, 0
  local slot_of = {}
  for i, it in ipairs(items) do
    if type(it) ~= "table" or type(it.audio) ~= "string" then
      error(fmt("FeatureCache:add: item %d has no audio path", i), 2)
    end
    if it.audio:find("[\n|]") then
      error(fmt("FeatureCache:add: item %d: audio path %q contains a newline or '|'", i, it.audio), 2)
    end
    local st, err = data._stat(it.audio)
    if not st then
      skipped = skipped + 1
      log("features: skipping " .. it.audio .. ": " .. err)
    else
      local abs = data._abspath(it.audio)
      local mine = speeds
      if opts.one_speed and #speeds > 1 then
        local h = tonumber(data._hash(tostring(opts.seed or 0) .. "|" .. tostring(it.id or it.audio)):sub(1, 8), 16)
        mine = { speeds[h % #speeds + 1] }
      end
      for _, s in ipairs(mine) do
        local key = fmt("%s|%d|%d|%s", abs, st.size, st.mtime_ns, speed_str(s))
        local e = { id = s == 1 and it.id or fmt("%s_sp%s", tostring(it.id), speed_str(s)), text = it.text,
          audio = it.audio, duration = it.duration and it.duration / s, speed = s, key = key, item = it }
        entries[#entries + 1] = e
        local u = self.by_key[key]
        if u then
          reused = reused + 1
        elseif not slot_of[key] then
          slot_of[key] = true
          pending[#pending + 1] = e
        end
      end
    end
  end

  local audio = require "tern.audio"
  local window = floor(self.sample_rate * self.fbank.frame_length / 1000)
  local el = self.dtype == "f16" and 2 or 4
  local buf, buf_bytes, computed, audio_s = {}, 0, 0, 0
  local failed = {}
  local last_print, total = 0, #pending
  local function progress(final)
    if not show_progress or total == 0 then return end
    local now = data._now()
    if not final and now - last_print < 0.5 then return end
    last_print = now
    local done = computed + #failed
    local rate = done / math.max(now - t0, 1e-9)
    io.stderr:write(fmt("\rfeatures: %d/%d utts, %.1f utt/s, ETA %s   ", done, total, rate,
      data._hms((total - done) / math.max(rate, 1e-9))))
    if final then io.stderr:write("\n") end
    io.stderr:flush()
  end
  for c0 = 1, total, self.chunk do
    local waves, owners = {}, {}
    for i = c0, math.min(total, c0 + self.chunk - 1) do
      local e = pending[i]
      local ok, x = pcall(audio.load, e.audio, { sample_rate = self.sample_rate })
      if ok and e.speed ~= 1 then ok, x = pcall(audio.speed, x, e.speed) end
      if not ok then
        failed[#failed + 1] = e
        log(fmt("features: skipping %s: %s", e.audio, tostring(x)))
      elseif x:numel() < window then
        failed[#failed + 1] = e
        log(fmt("features: skipping %s: %d samples, fewer than one %g ms frame", e.audio, x:numel(),
          self.fbank.frame_length))
      else
        audio_s = audio_s + x:numel() / self.sample_rate
        waves[#waves + 1] = x
        owners[#owners + 1] = e
      end
    end
    if #waves > 0 then
      local feats = audio.fbank_batch(waves, self.fbank)
      for i, f in ipairs(feats) do
        if self.dtype == "f16" then f = f:to("f16") end
        local nbytes = f:numel() * el
        buf[#buf + 1] = { key = owners[i].key, feats = f, checksum = C.tn_data_checksum(f._c.data, nbytes) }
        buf_bytes = buf_bytes + nbytes
        computed = computed + 1
        if #buf >= self.shard_utts or buf_bytes >= self.shard_mb * 1048576 then
          self:_write_shard(buf, 2)
          buf, buf_bytes = {}, 0
        end
      end
    end
    progress(false)
  end
  if #buf > 0 then self:_write_shard(buf, 2) end
  progress(true)

  -- resolve store indices and frame counts; drop entries whose audio failed
  local out = {}
  for _, e in ipairs(entries) do
    local u = self.by_key[e.key]
    if u then
      e.utt = u
      e.frames = self.utt_frames[u + 1]
      e.duration = e.duration or (e.frames * self.fbank.frame_shift / 1000)
      e.item = nil
      out[#out + 1] = e
    end
  end
  skipped = skipped + #failed
  local secs = data._now() - t0
  self.computed, self.reused, self.skipped = self.computed + computed, self.reused + reused, self.skipped + skipped
  local info = { computed = computed, reused = reused, skipped = skipped, seconds = secs, audio_seconds = audio_s }
  if computed > 0 then
    log(fmt("features: %d computed (%.2f h of audio) in %.1f s (%.1f utt/s, %.0fx real time), "
      .. "%d reused, %d skipped; %s",
      computed, audio_s / 3600, secs, computed / secs, audio_s / secs, reused, skipped, self.dir))
  else
    log(fmt("features: %d reused, %d skipped; %s", reused, skipped, self.dir))
  end
  return out, info
end

local function check_entry(self, e, fname, level)
  if type(e) ~= "table" or type(e.utt) ~= "number" or e.utt < 0 or e.utt >= self.num_utts then
    error(fmt("FeatureCache:%s: expected an entry returned by this cache's add(), got %s", fname, tostring(e)),
      level + 1)
  end
end

-- The features of one entry: (frames, dim) f32, as stored (no CMVN).
function FeatureCache:features(e)
  check_entry(self, e, "features", 2)
  local store = self:_store(2)
  lib.OUT[0] = nil
  lib.check(C.tn_featstore_read(lib.OUT, store, e.utt), 2)
  return lib.wrap(lib.OUT[0])
end

-- Global CMVN over the entries: {mean = (dim) f32, std = (dim) f32, count = frames,
-- tensor = (2, dim) f32 rows mean and 1 / std (what Batches and the loader take)}. Computed
-- once per set of entries and stored beside the shards.
function FeatureCache:cmvn(entries)
  if type(entries) ~= "table" or #entries == 0 then
    error("FeatureCache:cmvn: expected a non-empty list of entries", 2)
  end
  local keys = {}
  for i, e in ipairs(entries) do
    check_entry(self, e, "cmvn", 2)
    keys[i] = e.key
  end
  table.sort(keys)
  local path = fmt("%s/cmvn-%s.safetensors", self.dir, data._hash(table.concat(keys, "\n")))
  local stats, count
  if data._stat(path) then
    local ok, t = pcall(serialize.load, path)
    if not ok or not t.stats or not t.count or t.stats:dim() ~= 2 or t.stats:size(2) ~= self.dim then
      error(fmt("FeatureCache:cmvn: %s is corrupt (%s); delete it to recompute", path,
        ok and "unexpected tensors" or tostring(t)), 2)
    end
    stats, count = t.stats, t.count:item()
  else
    local store = self:_store(2)
    local utts = ffi.new("int64_t[?]", #entries)
    for i, e in ipairs(entries) do utts[i - 1] = e.utt end
    stats = Tensor.zeros({ 2, self.dim }, { dtype = "f64" })
    local cnt = ffi.new("int64_t[1]")
    lib.check(C.tn_featstore_cmvn(stats._c, cnt, store, utts, #entries), 2)
    count = tonumber(cnt[0])
    serialize.save(path, { stats = stats, count = Tensor.tensor({ count }, { dtype = "i64" }) },
      { format = "tern-cmvn-1", utterances = tostring(#entries) })
  end
  local mean = stats:select(1, 1) / count
  local var = (stats:select(1, 2) / count - mean * mean):clamp(0, math.huge)
  local std = var:sqrt():clamp(1e-3, math.huge)
  local mean32, std32 = mean:float(), std:float()
  return { mean = mean32, std = std32, count = count,
    tensor = Tensor.stack({ mean32, (1 / std):float() }), path = path }
end

M.FeatureCache_mt = FeatureCache
return M
