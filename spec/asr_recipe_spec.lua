-- Specs of the ASR recipe (recipes/asr_train.lua and recipes/asr/*): the configuration and its
-- overrides, the tokenizer, WER / CER alignment, the transducer model's loss and searches on a
-- tiny model, and the quick mode end to end in a child process (data, features, training,
-- checkpoints, resume, evaluation, inference).
local h = require "helpers.init"
local tn = h.tn

package.path = "recipes/?.lua;" .. package.path
local config = require "asr.config"
local tokm = require "asr.tokenizer"
local werm = require "asr.wer"
local Model = require "asr.model"
local decode = require "asr.decode"

local function contains(s, part)
  assert.truthy(s:find(part, 1, true), "'" .. s .. "' does not contain '" .. part .. "'")
end

describe("asr config", function()
  it("applies --a.b=v overrides with the default's type", function()
    local cfg = config.parse({ "--optim.lr=0.01", "--model.encoder=lstm", "--data.speed_perturb=false",
      "--train.epochs=3" })
    assert.are.equal(0.01, cfg.optim.lr)
    assert.are.equal("lstm", cfg.model.encoder)
    assert.are.equal(false, cfg.data.speed_perturb)
    assert.are.equal(3, cfg.train.epochs)
  end)

  it("applies --quick first, so later overrides win", function()
    local cfg = config.parse({ "--train.epochs=7", "--quick=true" })
    assert.are.equal(7, cfg.train.epochs)
    assert.are.equal(120, cfg.data.n_train)
  end)

  it("names unknown keys, bad values and malformed arguments", function()
    contains(h.error_of(function() config.parse({ "--optim.lrr=1" }) end), "unknown option --optim.lrr")
    contains(h.error_of(function() config.parse({ "--optim.lrr=1" }) end), "lr")
    contains(h.error_of(function() config.parse({ "--nosuch.x=1" }) end), "--nosuch.x")
    contains(h.error_of(function() config.parse({ "--optim.lr=fast" }) end), "expects a number, got 'fast'")
    contains(h.error_of(function() config.parse({ "--data.speed_perturb=maybe" }) end), "true or false")
    contains(h.error_of(function() config.parse({ "optim.lr=1" }) end), "--key=value")
    contains(h.error_of(function() config.parse({ "--optim=1" }) end), "unknown option --optim")
  end)
end)

describe("asr tokenizer", function()
  it("round-trips normalised text through character ids; 0 is the blank", function()
    local tok = tokm.Chars()
    assert.are.equal(29, tok.vocab)
    local ids = tok:encode("Hello,  World! It's")
    for _, v in ipairs(ids) do assert.is_true(v >= 1 and v < tok.vocab) end
    assert.are.equal("hello world it's", tok:decode(ids))
    assert.are.same({}, tok:encode("123 ?!"))
  end)
end)

describe("asr WER / CER", function()
  it("counts substitutions, deletions and insertions of a minimal alignment", function()
    local a = werm.align({ "a", "b", "c", "d" }, { "a", "x", "c" })
    assert.are.same({ sub = 1, del = 1, ins = 0, cor = 2, errors = 2 }, a)
    a = werm.align({}, { "x", "y" })
    assert.are.same({ sub = 0, del = 0, ins = 2, cor = 0, errors = 2 }, a)
    a = werm.align({ "k", "i", "t", "t", "e", "n" }, { "s", "i", "t", "t", "i", "n", "g" })
    assert.are.equal(3, a.errors)
  end)

  it("sums word and character errors over sentences", function()
    local s = werm.Scorer()
    s:add("the cat sat", "the cat sat")
    s:add("a dog", "a dig ran")
    local r = s:summary()
    assert.are.equal(5, r.words)
    assert.are.equal(2, r.word_errors) -- dig for dog, ran inserted
    assert.are.near(40, r.wer, 1e-9)
    assert.are.equal(1, r.sent_err)
    assert.are.equal(16, r.chars) -- "the cat sat" 11 + "a dog" 5
    assert.are.equal(5, r.char_errors) -- o -> i, then " ran" inserted
  end)
end)

describe("asr transducer model", function()
  local tok = tokm.Chars()
  local function tiny(encoder)
    tn.manual_seed(5)
    return Model.Transducer{ vocab = tok.vocab, encoder = encoder, d_model = 16, enc_layers = 1, enc_hidden = 12,
      dec_dim = 10, joiner_dim = 14, dropout = 0 }
  end

  for _, enc in ipairs({ "sru", "lstm" }) do
    it("gives a finite pruned loss and gradients for every parameter (" .. enc .. " encoder)", function()
      local m = tiny(enc)
      local batch = { feats = tn.randn(2, 41, 80), feat_lens = { 41, 30 },
        tokens = { tok:encode("ab c"), tok:encode("d") } }
      local loss, simple, pruned = m:loss(batch, { s_range = 3 })
      assert.is_true(loss:item() > 0 and loss:item() < math.huge)
      assert.is_true(simple > 0 and pruned > 0)
      loss:backward()
      for name, p in m:named_parameters() do
        assert.is_not_nil(p.grad, name)
        assert.is_true(p.grad:abs():sum():item() == p.grad:abs():sum():item(), name .. " has a NaN gradient")
      end
      -- padded frames of utterance 2 do not change its encoder output
      m:eval()
      local e1, l1 = tn.no_grad(function() return m:encode(batch.feats, batch.feat_lens) end)
      assert.are.same({ 10, 7 }, l1)
      local e2 = tn.no_grad(function() return m:encode(batch.feats:narrow(1, 2, 1):narrow(2, 1, 30), { 30 }) end)
      assert.tensor_near(e2:select(1, 1):narrow(1, 1, 7), e1:select(1, 2):narrow(1, 1, 7), { atol = 1e-5, rtol = 1e-4 })
    end)
  end

  it("fades the pruned loss in over the warm-up (icefall stateless7)", function()
    local s, p = Model.loss_scales(0, 100, 0.5)
    assert.are.same({ 1.0, 0.1 }, { s, p })
    s, p = Model.loss_scales(50, 100, 0.5)
    assert.are.near(0.75, s, 1e-12)
    assert.are.near(0.55, p, 1e-12)
    assert.are.same({ 0.5, 1.0 }, { Model.loss_scales(100, 100, 0.5) })
  end)

  it("decodes: modified beam search with beam 1 is greedy search with one symbol per frame", function()
    local m = tiny("sru")
    m:eval()
    local enc, lens = tn.no_grad(function() return m:encode(tn.randn(1, 40, 80), { 40 }) end)
    local g = decode.greedy(m, enc, lens, { max_sym_per_frame = 1 })
    local b = decode.modified_beam_search(m, enc, lens, { beam = 1 })
    -- beam 1 with at most one symbol per frame is greedy search
    assert.are.same(g[1], b[1])
    local b4 = decode.modified_beam_search(m, enc, lens, { beam = 4 })
    assert.are.equal("table", type(b4[1]))
    for _, v in ipairs(b4[1]) do assert.is_true(v >= 1 and v < tok.vocab) end
  end)
end)

-- the quick mode end to end, in child processes ------------------------------------------------

-- output and exit status of a shell command (LuaJIT's popen close does not give the status)
local function run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"exit=$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return out:gsub("exit=%d+%s*$", ""), code
end

local function read_log(path)
  local rows = {}
  for line in io.lines(path) do rows[#rows + 1] = line end
  return rows
end

describe("asr_train.lua --quick=true", function()
  local tmp = os.tmpname()
  os.remove(tmp)
  local env = "TERN_LIB=" .. (os.getenv("TERN_LIB") or "") .. " "
  if os.getenv("TERN_LIB") == nil then env = "" end
  local base = env .. "luajit recipes/asr_train.lua --quick=true --exp_dir=" .. tmp .. "/exp --data.dir="
    .. tmp .. "/data"

  it("prepares data, trains (the loss falls), checkpoints, evaluates, resumes and transcribes", function()
    local out, code = run(base)
    assert.are.equal(0, code, out)
    contains(out, "result (greedy search, 12 test utterances): WER")
    -- the loss falls: mean of the first two logged steps > mean of the last two
    local steps = {}
    for _, l in ipairs(read_log(tmp .. "/exp/log.jsonl")) do
      local loss = l:match('"event":"step"') and tonumber(l:match('"loss":([%d.eE+-]+)'))
      if loss then steps[#steps + 1] = loss end
    end
    assert.is_true(#steps >= 4, "too few logged steps: " .. #steps)
    local first = (steps[1] + steps[2]) / 2
    local last = (steps[#steps] + steps[#steps - 1]) / 2
    assert.is_true(last < 0.8 * first, ("loss did not fall: %.2f -> %.2f"):format(first, last))
    local ck = run("ls " .. tmp .. "/exp/ckpt")
    assert.truthy(ck:find("ckpt", 1, true), ck)
    -- a second run with more epochs resumes from the newest checkpoint
    local out2, code2 = run(base .. " --train.epochs=12")
    assert.are.equal(0, code2, out2)
    contains(out2, "resumed from step")
    contains(out2, "result (greedy search")
    -- eval and infer from the saved checkpoint
    local out3, code3 = run(base .. " --mode=eval --decode.method=beam")
    assert.are.equal(0, code3, out3)
    contains(out3, "beam search on 12 utterances: WER")
    local wav = run("ls " .. tmp .. "/data/test/*.wav | head -n 1"):gsub("%s+$", "")
    local out4, code4 = run(base .. " --mode=infer --infer.files=" .. wav)
    assert.are.equal(0, code4, out4)
    contains(out4, wav .. "\t")
    -- bad options fail fast with a clear message
    local out5, code5 = run(base .. " --optim.lrr=1")
    assert.are_not.equal(0, code5)
    contains(out5, "unknown option --optim.lrr")
    run("rm -rf " .. tmp)
  end)
end)

describe("asr_train.lua and Ctrl-C", function()
  it("saves a checkpoint and exits with 130 on SIGINT; the next run resumes from it", function()
    local tmp = os.tmpname()
    os.remove(tmp)
    local env = os.getenv("TERN_LIB") and ("TERN_LIB=" .. os.getenv("TERN_LIB") .. " ") or ""
    local args = " --quick=true --train.epochs=200 --train.max_minutes=2 --exp_dir=" .. tmp .. "/exp --data.dir="
      .. tmp .. "/data"
    os.execute("mkdir -p " .. tmp)
    local out_file = tmp .. "/out"
    os.execute("sh -c '" .. env .. "luajit recipes/asr_train.lua" .. args .. " > " .. out_file
      .. " 2>&1; echo \"exit=$?\" >> " .. out_file .. "' &")
    -- wait for training steps in the log, then interrupt the luajit process (not the shell)
    local log = tmp .. "/exp/log.jsonl"
    local waited = 0
    while waited < 120 do
      local f = io.open(log)
      local txt = f and f:read("*a") or ""
      if f then f:close() end
      if txt:find('"event":"step"', 1, true) then break end
      os.execute("sleep 0.2")
      waited = waited + 0.2
    end
    assert.is_true(waited < 120, "no training step logged")
    -- the command line starts with luajit, or its path under a sanitizer build's wrapper
    local _, code = run("pkill -INT -f '^[^ ]*luajit .*recipes/asr_train.lua.*" .. tmp .. "/exp'")
    assert.are.equal(0, code, "no process to interrupt")
    local out = ""
    for _ = 1, 300 do
      out = h.read_file(tmp .. "/out")
      if out:find("exit=%d+") then break end
      os.execute("sleep 0.2")
    end
    contains(out, "interrupted (Ctrl-C): checkpoint saved at step")
    contains(out, "exit=130")
    local step = tonumber(out:match("checkpoint saved at step (%d+)"))
    local out2, code2 = run(env .. "luajit recipes/asr_train.lua" .. args .. " --train.epochs=1 --train.max_minutes=1")
    assert.are.equal(0, code2, out2)
    contains(out2, "resumed from step " .. step)
    run("rm -rf " .. tmp)
  end)
end)


describe("asr_train.lua --dist=true under mpirun #mpi", function()
  it("trains on 2 CPU ranks: rank 0 alone prints, logs and checkpoints; the test set is decoded in shares", function()
    local mpi = require "helpers.mpi"
    local tmp = os.tmpname()
    os.remove(tmp)
    local env = os.getenv("TERN_LIB") and ("-x TERN_LIB=" .. os.getenv("TERN_LIB") .. " ") or ""
    local out, code = mpi.run(mpi.PREFIX .. "2 " .. env .. "luajit recipes/asr_train.lua --quick=true --dist=true "
      .. "--threads=1 --train.epochs=3 --exp_dir=" .. tmp .. "/exp --data.dir=" .. tmp .. "/data")
    assert.are.equal(0, code, out)
    -- one result line (rank 0's), over every test utterance although each rank decoded half
    local n = 0
    for _ in out:gmatch("result %(greedy search, 12 test utterances%): WER") do n = n + 1 end
    assert.are.equal(1, n, out)
    contains(out, "per rank, 2 ranks")
    local hyps = h.read_file(tmp .. "/exp/hyps.txt")
    local refs = 0
    for _ in hyps:gmatch("\tREF: ") do refs = refs + 1 end
    assert.are.equal(12, refs, hyps)
    local steps = 0
    for _, l in ipairs(read_log(tmp .. "/exp/log.jsonl")) do
      if l:find('"event":"step"', 1, true) then steps = steps + 1 end
    end
    assert.is_true(steps >= 2, "too few logged steps: " .. steps)
    local ck = run("ls " .. tmp .. "/exp/ckpt")
    assert.truthy(ck:find("ckpt", 1, true), ck)
    run("rm -rf " .. tmp)
  end)
end)
