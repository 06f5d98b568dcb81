-- Specs of tern.data: manifests (JSONL, OpenSeq2Seq CSV, LibriSpeech directories) from tiny
-- corpora written into a temporary directory, the feature cache (reuse, speed perturbation,
-- CMVN, corruption), the bucketing sampler's invariants and the background loader (identical
-- with and without prefetch, errors surfacing in next(), clean shutdown).
local h = require "helpers.init"
local tn = h.tn

local fmt = string.format

local have_audio = tn.audio.available().sndfile and tn.audio.available().fftw

local function sh(cmd)
  assert(os.execute(cmd) == 0, cmd)
end

local write_file = h.write_file

local read_file = h.read_file

local function new_tmpdir()
  local p = os.tmpname()
  os.remove(p)
  sh("mkdir -p " .. p)
  return p
end

-- A noise waveform of `seconds` at `rate` (deterministic per seed).
local function wave(seconds, rate, seed)
  tn.manual_seed(seed or 1)
  return tn.randn(math.floor(seconds * (rate or 16000) + 0.5)) * 0.1
end

-- Captures tn.data's log lines.
local function capture()
  local lines = {}
  return lines, function(l) lines[#lines + 1] = l end
end

local function find_line(lines, pat, plain)
  for _, l in ipairs(lines) do
    if l:find(pat, 1, plain) then return l end
  end
end

-- N utterances u1..uN of 0.3..1.2 s in dir with a JSONL manifest; returns the manifest path.
local function jsonl_corpus(dir, n, extra)
  local f = assert(io.open(dir .. "/m.jsonl", "w"))
  for i = 1, n do
    local secs = 0.3 + (i * 7 % 10) * 0.1
    tn.audio.save(fmt("%s/u%d.wav", dir, i), wave(secs, 16000, i), 16000)
    f:write(fmt('{"audio_filepath": "u%d.wav", "duration": %.3f, "text": "Word %d, again!"}\n', i, secs, i))
  end
  if extra then f:write(extra) end
  f:close()
  return dir .. "/m.jsonl"
end

describe("tn.data", function()
  describe("normalize_text", function()
    it("lowers case, keeps letters, apostrophes and spaces, collapses spaces", function()
      assert.are.same("hello world it's me", tn.data.normalize_text("  Hello,   WORLD!\tIt's me. 42 "))
      assert.are.same("don't stop", tn.data.normalize_text("DON\226\128\153T -- stop"))
      assert.are.same("caf\195\169 ok", tn.data.normalize_text("caf\195\169 \194\171ok\194\187"))
      assert.are.same("", tn.data.normalize_text(" 123 ... "))
    end)

    it("rejects a non-string", function()
      assert.has_error(function() tn.data.normalize_text(3) end,
        "tn.data.normalize_text: expected a string, got number")
    end)
  end)

  if not have_audio then
    pending("manifests, features and loading need libsndfile and FFTW in this build")
    return
  end

  local tmp
  before_each(function() tmp = new_tmpdir() end)
  after_each(function()
    collectgarbage()
    if tmp then sh("rm -rf " .. tmp) end
  end)

  describe("read_manifest", function()
    it("reads a JSONL manifest with paths relative to its directory", function()
      local path = jsonl_corpus(tmp, 4)
      local lines, log = capture()
      local items, summary = tn.data.read_manifest(path, { log = log })
      assert.are.same(4, #items)
      assert.are.same(tmp .. "/u1.wav", items[1].audio)
      assert.are.same("u2", items[2].id)
      assert.are.same("word again", items[3].text)
      assert.is_true(math.abs(items[1].duration - 1.0) < 1e-6) -- 0.3 + 7 * 0.1, from the file header
      assert.are.same(16000, items[1].sample_rate)
      assert.are.same(0, summary.skipped)
      assert.truthy(find_line(lines, "4 utterances, 0%.00 hours, 0 skipped$"))
    end)

    it("reads an OpenSeq2Seq CSV manifest with quoted fields", function()
      sh("mkdir -p " .. tmp .. "/wav")
      tn.audio.save(tmp .. "/wav/a.wav", wave(0.5), 16000)
      tn.audio.save(tmp .. "/wav/b.wav", wave(0.25), 16000)
      write_file(tmp .. "/m.csv", "wav_filename,wav_filesize,transcript\n"
        .. "wav/a.wav,16044,hello there\n"
        .. '"wav/b.wav",8044,"one, ""two"""\n')
      local items = tn.data.read_manifest(tmp .. "/m.csv", { quiet = true })
      assert.are.same(2, #items)
      assert.are.same(tmp .. "/wav/a.wav", items[1].audio)
      assert.are.same("a", items[1].id)
      assert.are.same("one two", items[2].text)
      assert.is_true(math.abs(items[2].duration - 0.25) < 1e-6)
    end)

    it("reads a LibriSpeech-layout directory of FLAC files and transcripts", function()
      for _, spk in ipairs({ { "19", "198" }, { "26", "495" } }) do
        local d = fmt("%s/LibriSpeech/dev/%s/%s", tmp, spk[1], spk[2])
        sh("mkdir -p " .. d)
        local lines = {}
        for u = 0, 1 do
          local id = fmt("%s-%s-%04d", spk[1], spk[2], u)
          tn.audio.save(d .. "/" .. id .. ".flac", wave(0.4 + 0.1 * u, 16000, u + 1), 16000)
          lines[#lines + 1] = id .. " THE QUICK BROWN FOX'S " .. u
        end
        write_file(fmt("%s/%s-%s.trans.txt", d, spk[1], spk[2]), table.concat(lines, "\n") .. "\n")
      end
      local items, summary = tn.data.read_manifest(tmp .. "/LibriSpeech", { quiet = true })
      assert.are.same(4, #items)
      assert.are.same({ "19-198-0000", "19-198-0001", "26-495-0000", "26-495-0001" },
        { items[1].id, items[2].id, items[3].id, items[4].id })
      assert.are.same("the quick brown fox's", items[2].text)
      assert.truthy(items[3].audio:find("26/495/26%-495%-0000%.flac$"))
      assert.is_true(math.abs(items[2].duration - 0.5) < 1e-6)
      assert.is_true(math.abs(summary.hours - 1.8 / 3600) < 1e-9)
    end)

    it("names file:line for malformed lines", function()
      local path = jsonl_corpus(tmp, 1, '{"audio_filepath": "u1.wav", "text": }\n')
      local ok, err = pcall(tn.data.read_manifest, path, { quiet = true })
      assert.is_false(ok)
      assert.truthy(err:find("m.jsonl:2: malformed JSON", 1, true), err)
      write_file(tmp .. "/n.jsonl", '{"text": "x"}\n')
      ok, err = pcall(tn.data.read_manifest, tmp .. "/n.jsonl", { quiet = true })
      assert.is_false(ok)
      assert.truthy(err:find("n.jsonl:1: missing or non-string 'audio_filepath'", 1, true), err)
      write_file(tmp .. "/m.csv", "wav_filename,wav_filesize,transcript\nu1.wav,1,a\nu1.wav,2\n")
      ok, err = pcall(tn.data.read_manifest, tmp .. "/m.csv", { quiet = true })
      assert.is_false(ok)
      assert.truthy(err:find("m.csv:3: expected 3 fields", 1, true), err)
      write_file(tmp .. "/h.csv", "path,text\nu1.wav,a\n")
      ok, err = pcall(tn.data.read_manifest, tmp .. "/h.csv", { quiet = true })
      assert.is_false(ok)
      assert.truthy(err:find("h.csv:1: expected the OpenSeq2Seq header", 1, true), err)
      sh("mkdir -p " .. tmp .. "/ls/1/2")
      write_file(tmp .. "/ls/1/2/1-2.trans.txt", "1-2-0000 HELLO\n1-2-0001\n")
      ok, err = pcall(tn.data.read_manifest, tmp .. "/ls", { quiet = true })
      assert.is_false(ok)
      assert.truthy(err:find("1-2.trans.txt:2: utterance '1-2-0001' has no transcript", 1, true), err)
    end)

    it("rejects unknown formats and options", function()
      write_file(tmp .. "/m.txt", "x\n")
      assert.has_error(function() tn.data.read_manifest(tmp .. "/m.txt") end)
      assert.has_error(function() tn.data.read_manifest(tmp .. "/nope.jsonl") end)
      assert.has_error(function() tn.data.read_manifest(jsonl_corpus(tmp, 1), { maxdur = 3 }) end)
    end)

    it("reports missing, empty, unreadable, short and wrong-rate audio by path and counts them", function()
      local extra = '{"audio_filepath": "gone.wav", "text": "a"}\n'
        .. '{"audio_filepath": "empty.wav", "text": "b"}\n'
        .. '{"audio_filepath": "junk.wav", "text": "c"}\n'
        .. '{"audio_filepath": "short.wav", "text": "d"}\n'
        .. '{"audio_filepath": "eight.wav", "text": "e"}\n'
      local path = jsonl_corpus(tmp, 2, extra)
      write_file(tmp .. "/empty.wav", "")
      write_file(tmp .. "/junk.wav", string.rep("not a wav file ", 20))
      tn.audio.save(tmp .. "/short.wav", wave(0.01), 16000)
      tn.audio.save(tmp .. "/eight.wav", wave(0.5, 8000), 8000)
      local lines, log = capture()
      local items, s = tn.data.read_manifest(path, { log = log })
      assert.are.same(3, #items) -- the 8 kHz file is kept, to be resampled
      assert.are.same(8000, items[3].sample_rate)
      assert.are.same(4, s.skipped)
      assert.are.same({ missing = 1, empty = 1, unreadable = 1, ["too short"] = 1 }, s.reasons)
      assert.are.same(1, s.resampled)
      for _, name in ipairs({ "gone.wav", "empty.wav", "junk.wav", "short.wav", "eight.wav" }) do
        assert.truthy(find_line(lines, tmp .. "/" .. name, true), name)
      end
      assert.truthy(find_line(lines, "3 utterances, .* hours, 4 skipped %(1 missing, 1 empty, 1 unreadable, "
        .. "1 too short%), 1 resampled$"), table.concat(lines, "\n"))
      local items2, s2 = tn.data.read_manifest(path, { resample = false, quiet = true })
      assert.are.same(2, #items2)
      assert.are.same(1, s2.reasons["wrong sample rate"])
    end)

    it("filters by min_duration and max_duration", function()
      local path = jsonl_corpus(tmp, 10)
      local items, s = tn.data.read_manifest(path, { min_duration = 0.5, max_duration = 1.0, quiet = true })
      for _, it in ipairs(items) do assert.is_true(it.duration >= 0.5 - 1e-9 and it.duration <= 1.0 + 1e-9) end
      assert.are.same(10, #items + s.skipped)
      assert.is_true(s.skipped > 0 and #items > 0)
    end)
  end)

  describe("FeatureCache", function()
    it("computes Kaldi fbank once and reuses it in a second run", function()
      local items = tn.data.read_manifest(jsonl_corpus(tmp, 6), { quiet = true })
      local cache = tn.data.FeatureCache{ dir = tmp .. "/feats", shard_utts = 4, quiet = true }
      local entries, info = cache:add(items)
      assert.are.same({ 6, 0, 0 }, { info.computed, info.reused, info.skipped })
      assert.are.same(6, #entries)
      for i, e in ipairs(entries) do
        local ref = tn.audio.fbank(tn.audio.load(items[i].audio), { num_mel_bins = 80, dither = 0 })
        assert.tensor_equal(ref, cache:features(e))
        assert.are.same(ref:size(1), e.frames)
        assert.are.same(items[i].id, e.id)
      end
      -- a second cache on the same directory reads the shards and computes nothing
      local again = tn.data.FeatureCache{ dir = tmp .. "/feats", quiet = true }
      local e2, info2 = again:add(items)
      assert.are.same({ 0, 6 }, { info2.computed, info2.reused })
      assert.tensor_equal(cache:features(entries[5]), again:features(e2[5]))
      -- other options: another directory, computed anew
      local other = tn.data.FeatureCache{ dir = tmp .. "/feats", opts = { num_mel_bins = 40 }, quiet = true }
      local e3, info3 = other:add(items)
      assert.are.same(6, info3.computed)
      assert.are.same(40, other:features(e3[1]):size(2))
    end)

    it("recomputes an utterance whose audio file changed", function()
      local items = tn.data.read_manifest(jsonl_corpus(tmp, 3), { quiet = true })
      local cache = tn.data.FeatureCache{ dir = tmp .. "/feats", quiet = true }
      cache:add(items)
      tn.audio.save(items[2].audio, wave(0.8, 16000, 99), 16000)
      local again = tn.data.FeatureCache{ dir = tmp .. "/feats", quiet = true }
      local e, info = again:add(items)
      assert.are.same({ 1, 2 }, { info.computed, info.reused })
      assert.are.same(tn.audio.fbank((tn.audio.load(items[2].audio))):size(1), e[2].frames)
    end)

    it("caches the 0.9 / 1.0 / 1.1 speed copies with lengths scaled by 1 / speed", function()
      local items = tn.data.read_manifest(jsonl_corpus(tmp, 3), { quiet = true })
      local cache = tn.data.FeatureCache{ dir = tmp .. "/feats", quiet = true }
      local e = cache:add(items, { speeds = { 0.9, 1.0, 1.1 } })
      assert.are.same(9, #e)
      for i = 1, 3 do
        local slow, base, fast = e[3 * i - 2], e[3 * i - 1], e[3 * i]
        assert.are.same({ items[i].id .. "_sp0.9", items[i].id, items[i].id .. "_sp1.1" },
          { slow.id, base.id, fast.id })
        assert.is_true(math.abs(slow.frames - base.frames / 0.9) <= 2, fmt("%d vs %d", slow.frames, base.frames))
        assert.is_true(math.abs(fast.frames - base.frames / 1.1) <= 2, fmt("%d vs %d", fast.frames, base.frames))
        local x = tn.audio.speed(tn.audio.load(items[i].audio), 1.1)
        assert.tensor_equal(tn.audio.fbank(x), cache:features(fast))
      end
    end)

    it("gives each utterance one of the speeds with one_speed, the same for the same seed", function()
      local items = tn.data.read_manifest(jsonl_corpus(tmp, 12), { quiet = true })
      local cache = tn.data.FeatureCache{ dir = tmp .. "/feats", quiet = true }
      local sp = { 0.9, 1.0, 1.1 }
      local e, info = cache:add(items, { speeds = sp, one_speed = true, seed = 5 })
      assert.are.same(12, #e)
      assert.are.same(12, info.computed)
      local seen, picks = {}, {}
      for i, x in ipairs(e) do
        assert.are.equal(items[i].text, x.text)
        assert.are.equal(x.speed == 1 and items[i].id or fmt("%s_sp%g", items[i].id, x.speed), x.id)
        seen[x.speed] = (seen[x.speed] or 0) + 1
        picks[i] = x.speed
      end
      local kinds = 0
      for _ in pairs(seen) do kinds = kinds + 1 end
      assert.are.equal(3, kinds) -- (12 items: all three speeds drawn)
      -- the same seed picks the same speeds (all reused); another seed picks others
      local again, info2 = cache:add(items, { speeds = sp, one_speed = true, seed = 5 })
      assert.are.same(12, info2.reused)
      for i, x in ipairs(again) do assert.are.equal(picks[i], x.speed) end
      local other = cache:add(items, { speeds = sp, one_speed = true, seed = 6 })
      local differ = 0
      for i, x in ipairs(other) do if x.speed ~= picks[i] then differ = differ + 1 end end
      assert.is_true(differ > 0)
    end)

    it("stores f16 features within f16 rounding of the f32 ones", function()
      local items = tn.data.read_manifest(jsonl_corpus(tmp, 2), { quiet = true })
      local c32 = tn.data.FeatureCache{ dir = tmp .. "/feats", quiet = true }
      local c16 = tn.data.FeatureCache{ dir = tmp .. "/feats", dtype = "f16", quiet = true }
      local a, b = c32:add(items), c16:add(items)
      assert.tensor_near(c32:features(a[2]), c16:features(b[2]), { atol = 1e-2, rtol = 1e-3 })
    end)

    it("computes global CMVN statistics once and stores them with the cache", function()
      local items = tn.data.read_manifest(jsonl_corpus(tmp, 5), { quiet = true })
      local cache = tn.data.FeatureCache{ dir = tmp .. "/feats", quiet = true }
      local e = cache:add(items)
      local stats = cache:cmvn(e)
      local feats = {}
      for i, x in ipairs(e) do feats[i] = cache:features(x) end
      local all = tn.cat(feats, 1):double()
      assert.tensor_near(all:mean(1):float(), stats.mean, { atol = 1e-4, rtol = 1e-5 })
      assert.tensor_near(all:std(1, { unbiased = false }):float(), stats.std, { atol = 1e-4, rtol = 1e-4 })
      assert.are.same(all:size(1), stats.count)
      assert.is_truthy(io.open(stats.path, "rb"))
      local again = tn.data.FeatureCache{ dir = tmp .. "/feats", quiet = true }
      local s2 = again:cmvn(again:add(items))
      assert.are.same(stats.path, s2.path)
      assert.tensor_equal(stats.tensor, s2.tensor)
    end)

    it("skips audio that disappeared after the manifest was read", function()
      local items = tn.data.read_manifest(jsonl_corpus(tmp, 3), { quiet = true })
      os.remove(items[2].audio)
      local lines, log = capture()
      local cache = tn.data.FeatureCache{ dir = tmp .. "/feats", log = log }
      local e, info = cache:add(items, { progress = false })
      assert.are.same(2, #e)
      assert.are.same(1, info.skipped)
      assert.truthy(find_line(lines, "u2.wav", true))
    end)

    it("rejects a corrupt cache file with an error naming it", function()
      local items = tn.data.read_manifest(jsonl_corpus(tmp, 4), { quiet = true })
      local cache = tn.data.FeatureCache{ dir = tmp .. "/feats", shard_utts = 2, quiet = true }
      local e = cache:add(items)
      local shards = tn.data._find(tmp .. "/feats", "shard-*.safetensors")
      assert.are.same(2, #shards)
      -- a flipped byte in the rows: the checksum catches it on read
      local bytes = read_file(shards[1])
      local flipped = string.char((bytes:byte(#bytes - 8) + 1) % 256)
      write_file(shards[1], bytes:sub(1, #bytes - 9) .. flipped .. bytes:sub(#bytes - 7))
      local fresh = tn.data.FeatureCache{ dir = tmp .. "/feats", quiet = true }
      local fe = fresh:add(items)
      local ok, err
      for _, x in ipairs(fe) do
        ok, err = pcall(fresh.features, fresh, x)
        if not ok then break end
      end
      assert.is_false(ok)
      assert.truthy(err:find(shards[1], 1, true) and err:find("checksum mismatch", 1, true), err)
      -- a truncated shard: an error at open
      write_file(shards[2], read_file(shards[2]):sub(1, 200))
      ok, err = pcall(tn.data.FeatureCache, { dir = tmp .. "/feats", quiet = true })
      assert.is_false(ok)
      assert.truthy(err:find(shards[2], 1, true) and err:find("corrupt", 1, true), err)
      assert.truthy(e) -- the first cache object is untouched
    end)
  end)

  describe("Batches", function()
    -- synthetic items: lengths 20..400 frames
    local function items_of(n)
      local out = {}
      for i = 1, n do out[i] = { frames = 20 + (i * 37) % 381, id = "i" .. i } end
      return out
    end

    local function flatten(plan)
      local seen = {}
      for _, b in ipairs(plan) do
        for _, i in ipairs(b) do seen[#seen + 1] = i end
      end
      table.sort(seen)
      return seen
    end

    it("puts every item in exactly one batch per epoch", function()
      local items = items_of(250)
      local all = {}
      for i = 1, #items do all[i] = i end
      for _, seed in ipairs({ 0, 7 }) do
        local b = tn.data.Batches{ items = items, max_frames = 2000, seed = seed, buckets = 5, quiet = true }
        for epoch = 1, 3 do assert.are.same(all, flatten(b:plan(epoch))) end
      end
    end)

    it("keeps padded frames within max_frames and batch sizes within max_batch", function()
      local items = items_of(300)
      items[17].frames = 5000 -- longer than the budget: alone in its batch
      local lines, log = capture()
      local b = tn.data.Batches{ items = items, max_frames = 1500, max_batch = 6, seed = 1, log = log }
      assert.truthy(find_line(lines, "1 utterance%(s%) longer than max_frames = 1500"))
      local alone = false
      for _, batch in ipairs(b:plan(2)) do
        local tmax = 0
        for _, i in ipairs(batch) do tmax = math.max(tmax, items[i].frames) end
        if #batch > 1 then assert.is_true(#batch * tmax <= 1500, fmt("%d x %d", #batch, tmax)) end
        assert.is_true(#batch <= 6)
        if batch[1] == 17 then alone = #batch == 1 end
      end
      assert.is_true(alone)
    end)

    it("is deterministic for a seed and differs across epochs and seeds", function()
      local items = items_of(200)
      local a = tn.data.Batches{ items = items, max_frames = 2000, seed = 5 }
      local b = tn.data.Batches{ items = items, max_frames = 2000, seed = 5 }
      local c = tn.data.Batches{ items = items, max_frames = 2000, seed = 6 }
      assert.are.same(a:plan(1), b:plan(1))
      assert.are.same(a:plan(4), b:plan(4))
      assert.are_not.same(a:plan(1), a:plan(2))
      assert.are_not.same(a:plan(1), c:plan(1))
      local s1 = tn.data.Batches{ items = items, max_frames = 2000, shuffle = false }
      assert.are.same(s1:plan(1), s1:plan(2))
      local prev = 0
      for _, batch in ipairs(s1:plan(1)) do -- shortest first
        for _, i in ipairs(batch) do
          assert.is_true(items[i].frames >= prev)
          prev = items[i].frames
        end
      end
    end)

    it("does not touch math.random or the tensor generator", function()
      local items = items_of(50)
      tn.manual_seed(3)
      local before = tn.rand(4)
      tn.manual_seed(3)
      math.randomseed(11)
      local r0 = math.random()
      math.randomseed(11)
      tn.data.Batches{ items = items, max_frames = 500, seed = 1 }:plan(1)
      assert.are.same(r0, math.random())
      assert.tensor_equal(before, tn.rand(4))
    end)

    it("gives every rank the same number of batches", function()
      local items = items_of(101)
      for _, drop in ipairs({ false, true }) do
        for _, W in ipairs({ 2, 3, 4 }) do
          local counts, seen, total = {}, {}, 0
          local whole = #tn.data.Batches{ items = items, max_frames = 900, seed = 2 }:plan(1)
          for r = 0, W - 1 do
            local plan = tn.data.Batches{ items = items, max_frames = 900, seed = 2, rank = r, world_size = W,
              drop_last = drop }:plan(1)
            counts[#counts + 1] = #plan
            for _, i in ipairs(flatten(plan)) do
              seen[i] = (seen[i] or 0) + 1
              total = total + 1
            end
          end
          for r = 2, W do assert.are.same(counts[1], counts[r]) end
          if drop then
            assert.are.same(math.floor(whole / W), counts[1])
            for _, n in pairs(seen) do assert.are.same(1, n) end
          else
            assert.are.same(math.ceil(whole / W), counts[1])
            for i = 1, #items do assert.is_true((seen[i] or 0) >= 1, "item " .. i .. " missing") end
          end
        end
      end
    end)

    it("rejects bad arguments", function()
      local items = items_of(5)
      assert.has_error(function() tn.data.Batches{ items = {}, max_frames = 10 } end)
      assert.has_error(function() tn.data.Batches{ items = items } end)
      assert.has_error(function() tn.data.Batches{ items = items, max_frames = 10, rank = 2, world_size = 2 } end)
      assert.has_error(function() tn.data.Batches{ items = items, max_frames = 10, bucket = 3 } end)
      assert.has_error(function() tn.data.Batches{ items = { { id = "x" } }, max_frames = 10 } end)
      assert.has_error(function()
        tn.data.Batches{ items = items, max_frames = 10, spec_augment = { width = 3 }, quiet = true }
      end)
      assert.has_error(function() tn.data.Batches{ items = items, max_frames = 1000 }:iter(1) end,
        "Batches:iter: needs cache = a tn.data.FeatureCache (plan(epoch) gives the index lists alone)")
    end)

    it("computes frames from durations with Kaldi framing", function()
      assert.are.same(98, tn.data.frames_of({ duration = 1.0 }))
      assert.are.same(0, tn.data.frames_of({ duration = 0.01 }))
      assert.are.same(7, tn.data.frames_of({ frames = 7, duration = 1 }))
    end)
  end)

  describe("loader", function()
    local items, cache, entries, cmvn
    before_each(function()
      items = tn.data.read_manifest(jsonl_corpus(tmp, 12), { quiet = true })
      cache = tn.data.FeatureCache{ dir = tmp .. "/feats", shard_utts = 5, quiet = true }
      entries = cache:add(items, { speeds = { 0.9, 1.0 } })
      cmvn = cache:cmvn(entries)
    end)

    local function collect(b, epoch, opts)
      local out = {}
      for batch in b:iter(epoch, opts) do out[#out + 1] = batch end
      return out
    end

    it("yields padded, normalised batches with lengths, texts and ids", function()
      local b = tn.data.Batches{ items = entries, max_frames = 400, seed = 1, cache = cache, cmvn = cmvn }
      local got = collect(b, 1)
      assert.are.same(b:num_batches(1), #got)
      local n = 0
      for k, batch in ipairs(got) do
        assert.are.same(k, batch.index)
        local plan = b:plan(1)[k]
        local B, T = batch.feats:size(1), batch.feats:size(2)
        assert.are.same({ #plan, 80 }, { B, batch.feats:size(3) })
        assert.are.same("i64", batch.feat_lens:dtype())
        for j, pos in ipairs(plan) do
          local e = entries[pos]
          assert.are.same(e.frames, batch.feat_lens[j])
          assert.are.same(e.id, batch.ids[j])
          assert.are.same(e.text, batch.texts[j])
          local want = (cache:features(e) - cmvn.mean) / cmvn.std
          assert.tensor_near(want, batch.feats[j]:narrow(1, 1, e.frames), { atol = 1e-5, rtol = 1e-5 })
          if e.frames < T then
            assert.are.same(0, batch.feats[j]:narrow(1, e.frames + 1, T - e.frames):abs():max():item())
          end
          n = n + 1
        end
      end
      assert.are.same(#entries, n)
    end)

    it("gives identical batches with and without prefetch, SpecAugment included", function()
      local b = tn.data.Batches{ items = entries, max_frames = 500, seed = 4, cache = cache, cmvn = cmvn,
        spec_augment = { time_masks = 2, time_width = 0.2, freq_masks = 2, freq_width = 10 } }
      for epoch = 1, 2 do
        local sync, ahead = collect(b, epoch, { prefetch = 0 }), collect(b, epoch, { prefetch = 3 })
        assert.is_true(#sync > 4)
        assert.are.same(#sync, #ahead)
        for k = 1, #sync do
          assert.tensor_equal(sync[k].feats, ahead[k].feats)
          assert.tensor_equal(sync[k].feat_lens, ahead[k].feat_lens)
        end
        -- resuming inside the epoch: the tail, masks included, without reading the head
        local tail = collect(b, epoch, { start = 3 })
        assert.are.same(#sync - 3, #tail)
        for k = 1, #tail do
          assert.are.same(k + 3, tail[k].index)
          assert.tensor_equal(sync[k + 3].feats, tail[k].feats)
        end
      end
    end)

    it("masks only inside each utterance, differently each epoch", function()
      local args = { items = entries, max_frames = 500, seed = 4, cache = cache, cmvn = cmvn,
        spec_augment = { time_masks = 2, time_width = 0.3, freq_masks = 2, freq_width = 20, value = 0 } }
      local b = tn.data.Batches(args)
      local plain = collect(b, 1, { augment = false })
      local masked = collect(b, 1)
      local masked_again = collect(b, 1)
      local changed = 0
      for k = 1, #plain do
        assert.tensor_equal(masked[k].feats, masked_again[k].feats)
        local diff = masked[k].feats - plain[k].feats
        if diff:abs():max():item() > 0 then changed = changed + 1 end
        -- where they differ, the masked value is the mask value (0)
        local where = diff:ne(0)
        assert.are.same(0, masked[k].feats:masked_fill(where:logical_not(), 0):abs():max():item())
        for j = 1, masked[k].feats:size(1) do
          local n, T = masked[k].feat_lens[j], masked[k].feats:size(2)
          if n < T then
            assert.are.same(0, masked[k].feats[j]:narrow(1, n + 1, T - n):abs():max():item())
          end
        end
      end
      assert.is_true(changed > 0)
      -- without shuffling the batches are the same every epoch; the masks are not
      args.shuffle = false
      local fixed = tn.data.Batches(args)
      local m1, m2 = collect(fixed, 1), collect(fixed, 2)
      local same = 0
      for k = 1, #m1 do
        assert.tensor_equal(m1[k].feat_lens, m2[k].feat_lens)
        if (m2[k].feats - m1[k].feats):abs():max():item() == 0 then same = same + 1 end
      end
      assert.is_true(same < #m1)
    end)

    it("surfaces a corrupt shard as a Lua error in next(), with and without prefetch", function()
      local b = tn.data.Batches{ items = entries, max_frames = 400, seed = 1, cache = cache, cmvn = cmvn }
      local shard = tn.data._find(tmp .. "/feats", "shard-*.safetensors")[1]
      local bytes = read_file(shard)
      write_file(shard, bytes:sub(1, #bytes - 5) .. "XXXXX")
      for _, k in ipairs({ 0, 2 }) do
        local it = b:iter(1, { prefetch = k })
        local ok, err = pcall(function()
          for _ in it do end
        end)
        assert.is_false(ok)
        assert.truthy(err:find("tn.data.Batches: data: feature cache file '" .. shard .. "' is corrupt", 1, true), err)
        assert.is_nil(it.handle) -- closed
      end
    end)

    it("shuts down cleanly when the consumer stops early", function()
      local b = tn.data.Batches{ items = entries, max_frames = 200, seed = 1, cache = cache, cmvn = cmvn }
      collectgarbage()
      collectgarbage()
      local live0 = tn.memory_stats().live
      for _ = 1, 5 do
        local it = b:iter(1, { prefetch = 4 })
        local first = it()
        assert.truthy(first)
        it:close()
        it:close() -- idempotent
        assert.is_nil(it())
      end
      local dropped = b:iter(1, { prefetch = 4 }) -- never closed: the finalizer stops it
      assert.truthy(dropped())
      dropped = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      assert.are.same(live0, tn.memory_stats().live)
      local it = b:iter(1)
      for _ in it do end
      local st = it:stats()
      assert.are.same(b:num_batches(1), st.batches)
      assert.is_true(st.work_s > 0 and st.wait_s >= 0)
    end)
  end)
end)
