-- Specs of the default data set (recipes/data/synth.lua, grammar.lua, words.txt and
-- recipes/make_synth_data.lua): the grammar says only words of the word list, the word list has
-- no homophones, the test set's sentences and voices never occur in training, and prepare()
-- writes 16 kHz WAVs and JSONL manifests, deterministically, cached, and never half-done.
-- Needs espeak-ng (.ci/setup.sh installs it); generates a few dozen short utterances.
local h = require "helpers.init"
local tn = h.tn

local synth = dofile("recipes/data/synth.lua")
local grammar = dofile("recipes/data/grammar.lua")

-- nil for a missing file (h.read_file asserts), which exists() relies on
local read_file = synth.read_file

local function exists(path) return read_file(path) ~= nil end

local function set_of(list)
  local s = {}
  for _, v in ipairs(list) do s[v] = true end
  return s
end

local tmpdirs = {}
local function tmpdir()
  local p = io.popen("mktemp -d " .. (os.getenv("TMPDIR") or "/tmp") .. "/tern-synth.XXXXXX")
  local d = p:read("*l")
  p:close()
  tmpdirs[#tmpdirs + 1] = d
  return d
end

-- manifest lines as {audio_filepath, duration, text, voice, noise}
local function read_manifest(path)
  local out = {}
  for line in io.lines(path) do
    out[#out + 1] = {
      audio_filepath = line:match('"audio_filepath":"(.-)"'),
      duration = tonumber(line:match('"duration":([%d.]+)')),
      text = line:match('"text":"(.-)"'),
      voice = line:match('"voice":"(.-)"'),
      noise = line:match('"noise":"(.-)"'),
    }
  end
  return out
end

local function rms(t)
  return math.sqrt((t * t):mean():item())
end

-- a job as synth.plan makes them, spoken by a test voice, with the given noise
local function job(noise, snr_db, seed)
  return { split = "test", index = 1, text = "the train from paris arrives at seven fifteen",
    voice = "en-us+m4", rate = 170, pitch = 50, level_db = -30, lead = 0.1, tail = 0.1,
    noise = noise, snr_db = snr_db, noise_seed = seed or 42 }
end

describe("synth (default data set)", function()
  teardown(function()
    for _, d in ipairs(tmpdirs) do os.execute("rm -rf '" .. d .. "'") end
  end)

  describe("grammar", function()
    local g = grammar.new()
    local vocab = set_of(g.vocabulary)

    it("says only words of words.txt, in normalised text", function()
      local rng = synth.Rng(11)
      local unknown, bad = {}, {}
      for _ = 1, 20000 do
        local s = g:sentence(rng)
        if s ~= synth.normalize(s) or not s:match("^[a-z']+[a-z' ]*$") or s:match("  ") then
          bad[#bad + 1] = s
        end
        for w in s:gmatch("%S+") do if not vocab[w] then unknown[#unknown + 1] = w .. " in: " .. s end end
      end
      assert.are.same({}, bad)
      assert.are.same({}, unknown)
      local literal_missing = {}
      for _, w in ipairs(g:literal_words()) do
        if not vocab[w] then literal_missing[#literal_missing + 1] = w end
      end
      assert.are.same({}, literal_missing)
    end)

    it("makes many distinct sentences", function()
      local rng, seen, n = synth.Rng(5), {}, 0
      for _ = 1, 10000 do
        local s = g:sentence(rng)
        if not seen[s] then seen[s] = true; n = n + 1 end
      end
      assert.is_true(n > 8000, "only " .. n .. " distinct sentences in 10000")
    end)

    it("spells numbers and ordinals", function()
      for _, c in ipairs({ { 0, "zero" }, { 19, "nineteen" }, { 40, "forty" }, { 99, "ninety nine" },
        { 101, "one hundred and one" }, { 700, "seven hundred" }, { 2005, "two thousand and five" },
        { 9999, "nine thousand nine hundred and ninety nine" } }) do
        assert.are.same(c[2], grammar.number_words(c[1]))
      end
      for _, c in ipairs({ { 1, "first" }, { 21, "twenty first" }, { 30, "thirtieth" }, { 31, "thirty first" } }) do
        assert.are.same(c[2], grammar.ordinal_words(c[1]))
      end
    end)

    it("has a few hundred words, each lower-case letters and apostrophes", function()
      assert.is_true(#g.vocabulary >= 300 and #g.vocabulary <= 1000, #g.vocabulary .. " words")
      for _, w in ipairs(g.vocabulary) do assert.is_truthy(w:match("^[a-z']+$"), w) end
      assert.is_truthy(vocab["o'clock"] and vocab["it's"] and vocab["emma's"])
    end)

    it("rejects a malformed word list", function()
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write("object: Box/boxes\n")
      f:close()
      assert.has_error(function() grammar.load_words(path) end)
      f = assert(io.open(path, "w"))
      f:write("no colon here\n")
      f:close()
      local ok, err = pcall(grammar.load_words, path)
      os.remove(path)
      assert.is_false(ok)
      assert.matches("expected 'class: word word ...'", err, 1, true)
    end)
  end)

  describe("word list", function()
    it("finds homophones when there are some", function()
      local clashes = synth.homophones{ words = { "its", "it's", "two", "too", "cat" }, accents = { "en-us" } }
      local pairs_found = {}
      for _, c in ipairs(clashes) do pairs_found[#pairs_found + 1] = c[2] .. "/" .. c[3] end
      table.sort(pairs_found)
      assert.are.same({ "its/it's", "two/too" }, pairs_found)
    end)

    it("has no two words that espeak-ng pronounces alike in any accent of the data set", function()
      local clashes = synth.homophones()
      local lines = {}
      for _, c in ipairs(clashes) do lines[#lines + 1] = table.concat(c, " ") end
      assert.are.same({}, lines)
    end)

    it("names only accents and voice variants espeak-ng has", function()
      local p = io.popen("espeak-ng --voices=variant")
      local variants = p:read("*a")
      p:close()
      for _, v in ipairs(synth.TRAIN_VARIANTS) do assert.is_truthy(variants:find("!v/" .. v .. " ", 1, true), v) end
      for _, v in ipairs(synth.TEST_VARIANTS) do assert.is_truthy(variants:find("!v/" .. v .. " ", 1, true), v) end
      p = io.popen("espeak-ng --voices=en")
      local accents = p:read("*a")
      p:close()
      for _, a in ipairs(synth.ACCENTS) do assert.is_truthy(accents:find(" " .. a .. " ", 1, true), a) end
    end)
  end)

  describe("Rng", function()
    it("repeats for a seed and differs between seeds", function()
      local a, b, c = synth.Rng(1, 2, 3), synth.Rng(1, 2, 3), synth.Rng(1, 2, 4)
      local same, differ = true, 0
      for _ = 1, 100 do
        local x, y, z = a:uniform(), b:uniform(), c:uniform()
        if x ~= y then same = false end
        if x ~= z then differ = differ + 1 end
      end
      assert.is_true(same)
      assert.are.same(100, differ)
    end)

    it("draws uniformly", function()
      local r, sum, lo, hi, counts = synth.Rng(9), 0, 1, 0, { 0, 0, 0, 0 }
      for _ = 1, 20000 do
        local u = r:uniform()
        sum = sum + u
        lo, hi = math.min(lo, u), math.max(hi, u)
        local k = r:int(1, 4)
        counts[k] = counts[k] + 1
      end
      assert.is_true(math.abs(sum / 20000 - 0.5) < 0.01)
      assert.is_true(lo >= 0 and hi < 1)
      for k = 1, 4 do
        assert.is_true(math.abs(counts[k] - 5000) < 300, "int(1, 4) gave " .. k .. " " .. counts[k] .. " times")
      end
    end)

    it("rejects seeds that are not non-negative integers", function()
      assert.has_error(function() synth.Rng(-1) end, "synth.Rng: seed parts must be integers in [0, 2^53), got -1")
      assert.has_error(function() synth.Rng(1.5) end)
    end)
  end)

  describe("plan", function()
    local train, test = synth.plan{ n_train = 4000, n_test = 300, seed = 1 }

    it("keeps every test sentence out of training, and sentences distinct", function()
      local train_texts, n_distinct = {}, 0
      for _, j in ipairs(train) do
        if not train_texts[j.text] then n_distinct = n_distinct + 1 end
        train_texts[j.text] = true
      end
      assert.are.same(4000, n_distinct)
      local overlap, test_texts = {}, {}
      for _, j in ipairs(test) do
        if train_texts[j.text] then overlap[#overlap + 1] = j.text end
        assert.is_nil(test_texts[j.text])
        test_texts[j.text] = true
      end
      assert.are.same({}, overlap)
      assert.are.same(300, #test)
    end)

    it("gives the test set voice variants that training never uses", function()
      local train_variants, test_variants, accents = {}, {}, {}
      for _, j in ipairs(train) do
        local a, v = j.voice:match("^(.-)%+(.*)$")
        train_variants[v], accents[a] = true, true
      end
      for _, j in ipairs(test) do
        local v = j.voice:match("%+(.*)$")
        test_variants[v] = true
        assert.is_nil(train_variants[v], "test variant " .. v .. " speaks in training")
      end
      local n = 0
      for _ in pairs(train_variants) do n = n + 1 end
      assert.are.same(#synth.TRAIN_VARIANTS, n)
      n = 0
      for _ in pairs(test_variants) do n = n + 1 end
      assert.are.same(#synth.TEST_VARIANTS, n)
      n = 0
      for _ in pairs(accents) do n = n + 1 end
      assert.are.same(#synth.ACCENTS, n)
    end)

    it("puts noise on noise.fraction (70 %) of the training set, babble weighted, and exactly half the test set", function()
      assert.are.equal(0.7, synth.DEFAULTS.noise.fraction)
      local noisy, kinds = 0, {}
      for _, j in ipairs(train) do
        if j.noise ~= "none" then
          noisy = noisy + 1
          kinds[j.noise] = (kinds[j.noise] or 0) + 1
          assert.is_true(j.snr_db >= 5 and j.snr_db <= 25)
        end
      end
      assert.is_true(math.abs(noisy / 4000 - 0.7) < 0.04, noisy .. " noisy of 4000")
      -- weights white 1, pink 1, brown 1, babble 4
      for _, k in ipairs({ "white", "pink", "brown" }) do
        assert.is_true(math.abs(kinds[k] / noisy - 1 / 7) < 0.03, k .. ": " .. tostring(kinds[k]))
      end
      assert.is_true(math.abs(kinds.babble / noisy - 4 / 7) < 0.04, "babble: " .. kinds.babble)
      noisy = 0
      for _, j in ipairs(test) do
        if j.noise ~= "none" then noisy = noisy + 1; assert.is_true(j.snr_db >= 10 and j.snr_db <= 25) end
      end
      assert.are.same(150, noisy)
    end)

    it("is deterministic for a seed, and another seed gives other sentences", function()
      local train2 = synth.plan{ n_train = 200, n_test = 0, seed = 1 }
      local train3 = synth.plan{ n_train = 200, n_test = 0, seed = 2 }
      local same = 0
      for i = 1, 200 do
        assert.are.same(train[i].text, train2[i].text)
        assert.are.same(train[i].voice, train2[i].voice)
        assert.are.same(train[i].rate, train2[i].rate)
        if train3[i].text == train[i].text then same = same + 1 end
      end
      assert.is_true(same < 20, same .. " of 200 sentences equal for seeds 1 and 2")
    end)

    it("rejects bad options", function()
      local cases = {
        { { n_train = -1 }, "n_train must be a non-negative integer, got -1" },
        { { procs = 0 }, "procs must be >= 1, got 0" },
        { { noise = { fraction = 2 } }, "noise.fraction must be in [0, 1], got 2" },
        { { test_noise = { snr_db = { 30, 10 } } }, "test_noise.snr_db must be {min, max}" },
        { { rate = { 50, 100 } }, "rate must be {min, max} within [80, 450]" },
        { { bogus = 1 }, "unknown option 'bogus'" },
        { { noise = { colour = "red" } }, "unknown option 'noise.colour'" },
        { { noise = { kinds = { purple = 1 } } }, "noise.kinds: unknown noise 'purple'" },
        { { train_variants = { "m1", "m4" }, test_variants = { "m4" } }, "voice variant 'm4' is in both" },
      }
      for _, c in ipairs(cases) do
        local ok, err = pcall(synth.plan, c[1])
        assert.is_false(ok)
        assert.matches("synth.plan: " .. c[2], err, 1, true)
        ok, err = pcall(synth.prepare, c[1])
        assert.is_false(ok)
        assert.matches("synth.prepare: " .. c[2], err, 1, true)
      end
    end)
  end)

  describe("audio", function()
    it("resamples espeak-ng's 22050 Hz speech to 16 kHz", function()
      local y, raw = synth.speak("please bring the red box", "en-gb+f3", 175, 50)
      local _, n, rate = synth.parse_wav(raw)
      assert.are.same(22050, rate)
      assert.is_true(n > 22050 * 0.5)
      assert.are.same(math.ceil(n * 320 / 441), y:numel())
      assert.is_true(rms(y) > 0.01)
    end)

    it("rejects text outside the character set", function()
      assert.has_error(function() synth.speak("Hello, world", "en-us", 175, 50) end)
    end)

    it("makes white, pink and brown noise of unit RMS with falling spectra", function()
      -- mean squared first difference over mean square: 2 for white noise, less the more the
      -- energy sits at low frequencies
      local function diff_ratio(x)
        local n = x:numel()
        local d = x:narrow(1, 2, n - 1) - x:narrow(1, 1, n - 1)
        return (d * d):mean():item() / (x * x):mean():item()
      end
      local white, pink = synth.noise("white", 1, 32000), synth.noise("pink", 1, 32000)
      local brown = synth.noise("brown", 1, 32000)
      for _, x in ipairs({ white, pink, brown }) do assert.is_true(math.abs(rms(x) - 1) < 1e-3) end
      local w, p, b = diff_ratio(white), diff_ratio(pink), diff_ratio(brown)
      assert.is_true(math.abs(w - 2) < 0.1, "white " .. w)
      assert.is_true(p < 1, "pink " .. p)
      assert.is_true(b < 0.05, "brown " .. b)
      -- the same seed gives the same noise, another seed other noise
      assert.tensor_equal(synth.noise("pink", 7, 1000), synth.noise("pink", 7, 1000))
      assert.is_true(rms(synth.noise("pink", 7, 1000) - synth.noise("pink", 8, 1000)) > 0.5)
    end)

    it("builds each split's babble bank from its own count of utterances", function()
      local cfg = synth.config{ babble_bank = 1, train_babble_bank = 2 }
      local test1, train2 = synth.babble_bank(cfg, "test"), synth.babble_bank(cfg, "train")
      local train1 = synth.babble_bank(synth.config{ babble_bank = 1, train_babble_bank = 1 }, "train")
      -- the training bank's first utterance is the same, the second one comes after it
      assert.is_true(train2:numel() > train1:numel())
      assert.tensor_equal(train1, train2:narrow(1, 1, train1:numel()))
      assert.is_true(test1:numel() ~= train1:numel() or rms(test1 - train1) > 0.1) -- other voices
      assert.has_error(function() synth.config{ train_babble_bank = 0 } end,
        "synth.prepare: train_babble_bank must be >= 1, got 0")
    end)

    it("mixes noise at the requested SNR", function()
      local cfg = synth.config{}
      local banks = { test = synth.babble_bank(cfg, "test") }
      local clean = synth.render(job("none"), cfg, banks)
      -- the speech level: frames within 40 dB of the loudest
      local frames = clean:narrow(1, 1, math.floor(clean:numel() / 320) * 320):view(-1, 320)
      local e = (frames * frames):mean(2)
      local emax = e:max():item()
      local sel = e:ge(emax * 1e-4):float()
      local speech_rms = math.sqrt((e * sel):sum():item() / sel:sum():item())
      local level = 20 * math.log10(speech_rms)
      assert.is_true(math.abs(level - (-30)) < 0.5, "speech at " .. level .. " dB")
      for _, kind in ipairs({ "white", "pink", "brown", "babble" }) do
        for _, snr in ipairs({ 5, 20 }) do
          local noisy = synth.render(job(kind, snr), cfg, banks)
          assert.are.same(clean:numel(), noisy:numel())
          local got = 20 * math.log10(speech_rms / rms(noisy - clean))
          assert.is_true(math.abs(got - snr) < 0.3, kind .. ": SNR " .. got .. " dB, asked " .. snr)
        end
      end
    end)
  end)

  describe("prepare", function()
    local dir = tmpdir()
    local opts = { dir = dir, n_train = 6, n_test = 4, procs = 2, quiet = true, noise = { fraction = 0.5 } }
    local train_path, test_path, info

    it("writes 16 kHz WAV files and JSONL manifests", function()
      train_path, test_path, info = synth.prepare(opts)
      assert.are.same(dir .. "/train.jsonl", train_path)
      assert.are.same(dir .. "/test.jsonl", test_path)
      assert.is_false(info.cached)
      assert.is_true(info.hours > 0)
      local train, test = read_manifest(train_path), read_manifest(test_path)
      assert.are.same(6, #train)
      assert.are.same(4, #test)
      local train_texts = {}
      for _, u in ipairs(train) do train_texts[u.text] = true end
      local noisy_test = 0
      for _, list in ipairs({ train, test }) do
        for _, u in ipairs(list) do
          local meta = tn.audio.info(u.audio_filepath)
          assert.are.same(16000, meta.sample_rate)
          assert.are.same(1, meta.channels)
          assert.is_true(math.abs(meta.frames / 16000 - u.duration) < 1e-3)
          assert.are.same(synth.normalize(u.text), u.text)
          assert.is_truthy(u.voice:match("^en[%w-]*%+%w+$"))
        end
      end
      for _, u in ipairs(test) do
        assert.is_nil(train_texts[u.text])
        if u.noise ~= "none" then noisy_test = noisy_test + 1 end
      end
      assert.are.same(2, noisy_test)
      assert.is_truthy(exists(dir .. "/stamp.json"))
      assert.is_falsy(exists(dir .. "/.work/jobs.lua"))
    end)

    it("reuses the data when the configuration is the same", function()
      local before = read_file(train_path)
      local wav = read_file(dir .. "/train/000001.wav")
      local t0 = os.clock()
      local tr, te, again = synth.prepare(opts)
      assert.is_true(again.cached)
      assert.is_true(os.clock() - t0 < 0.5)
      assert.are.same(train_path, tr)
      assert.are.same(test_path, te)
      assert.are.same(before, read_file(tr))
      assert.are.same(wav, read_file(dir .. "/train/000001.wav"))
    end)

    it("regenerates for another configuration and drops files it no longer lists", function()
      local smaller = {}
      for k, v in pairs(opts) do smaller[k] = v end
      smaller.n_train, smaller.seed = 4, 2
      local old = read_manifest(train_path)
      local tr, _, again = synth.prepare(smaller)
      assert.is_false(again.cached)
      local new = read_manifest(tr)
      assert.are.same(4, #new)
      assert.are_not.same(old[1].text, new[1].text)
      assert.is_falsy(exists(dir .. "/train/000005.wav"))
      assert.is_falsy(exists(dir .. "/train/000006.wav"))
      assert.is_truthy(exists(dir .. "/train/000004.wav"))
    end)

    it("gives the same files for any number of processes", function()
      local d1, d2 = tmpdir(), tmpdir()
      local o = { n_train = 4, n_test = 2, quiet = true, noise = { fraction = 1 }, test_noise = { fraction = 1 } }
      o.dir, o.procs = d1, 1
      synth.prepare(o)
      o.dir, o.procs = d2, 2
      synth.prepare(o)
      for _, f in ipairs({ "train/000001.wav", "train/000002.wav", "train/000003.wav", "train/000004.wav",
        "test/000001.wav", "test/000002.wav" }) do
        local a, b = read_file(d1 .. "/" .. f), read_file(d2 .. "/" .. f)
        assert.is_truthy(a and #a > 1000, f)
        assert.is_true(a == b, f .. " differs between procs = 1 and procs = 2")
      end
      local m1, m2 = read_file(d1 .. "/train.jsonl"), read_file(d2 .. "/train.jsonl")
      local function strip(m, d) return (m:gsub(d:gsub("%p", "%%%0"), "DIR")) end
      assert.are.same(strip(m1, d1), strip(m2, d2))
    end)

    it("never counts a killed generation as done", function()
      local d = tmpdir()
      local args = ("--dir=%s --n_train=60 --n_test=4 --procs=2 --quiet"):format(d)
      local p = io.popen("luajit recipes/make_synth_data.lua " .. args .. " >/dev/null 2>&1 & echo $!")
      local pid = p:read("*l")
      p:close()
      -- wait for the workers to make a few utterances, then kill the parent
      local deadline = os.time() + 20
      while os.time() < deadline do
        local f = io.open(d .. "/.work/progress-1", "rb")
        local n = f and f:seek("end") or 0
        if f then f:close() end
        if n >= 3 then break end
        os.execute("sleep 0.02")
      end
      os.execute("kill -9 " .. pid)
      assert.is_falsy(exists(d .. "/stamp.json"))
      assert.is_falsy(exists(d .. "/train.jsonl"))
      -- the workers notice and stop (each writes its exit status when it ends)
      deadline = os.time() + 20
      while os.time() < deadline and not (exists(d .. "/.work/rc-1") and exists(d .. "/.work/rc-2")) do
        os.execute("sleep 0.05")
      end
      assert.is_truthy(exists(d .. "/.work/rc-1") and exists(d .. "/.work/rc-2"))
      assert.is_falsy(exists(d .. "/.work/done-1.tsv") and exists(d .. "/.work/done-2.tsv"))
      assert.is_falsy(exists(d .. "/stamp.json"))
      -- the same configuration again: generated afresh, then cached
      local o = { dir = d, n_train = 60, n_test = 4, procs = 2, quiet = true }
      local tr, _, first = synth.prepare(o)
      assert.is_false(first.cached)
      assert.are.same(60, #read_manifest(tr))
      local _, _, second = synth.prepare(o)
      assert.is_true(second.cached)
    end)

    it("tells the user to run .ci/setup.sh when espeak-ng is missing", function()
      local ok, err = pcall(synth.prepare, { dir = tmpdir(), n_train = 1, n_test = 1, quiet = true,
        espeak = "/nonexistent/espeak-ng" })
      assert.is_false(ok)
      assert.matches("espeak-ng not found on PATH", err, 1, true)
      assert.matches("sh .ci/setup.sh", err, 1, true)
    end)
  end)
end)
