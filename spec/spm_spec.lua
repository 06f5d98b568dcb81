-- Specs of SentencePiece tokens: tn.data.SentencePiece (core/spm.c over libsentencepiece) and
-- the recipe's tokenizer on top of it (recipes/asr/tokenizer.lua). Models are trained here on a
-- few hundred generated sentences (milliseconds), so no fixture is needed.
local h = require "helpers.init"
local tn = h.tn

package.path = "recipes/?.lua;" .. package.path
local tokm = require "asr.tokenizer"

local SP = tn.data.SentencePiece

-- fn must raise an error whose message matches the Lua pattern
local function raises(fn, pattern)
  local msg = h.error_of(fn)
  assert.is_truthy(msg:find(pattern), "error '" .. msg .. "' does not match '" .. pattern .. "'")
end

local WORDS = { "where", "is", "my", "cup", "the", "red", "green", "ball", "under", "table", "please", "don't",
  "move", "four", "eight", "oranges", "kitchen", "garden", "and", "a" }

local function corpus(n, seed)
  math.randomseed(seed)
  local lines = {}
  for i = 1, n do
    local w = {}
    for j = 1, math.random(3, 8) do w[j] = WORDS[math.random(#WORDS)] end
    lines[i] = table.concat(w, " ")
  end
  return lines
end

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. p) == 0)
  return p
end

local function train_icefall(dir, vocab, extra)
  local input = dir .. "/text.txt"
  h.write_file(input, table.concat(corpus(300, 1), "\n") .. "\n")
  local opts = { input = input, model_prefix = dir .. "/m", vocab_size = vocab, model_type = "unigram",
    character_coverage = 1.0, unk_id = 2, bos_id = -1, eos_id = -1, user_defined_symbols = { "<blk>", "<sos/eos>" },
    minloglevel = 2 }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return SP.train(opts)
end

describe("tn.data.SentencePiece", function()
  local dir, sp

  setup(function()
    assert.is_true(SP.available(), "this build has no libsentencepiece (apt-get install libsentencepiece-dev)")
    dir = tmpdir()
    sp = SP(train_icefall(dir, 40))
  end)

  teardown(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("trains a model with the requested vocabulary and special pieces", function()
    assert.are.equal(40, sp.size)
    assert.are.equal("<blk>", sp:piece(0))
    assert.are.equal("<sos/eos>", sp:piece(1))
    assert.are.equal("unknown", sp:kind(2))
    assert.are.equal(0, sp:id("<blk>"))
    assert.is_nil(sp:id("no such piece"))
    local normal = 0
    for id = 3, sp.size - 1 do
      if sp:kind(id) == "normal" then normal = normal + 1 end
    end
    assert.are.equal(37, normal)
  end)

  it("encodes and decodes back to the same text", function()
    for _, line in ipairs(corpus(50, 7)) do
      local ids = sp:encode(line)
      assert.is_true(#ids > 0)
      for _, v in ipairs(ids) do assert.is_true(v >= 3 and v < sp.size, line) end
      assert.are.equal(line, sp:decode(ids))
    end
    -- pieces concatenate to the text with U+2581 for spaces
    local ids = sp:encode("where is my cup")
    local s = {}
    for i, v in ipairs(ids) do s[i] = sp:piece(v) end
    assert.are.equal("\226\150\129where\226\150\129is\226\150\129my\226\150\129cup", table.concat(s))
    assert.are.same({}, sp:encode(""))
    assert.are.equal("", sp:decode({}))
  end)

  it("maps characters it never saw to <unk>", function()
    local ids = sp:encode("zzz")
    local unk = 0
    for _, v in ipairs(ids) do if v == 2 then unk = unk + 1 end end
    assert.is_true(unk >= 1)
  end)

  it("rejects bad input with clear errors", function()
    raises(function() SP(dir .. "/missing.model") end, "cannot load SentencePiece model .*missing%.model")
    raises(function() SP("") end, "path of a %.model file")
    raises(function() sp:decode({ 3, 40 }) end, "ids%[2%] = 40 is not an id in %[0, 40%)")
    raises(function() sp:decode({ 1.5 }) end, "ids%[1%] = 1.5")
    raises(function() sp:encode(12) end, "text must be a string")
    raises(function() sp:piece(-1) end, "id %-1 is not in %[0, 40%)")
    raises(function() SP.train{ input = "x" } end, "model_prefix is required")
    raises(function() SP.train{ input = "a b", model_prefix = "m", vocab_size = 8 } end,
      "holds white space")
    raises(function() SP.train{ input = dir .. "/none.txt", model_prefix = dir .. "/x", vocab_size = 8,
      minloglevel = 2 } end, "spm%.train")
  end)
end)

describe("the recipe's SentencePiece tokens", function()
  local dir

  setup(function() dir = tmpdir() end)
  teardown(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("normalises text, never emits the blank and drops special pieces when decoding", function()
    local tok = tokm.SentencePiece(train_icefall(dir, 40))
    assert.are.equal(40, tok.vocab)
    local ids = tok:encode("  Where IS my   cup?! ")
    for _, v in ipairs(ids) do assert.is_true(v > 0) end
    assert.are.equal("where is my cup", tok:decode(ids))
    local with_specials = { 0, 1 }
    for _, v in ipairs(ids) do with_specials[#with_specials + 1] = v end
    with_specials[#with_specials + 1] = 0
    assert.are.equal("where is my cup", tok:decode(with_specials))
  end)

  it("refuses a model whose id 0 is a normal piece (the blank needs it)", function()
    local d = dir .. "/zero"
    os.execute("mkdir -p " .. d)
    local path = train_icefall(d, 30, { unk_id = 1, user_defined_symbols = "foo" })
    raises(function() tokm.SentencePiece(path) end, "normal piece 'foo' at id 0")
  end)

  it("trains once for the same texts and options, again when they change", function()
    local texts = corpus(300, 3)
    local logs = {}
    local log = function(l) logs[#logs + 1] = l end
    local d = dir .. "/tokens"
    local p1 = tokm.train_spm(texts, { dir = d, vocab_size = 32, log = log })
    assert.is_truthy(logs[1]:find("trained on 300 transcripts", 1, true))
    local p2 = tokm.train_spm(texts, { dir = d, vocab_size = 32, log = log })
    assert.are.equal(p1, p2)
    assert.is_truthy(logs[2]:find("(cached)", 1, true))
    tokm.train_spm(texts, { dir = d, vocab_size = 36, log = log })
    assert.is_truthy(logs[3]:find("trained", 1, true))
    assert.are.equal(36, tokm.SentencePiece(p1).vocab)
  end)

  it("make() picks chars or SentencePiece from the config and explains a missing model", function()
    assert.are.equal("chars", tokm.make({ type = "chars" }, {}).kind)
    local tok = tokm.make({ type = "spm", model = "", vocab_size = 32, model_type = "unigram" },
      { mode = "train", dir = dir .. "/mk", train_texts = function() return corpus(200, 5) end })
    assert.are.equal(32, tok.vocab)
    assert.are.equal(32, tokm.make({ type = "spm", model = "", vocab_size = 32, model_type = "unigram" },
      { mode = "eval", dir = dir .. "/mk" }).vocab)
    raises(function()
      tokm.make({ type = "spm", model = "", vocab_size = 32 }, { mode = "eval", dir = dir .. "/nothing" })
    end, "needs .*/nothing/spm%.model %(made by %-%-mode=train%)")
    raises(function() tokm.make({ type = "bpe" }, {}) end, "tokens%.type must be chars or spm")
  end)
end)
