-- recipes/bench_asr.lua: one training step of the ASR recipe's model (issue 6, "Performance"):
-- tern's SRU-transducer with the pruned RNN-T loss (recipes/asr/model.lua, the step of
-- recipes/asr_train.lua) against the same model in PyTorch 1.13 (recipes/bench/asr_step_torch.py)
-- with the full RNN-T loss (torchaudio) and with the pruned loss in plain PyTorch ops, on the
-- same batches and the same initial weights.
--
--   luajit recipes/bench_asr.lua [--threads=1,2] [--repeat=12] [--warmup=4] [--peer=torch|none]
--       [--variants=pruned,full] [--batches=4] [--batch=32] [--frames=300] [--symbols=40]
--       [--data=auto|synth|random] [--data_dir=data/synth] [--encoder=sru|lstm] [--profile=1]
--       [--seed=7] [--save_input=path]
--
-- Model: the recipe's defaults (recipes/asr/config.lua): x4 frame stacking + Linear(320, 256) +
-- LayerNorm + ReLU, SRU(256, 256, 4 layers, bidirectional, layer_norm, dropout 0.1) (or the
-- LSTM with --encoder=lstm), Embedding(29, 256) + LSTM(256, 256), Joiner(512, 256, 256, 29)
-- with the simple projections; train mode (dropout on).
-- Step (asr_train.lua after the loss warm-up): loss = 0.5 * simple + 1.0 * pruned (smoothed
-- simple loss with lm_only_scale 0.25, return_grad; prune ranges s_range 5; joiner on the band;
-- pruned loss; reduction sum), loss:item(), opt:zero_grad(), (loss / B):backward(),
-- clip_grad_norm(5), Adam step (lr 2e-3, betas 0.9/0.98, eps 1e-8, weight_decay 1e-6). The
-- learning-rate schedule is left out (one scalar per step on both sides).
-- Peer variants (the same model, the same weights, the same batches):
--   pruned  the same loss written with plain PyTorch ops (spec/fixtures/rnnt_reference.py, the
--           pure-PyTorch port of fast_rnnt: rnnt_loss_smoothed, get_rnnt_prune_ranges,
--           do_rnnt_pruning, rnnt_loss_pruned)
--   full    what a PyTorch user writes without fast_rnnt: the joiner over the whole (B, T', S+1)
--           grid and torchaudio.functional.rnnt_loss(blank 0, reduction sum)
-- The SRU of the peer is the `sru` package (2.6); with grad on the CPU it runs its own
-- Python loop over time (its C++ CPU kernel is inference-only).
--
-- Batches: --batches fixed batches of --batch utterances. --data=auto takes real utterances of
-- the recipe's default data set when its feature cache exists (data/synth/feats: utterances of
-- 0.8 * frames .. frames fbank frames in manifest order, global CMVN over them, character
-- tokens of their transcripts), else random: N(0, 1) features and tokens uniform in 1..28,
-- lengths uniform in [0.8, 1] * frames / symbols (the first utterance of a batch at the
-- maximum), zero padding, from --seed. Both sides read the same batches: the child writes them,
-- with tern's initial weights and the configuration, to a safetensors file the peer loads.
--
-- Timing: for each implementation a fresh model (tern's initial weights) and optimizer, `warmup`
-- untimed steps, then `repeat` timed steps cycling over the batches; median and min wall time
-- (clock_gettime MONOTONIC) per step, the process CPU time per step, and the medians of the
-- step's parts: fwd (the loss), bwd (zero_grad + backward), opt (clip + Adam). --profile=1 runs
-- 4 more tern steps with every forward part and every backward node timed (a "profile" line).
-- Check: the peer loads tern's initial weights (strict: the same names, shapes and parameter
-- count) and computes the eval-mode (no dropout) losses of batch 1; they are printed beside
-- tern's (rel. differences ~1e-6 mean the same model and loss).
--
-- Output, one JSON line each:
--   {"op":"asr_step","impl":"tern","loss":"pruned","threads":N,"median_ms":..,"min_ms":..,
--    "cpu_ms":..,"fwd_ms":..,"bwd_ms":..,"opt_ms":..,"repeats":..,"warmup":..,"params":..,
--    "B":..,"T_max":..,"T_mean":..,"S_max":..,"S_mean":..,"data":..,"encoder":..,"load1":..}
--   the peer's lines (impl "torch", loss "pruned" | "full"), its "check" line, a tern
--   "profile" line, and a compare line:
--   {"compare":"asr_step","threads":N,"tern_pruned_ms":..,"torch_pruned_ms":..,
--    "torch_full_ms":..,"speedup_vs_torch_pruned":..,"speedup_vs_torch_full":..,
--    "target":"speedup >= 2","target_met":true|false,"load1":..}
-- Threads: one child process per thread count with OMP_WAIT_POLICY=PASSIVE,
-- OPENBLAS_NUM_THREADS=N, OMP_NUM_THREADS=N (lib/bench.lua); the peer gets the same environment.

local script = arg and arg[0] or "recipes/bench_asr.lua"
local here = script:match("^(.*)/[^/]*$") or "."
package.path = here .. "/lib/?.lua;" .. here .. "/?.lua;" .. package.path
local lib = require "bench"
local root = lib.use_tree(here)

local json, emit_line, load1, now_ms, cpu_ms = lib.json, lib.emit_line, lib.load1, lib.now_ms, lib.cpu_ms
local fmt = string.format

-- options ------------------------------------------------------------------------------------

local USAGE = "usage: luajit recipes/bench_asr.lua [--threads=1,2] [--repeat=12] [--warmup=4]"
  .. " [--peer=torch|none] [--variants=pruned,full] [--batches=4] [--batch=32] [--frames=300]"
  .. " [--symbols=40] [--data=auto|synth|random] [--data_dir=data/synth] [--encoder=sru|lstm]"
  .. " [--profile=1] [--seed=7] [--save_input=path]\n"
local opts, passthrough = lib.parse_args("bench_asr", {
  threads = "1,2", ["repeat"] = "12", warmup = "4", peer = "torch", variants = "pruned,full",
  batches = "4", batch = "32", frames = "300", symbols = "40", data = "auto",
  data_dir = root .. "/data/synth", encoder = "sru", profile = "1", seed = "7", save_input = "",
  child = "0" }, USAGE)
local function posint(k)
  local v = tonumber(opts[k])
  if not v or v < 1 or v ~= math.floor(v) then
    io.stderr:write(fmt("bench_asr: --%s must be a positive integer, got %s\n", k, opts[k]) .. USAGE)
    os.exit(2)
  end
  return v
end
local REPEAT = math.max(5, posint("repeat"))
local WARMUP = math.max(0, tonumber(opts.warmup) or 4)
local NB, B, FRAMES, SYMBOLS, SEED = posint("batches"), posint("batch"), posint("frames"), posint("symbols"),
  posint("seed")
local THREADS = lib.numbers(opts.threads, "--threads")
lib.check_peer("bench_asr", opts)
if opts.data ~= "auto" and opts.data ~= "synth" and opts.data ~= "random" then
  io.stderr:write("bench_asr: --data must be auto, synth or random\n" .. USAGE)
  os.exit(2)
end
if opts.encoder ~= "sru" and opts.encoder ~= "lstm" then
  io.stderr:write("bench_asr: --encoder must be sru or lstm\n" .. USAGE)
  os.exit(2)
end
local VARIANTS = lib.choices("bench_asr", "variant", opts.variants, { "pruned", "full" }, USAGE)

if opts.child ~= "1" then lib.reexec("bench_asr", script, THREADS, passthrough) end

local TH = THREADS[1]
local tn = require "tern"
local config = require "asr.config"
local Model = require "asr.model"
local tokm = require "asr.tokenizer"

tn.set_num_threads(TH)

local CFG = config.defaults()
local LOSS_OPTS = { s_range = CFG.loss.s_range, simple_scale = CFG.loss.simple_scale, pruned_scale = 1.0,
  lm_only_scale = CFG.loss.lm_only_scale, am_only_scale = CFG.loss.am_only_scale }
local tok = tokm.Chars()

-- batches --------------------------------------------------------------------------------------

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- a batch from lists of features ((T_b, F) tensors) and token lists
local function make_batch(feats, tokens)
  local n, T, S = #feats, 0, 0
  for i = 1, n do
    T = math.max(T, feats[i]:size(1))
    S = math.max(S, #tokens[i])
  end
  local F = feats[1]:size(2)
  local x = tn.zeros({ n, T, F })
  local lens, tok_rows = {}, {}
  for i = 1, n do
    local Ti = feats[i]:size(1)
    x:select(1, i):narrow(1, 1, Ti):copy_(feats[i])
    lens[i] = Ti
    local r = {}
    for j = 1, S do r[j] = tokens[i][j] or 0 end
    tok_rows[i] = r
  end
  return { feats = x, feat_lens = lens, tokens = tokens, T = T, S = S,
    tokens_t = tn.tensor(tok_rows, { dtype = "i64" }) }
end

local function random_batches()
  tn.manual_seed(SEED)
  local out = {}
  for k = 1, NB do
    local lo_t, lo_s = math.floor(0.8 * FRAMES), math.floor(0.8 * SYMBOLS)
    local tl = tn.randint(lo_t, FRAMES + 1, { B }):totable()
    local sl = tn.randint(lo_s, SYMBOLS + 1, { B }):totable()
    tl[1], sl[1] = FRAMES, SYMBOLS
    local feats, tokens = {}, {}
    for i = 1, B do
      feats[i] = tn.randn(tl[i], CFG.features.num_mel_bins)
      tokens[i] = tn.randint(1, tok.vocab, { sl[i] }):totable()
    end
    out[k] = make_batch(feats, tokens)
  end
  return out
end

-- real utterances of the default data set, read from its feature cache
local function synth_batches()
  local dir = opts.data_dir
  local items = tn.data.read_manifest(dir .. "/train.jsonl", { quiet = true })
  local lo = math.floor(0.8 * FRAMES)
  local pick = {}
  for _, it in ipairs(items) do
    local fr = tn.data.frames_of(it)
    if fr and fr >= lo and fr <= FRAMES then pick[#pick + 1] = it end
    if #pick == NB * B then break end
  end
  if #pick < NB * B then
    error(fmt("bench_asr: %s has only %d utterances of %d..%d frames, %d needed", dir, #pick, lo, FRAMES, NB * B), 0)
  end
  local cache = tn.data.FeatureCache{ dir = dir .. "/feats", opts = { num_mel_bins = CFG.features.num_mel_bins },
    quiet = true }
  local entries = cache:add(pick, { speeds = { 1 }, quiet = true })
  if #entries < NB * B then error("bench_asr: the feature cache lacks utterances", 0) end
  local feats, all = {}, {}
  for i = 1, NB * B do
    feats[i] = cache:features(entries[i])
    all[i] = feats[i]
  end
  local cat = tn.cat(all, 1)
  local mean = cat:mean(1)
  local std = cat:std(1):clamp(1e-3, math.huge)
  local out = {}
  for k = 1, NB do
    local f, t = {}, {}
    for i = 1, B do
      local e = (k - 1) * B + i
      f[i] = ((feats[e] - mean) / std):contiguous()
      t[i] = tok:encode(entries[e].text)
    end
    out[k] = make_batch(f, t)
  end
  return out
end

local DATA = opts.data
if DATA == "auto" then
  local st = tn.data._stat(opts.data_dir .. "/feats")
  DATA = (st and st.is_dir and exists(opts.data_dir .. "/train.jsonl")) and "synth" or "random"
end
local batches = DATA == "synth" and synth_batches() or random_batches()

local T_max, T_sum, S_max, S_sum = 0, 0, 0, 0
for _, b in ipairs(batches) do
  T_max, S_max = math.max(T_max, b.T), math.max(S_max, b.S)
  for i = 1, B do T_sum, S_sum = T_sum + b.feat_lens[i], S_sum + #b.tokens[i] end
end
local T_mean, S_mean = T_sum / (NB * B), S_sum / (NB * B)

-- the model ---------------------------------------------------------------------------------------

local function model_cfg()
  local m = {}
  for k, v in pairs(CFG.model) do m[k] = v end
  m.vocab, m.feat_dim, m.encoder = tok.vocab, CFG.features.num_mel_bins, opts.encoder
  return m
end

tn.manual_seed(SEED + 1)
local MCFG = model_cfg()
local init_model = Model.Transducer(MCFG)
local INIT = {}
for name, t in pairs(init_model:state_dict()) do INIT[name] = t:clone() end
local N_PARAMS = init_model:num_parameters()

local function fresh_model()
  local m = Model.Transducer(MCFG)
  m:load_state_dict(INIT)
  m:train()
  return m
end

local function make_optimizer(model)
  local o = CFG.optim
  return tn.optim.Adam(model:parameters(), { lr = o.lr, betas = { o.beta1, o.beta2 }, eps = o.eps,
    weight_decay = o.weight_decay })
end

local function batch_arg(b) return { feats = b.feats, feat_lens = b.feat_lens, tokens = b.tokens } end

-- eval-mode losses of batch 1 (no dropout): the pruned pair and the full RNN-T loss
local function check_losses()
  init_model:eval()
  local b = batches[1]
  local _, simple, pruned = tn.no_grad(function() return init_model:loss(batch_arg(b), LOSS_OPTS) end)
  local full = tn.no_grad(function()
    local enc, enc_lens = init_model:encode(b.feats, b.feat_lens)
    local dec, symbols = init_model:decode_targets(b.tokens)
    local rows = {}
    for i = 1, B do rows[i] = { 0, 0, #b.tokens[i], enc_lens[i] } end
    local e, d = init_model.joiner:project(enc, dec)
    local logits = init_model.joiner(e:unsqueeze(3), d:unsqueeze(2))
    return tn.rnnt.loss{ logits = logits, symbols = symbols, termination_symbol = 0,
      boundary = tn.tensor(rows, { dtype = "i64" }), reduction = "sum" }:item()
  end)
  init_model:train()
  return simple, pruned, full
end

-- the input file for the peer ----------------------------------------------------------------------

local function write_input(path, chk)
  local t = {}
  for k, b in ipairs(batches) do
    t["feats." .. k] = b.feats
    t["feat_lens." .. k] = tn.tensor(b.feat_lens, { dtype = "i64" })
    t["tokens." .. k] = b.tokens_t
    local tl = {}
    for i = 1, B do tl[i] = #b.tokens[i] end
    t["token_lens." .. k] = tn.tensor(tl, { dtype = "i64" })
  end
  for name, w in pairs(INIT) do t["model." .. name] = w end
  local m = MCFG
  local meta = {
    format = "tern-bench-asr-1", data = DATA, batches = tostring(NB), batch = tostring(B),
    feat_dim = tostring(m.feat_dim), stack = tostring(m.stack), d_model = tostring(m.d_model),
    encoder = m.encoder, enc_layers = tostring(m.enc_layers), enc_hidden = tostring(m.enc_hidden),
    bidirectional = tostring(m.bidirectional), dropout = tostring(m.dropout), dec_dim = tostring(m.dec_dim),
    joiner_dim = tostring(m.joiner_dim), vocab = tostring(m.vocab),
    s_range = tostring(LOSS_OPTS.s_range), simple_scale = tostring(LOSS_OPTS.simple_scale),
    pruned_scale = tostring(LOSS_OPTS.pruned_scale), lm_only_scale = tostring(LOSS_OPTS.lm_only_scale),
    am_only_scale = tostring(LOSS_OPTS.am_only_scale),
    lr = tostring(CFG.optim.lr), beta1 = tostring(CFG.optim.beta1), beta2 = tostring(CFG.optim.beta2),
    eps = tostring(CFG.optim.eps), weight_decay = tostring(CFG.optim.weight_decay),
    clip = tostring(CFG.optim.clip), tern_params = tostring(N_PARAMS),
    check_simple = fmt("%.9g", chk[1]), check_pruned = fmt("%.9g", chk[2]), check_full = fmt("%.9g", chk[3]),
  }
  tn.save(path, t, meta)
end

-- the tern step -------------------------------------------------------------------------------------

local function run_tern()
  local model = fresh_model()
  local opt = make_optimizer(model)
  local clip = CFG.optim.clip
  local parts = { {}, {}, {} }
  local function step(b, r)
    local t0 = now_ms()
    local loss = model:loss(batch_arg(b), LOSS_OPTS)
    local lval = loss:item() / B
    if lval ~= lval then error("bench_asr: the tern loss is NaN", 0) end
    local t1 = now_ms()
    opt:zero_grad()
    ;(loss * (1 / B)):backward()
    local t2 = now_ms()
    tn.optim.clip_grad_norm(opt, clip)
    opt:step()
    local t3 = now_ms()
    if r then parts[1][r], parts[2][r], parts[3][r] = t1 - t0, t2 - t1, t3 - t2 end
  end
  local k = 0
  local function next_batch()
    k = k + 1
    return batches[(k - 1) % NB + 1]
  end
  for _ = 1, WARMUP do step(next_batch()) end
  local xs, cs = {}, {}
  for r = 1, REPEAT do
    local b = next_batch()
    local c0, t0 = cpu_ms(), now_ms()
    step(b, r)
    xs[r], cs[r] = now_ms() - t0, cpu_ms() - c0
  end
  local mn = lib.min(xs)
  local res = { ms = lib.median(xs), min = mn, cpu = lib.median(cs), fwd = lib.median(parts[1]),
    bwd = lib.median(parts[2]), opt = lib.median(parts[3]) }
  return res, model, opt, next_batch
end

-- profile: every forward part and backward node of `steps` more steps, timed
local function profile(model, opt, next_batch, steps)
  local acc, order = {}, {}
  local function add(name, ms)
    if not acc[name] then acc[name] = 0; order[#order + 1] = name end
    acc[name] = acc[name] + ms
  end
  local restore = {}
  local function wrap(tbl, key, label)
    local f = tbl[key]
    restore[#restore + 1] = { tbl, key, rawget(tbl, key) }
    rawset(tbl, key, function(...)
      local t0 = now_ms()
      local a, b2, c, d = f(...)
      add(label, now_ms() - t0)
      return a, b2, c, d
    end)
  end
  -- forward: the front end, the encoder, the prediction network, the loss functions
  for _, name in ipairs({ "front", "front_norm", "encoder", "embedding", "decoder" }) do
    wrap(model[name], "forward", "fwd_" .. name)
  end
  wrap(model.joiner, "simple", "fwd_simple_proj")
  wrap(model.joiner, "project", "fwd_joiner_proj")
  wrap(model.joiner, "pruned", "fwd_joiner_pruned")
  wrap(tn.rnnt, "loss_smoothed", "fwd_loss_smoothed")
  wrap(tn.rnnt, "get_prune_ranges", "fwd_prune_ranges")
  wrap(tn.rnnt, "loss_pruned", "fwd_loss_pruned")
  -- backward: every node's function, by node name
  local autograd = tn.autograd
  local make_node = autograd.make_node
  autograd.make_node = function(name, fn, ctx, ...)
    local label = "bwd_" .. name
    return make_node(name, function(g, c)
      local t0 = now_ms()
      local r = { fn(g, c) }
      add(label, now_ms() - t0)
      return unpack(r, 1, table.maxn(r))
    end, ctx, ...)
  end
  local total, fwd, bwd, clip_ms, adam_ms = 0, 0, 0, 0, 0
  local ok, err = pcall(function()
    for _ = 1, steps do
      local b = next_batch()
      local t0 = now_ms()
      local loss = model:loss(batch_arg(b), LOSS_OPTS)
      local _ = loss:item()
      local t1 = now_ms()
      opt:zero_grad()
      ;(loss * (1 / B)):backward()
      local t2 = now_ms()
      tn.optim.clip_grad_norm(opt, CFG.optim.clip)
      local t3 = now_ms()
      opt:step()
      local t4 = now_ms()
      total, fwd, bwd = total + (t4 - t0), fwd + (t1 - t0), bwd + (t2 - t1)
      clip_ms, adam_ms = clip_ms + (t3 - t2), adam_ms + (t4 - t3)
    end
  end)
  autograd.make_node = make_node
  for i = #restore, 1, -1 do
    local r = restore[i]
    rawset(r[1], r[2], r[3])
  end
  if not ok then error(err, 0) end
  local f = { { "profile", "tern_step" }, { "threads", TH }, { "steps", steps },
    { "step_ms", total / steps }, { "fwd_ms", fwd / steps }, { "bwd_ms", bwd / steps },
    { "clip_ms", clip_ms / steps }, { "adam_ms", adam_ms / steps } }
  -- forward parts in call order, then backward nodes by time (the 12 largest)
  local bw = {}
  for _, name in ipairs(order) do
    if name:sub(1, 4) == "fwd_" then f[#f + 1] = { name .. "_ms", acc[name] / steps }
    else bw[#bw + 1] = name end
  end
  table.sort(bw, function(a, b2) return acc[a] > acc[b2] end)
  local rest = 0
  for i, name in ipairs(bw) do
    if i <= 12 then f[#f + 1] = { name .. "_ms", acc[name] / steps } else rest = rest + acc[name] end
  end
  if #bw > 12 then f[#f + 1] = { "bwd_other_ms", rest / steps } end
  f[#f + 1] = { "note", "profiled steps carry the timing wrappers' overhead; fwd_encoder includes its layer norms" }
  f[#f + 1] = { "load1", load1() }
  emit_line(json(f))
end

-- main ---------------------------------------------------------------------------------------------

local chk = { check_losses() }
local input = opts.save_input ~= "" and opts.save_input or os.tmpname()
write_input(input, chk)

-- tern's step (its line and profile); returns the median ms, or nil after an error line
local function tern_case()
  local ok, res, model, opt, next_batch = pcall(run_tern)
  if not ok then
    emit_line(json({ { "op", "asr_step" }, { "impl", "tern" }, { "threads", TH }, { "error", tostring(res) } }))
    return nil
  end
  local ld = load1()
  local f = { { "op", "asr_step" }, { "impl", "tern" }, { "loss", "pruned" }, { "threads", TH },
    { "median_ms", res.ms }, { "min_ms", res.min }, { "cpu_ms", res.cpu }, { "fwd_ms", res.fwd },
    { "bwd_ms", res.bwd }, { "opt_ms", res.opt }, { "repeats", REPEAT }, { "warmup", WARMUP },
    { "params", N_PARAMS }, { "B", B }, { "batches", NB }, { "T_max", T_max }, { "T_mean", T_mean },
    { "S_max", S_max }, { "S_mean", S_mean }, { "data", DATA }, { "encoder", opts.encoder },
    { "dtype", "f32" }, { "device", "cpu" }, { "load1", ld } }
  lib.add_load_note(f, ld)
  emit_line(json(f))
  if opts.profile == "1" then
    local pok, perr = pcall(profile, model, opt, next_batch, 4)
    if not pok then emit_line(json({ { "profile", "tern_step" }, { "threads", TH }, { "error", tostring(perr) } })) end
  end
  return res.ms
end

local rc = 0
local tern_ms = tern_case()
if not tern_ms then rc = 1 end
lib.full_gc()

local peer = {}
if opts.peer == "torch" then
  local cmd = fmt("%s %s %s/bench/asr_step_torch.py --input=%s --threads=%d --repeat=%d --warmup=%d"
    .. " --variants=%s 2>&1", lib.thread_env(TH), lib.PYTHON, here, input, TH, REPEAT, WARMUP,
    table.concat(VARIANTS, ","))
  lib.echo_peer(cmd, TH, function(line)
    local v, ms = lib.field(line, "loss"), lib.field(line, "median_ms")
    if lib.field(line, "op") == "asr_step" and v and ms then peer[v] = ms end
  end)
end
if opts.save_input == "" then os.remove(input) end

local sp_pruned = lib.ratio(peer.pruned, tern_ms)
local sp_full = lib.ratio(peer.full, tern_ms)
local met
if sp_pruned or sp_full then met = (not sp_pruned or sp_pruned >= 2) and (not sp_full or sp_full >= 2) end
local ld = load1()
local f = { { "compare", "asr_step" }, { "threads", TH }, { "tern_pruned_ms", tern_ms },
  { "torch_pruned_ms", peer.pruned }, { "torch_full_ms", peer.full },
  { "speedup_vs_torch_pruned", sp_pruned }, { "speedup_vs_torch_full", sp_full },
  { "target", "speedup (torch ms / tern ms) >= 2" } }
if met ~= nil then f[#f + 1] = { "target_met", met } end
f[#f + 1] = { "load1", ld }
lib.add_load_note(f, ld)
emit_line(json(f))
os.exit(rc)
