#!/usr/bin/env luajit
-- recipes/asr_train.lua — the main job: train, evaluate and run an SRU-transducer speech
-- recogniser (pruned RNN-T; character tokens, or SentencePiece with --tokens.type=spm) end to end.
--
--   luajit recipes/asr_train.lua                      # default data set, train, evaluate, sample
--   luajit recipes/asr_train.lua --quick=true         # tiny data and model, about a minute
--   luajit recipes/asr_train.lua --data.train=/corpora/LibriSpeech/train-clean-100 \
--       --data.test=/corpora/LibriSpeech/test-clean --train.max_minutes=600
--   luajit recipes/asr_train.lua --mode=eval          # decode the test set with the best checkpoint
--   luajit recipes/asr_train.lua --mode=infer --infer.files=a.wav,b.flac
--   luajit recipes/asr_train.lua --help               # every option with its default
--
-- Stages (mode=train): data (the default data set is made once by recipes/data/synth.lua and
-- cached under data.dir; --data.train/--data.test take a LibriSpeech folder, a CSV or JSONL
-- manifest), features (Kaldi fbank cached on disk, global CMVN; speed perturbation 0.9/1.0/1.1
-- and SpecAugment when asked for), training (bucketed batches prepared by a background C thread, Adam with warm-up
-- and cosine decay, gradient clipping, optional f16/bf16 with loss scaling), checkpoints every
-- train.ckpt_every steps and at each epoch end (atomic; the last train.keep_last and the best by
-- WER are kept; a run resumes from the newest automatically), evaluation (greedy or modified
-- beam search, WER / CER, per-utterance hypotheses), plots and a sample transcription.
-- Ctrl-C (or SIGTERM) saves a checkpoint and exits; a second Ctrl-C exits at once.
local script = arg and arg[0] or "recipes/asr_train.lua"
local here = script:match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
package.path = table.concat({ here .. "/?.lua", root .. "/lua/?.lua", root .. "/lua/?/init.lua", package.path }, ";")

local config = require "asr.config"
local ok_cfg, cfg = pcall(config.parse, arg)
if not ok_cfg then
  io.stderr:write(tostring(cfg), "\n(luajit recipes/asr_train.lua --help lists the options)\n")
  os.exit(2)
end
if config.help then
  print("usage: luajit recipes/asr_train.lua [--key=value ...]; options and defaults:")
  for _, l in ipairs(config.describe(cfg)) do print("  " .. l) end
  os.exit(0)
end

local tn = require "tern"
local Model = require "asr.model"
local decode = require "asr.decode"
local werm = require "asr.wer"
local tokm = require "asr.tokenizer"
local report = require "asr.report"
local parallel = require "asr.parallel"

local fmt = string.format
local P = parallel.setup(cfg) -- rank 0 of 1 without --dist
local function say(...) if P.main then io.stderr:write("asr: ", fmt(...), "\n") end end

tn.set_num_threads(cfg.threads)
-- per-rank seeds (dropout, augmentation draws differ between ranks); the parameters are made
-- alike by the broadcast from rank 0 before training
tn.manual_seed(cfg.seed + P.rank)
if P.main then os.execute("mkdir -p '" .. cfg.exp_dir .. "'") end
local T_START = report.now()

-- data ------------------------------------------------------------------------------------------

local function prepare_data()
  local train_path, test_path = cfg.data.train, cfg.data.test
  if train_path == "" then
    local synth = require "data.synth"
    local tr, te, info = synth.prepare{ dir = cfg.data.dir, seed = cfg.seed, n_train = cfg.data.n_train,
      n_test = cfg.data.n_test, procs = cfg.data.procs }
    say("default data set: %d train / %d test utterances, %.2f h%s", info.n_train or cfg.data.n_train,
      info.n_test or cfg.data.n_test, info.hours or 0, info.cached and " (cached)" or "")
    train_path = tr
    if test_path == "" then test_path = te end
  end
  if test_path == "" then error("asr_train: --data.train given without --data.test", 0) end
  local lim = { max_duration = cfg.data.max_duration, min_duration = cfg.data.min_duration }
  local train_items = cfg.mode == "train" and tn.data.read_manifest(train_path, lim) or {}
  local test_items = tn.data.read_manifest(test_path, {})
  return train_items, test_items
end

local feat_opts = { num_mel_bins = cfg.features.num_mel_bins }

-- Speed perturbation 0.9 / 1.0 / 1.1: three copies of every training utterance
-- (data.speed_copies, icefall's way), or one speed per utterance drawn from (seed, id).
local function features(train_items, test_items)
  local cache = tn.data.FeatureCache{ dir = cfg.data.dir .. "/feats", opts = feat_opts }
  local speeds = (cfg.data.speed_perturb and cfg.mode == "train") and { 0.9, 1.0, 1.1 } or { 1.0 }
  local train = #train_items > 0
    and cache:add(train_items, { speeds = speeds, one_speed = not cfg.data.speed_copies, seed = cfg.seed }) or {}
  local test = cache:add(test_items)
  return cache, train, test
end

-- a component whose state is the CMVN statistics, so checkpoints carry them (for eval / infer)
local function cmvn_holder(cmvn)
  return {
    value = cmvn,
    state_dict = function(self) return { mean = self.value.mean, std = self.value.std } end,
    load_state_dict = function(self, sd) self.value = { mean = sd.mean, std = sd.std } end,
  }
end

-- model and training state -------------------------------------------------------------------------

local data_memo
local function get_data()
  if not data_memo then data_memo = { prepare_data() } end
  return data_memo[1], data_memo[2]
end

-- rank 0 first: it makes the default data set and trains a SentencePiece model when asked
local tok = parallel.main_first(P, function()
  if P.on then get_data() end
  return tokm.make(cfg.tokens, { mode = cfg.mode, dir = cfg.exp_dir .. "/tokens", log = function(l) say("%s", l) end,
    train_texts = function()
      local texts = {}
      for i, it in ipairs((get_data())) do texts[i] = it.text end
      return texts
    end })
end)
local mcfg = {}
for k, v in pairs(cfg.model) do mcfg[k] = v end
mcfg.vocab, mcfg.feat_dim = tok.vocab, cfg.features.num_mel_bins
local model = Model.Transducer(mcfg)
if cfg.amp.dtype ~= "f32" then model:to(cfg.amp.dtype) end
if cfg.device ~= "cpu" then model:to(cfg.device) end
local n_params = model:num_parameters()

local function make_optimizer()
  local o = cfg.optim
  if o.name ~= "adam" and o.name ~= "adamw" then
    error("asr_train: --optim.name must be adam or adamw, got " .. tostring(o.name), 0)
  end
  local ctor = o.name == "adam" and tn.optim.Adam or tn.optim.AdamW
  local opt = ctor(model:parameters(), { lr = o.lr, betas = { o.beta1, o.beta2 }, eps = o.eps,
    weight_decay = o.weight_decay })
  if not P.on then return opt end
  return tn.dist.DistributedOptimizer(opt, { fusion_mb = cfg.dist_fusion_mb, compression = cfg.dist_compression })
end

local function make_lr(total_steps)
  local l = cfg.lr
  local policy = tn.optim.lr[l.policy]
  if not policy then error("asr_train: unknown --lr.policy " .. tostring(l.policy), 0) end
  if l.policy == "noam" then
    return policy{ d_model = cfg.model.d_model, warmup_steps = l.warmup_steps, lr = cfg.optim.lr }
  elseif l.policy == "fixed" then
    return policy{ lr = cfg.optim.lr, warmup_steps = l.warmup_steps }
  end
  return policy{ lr = cfg.optim.lr, decay_steps = math.max(1, total_steps - l.warmup_steps),
    warmup_steps = l.warmup_steps, min_lr = l.min_lr }
end

local function tokens_of(texts)
  local out = {}
  for i, t in ipairs(texts) do out[i] = tok:encode(t) end
  return out
end

-- a batch's features in the model's dtype and its frame counts as a Lua list
local function batch_inputs(batch)
  local feats = batch.feats
  if cfg.device ~= "cpu" then feats = feats:to(cfg.device) end
  if cfg.amp.dtype ~= "f32" then feats = feats:to(cfg.amp.dtype) end
  return feats, batch.feat_lens:totable()
end

-- evaluation ---------------------------------------------------------------------------------------

local function test_batches(cache, entries, cmvn)
  return tn.data.Batches{ items = entries, max_frames = cfg.train.max_frames, shuffle = false, seed = cfg.seed,
    cache = cache, cmvn = cmvn, spec_augment = false }
end

-- decode every test utterance (with --dist, each rank a share, the counts summed and the rows
-- gathered in rank order); returns summary, rows {id, ref, hyp}, mean loss per utterance
local function evaluate(cache, entries, cmvn, opts)
  opts = opts or {}
  model:eval()
  local scorer, rows = werm.Scorer(), {}
  local tot_loss, n = 0, 0
  local batches = test_batches(cache, parallel.shard(P, entries), cmvn)
  for batch in batches:iter(1) do
    local feats, lens = batch_inputs(batch)
    local enc, enc_lens = tn.no_grad(function() return model:encode(feats, lens) end)
    if opts.loss then
      local l = tn.no_grad(function()
        return model:loss({ feats = feats, feat_lens = lens, tokens = tokens_of(batch.texts) },
          { s_range = cfg.loss.s_range, simple_scale = cfg.loss.simple_scale })
      end)
      tot_loss, n = tot_loss + l:item(), n + #lens
    end
    local hyps
    if (opts.method or cfg.decode.method) == "beam" then
      hyps = decode.modified_beam_search(model, enc, enc_lens, { beam = cfg.decode.beam })
    else
      hyps = decode.greedy(model, enc, enc_lens, { max_sym_per_frame = cfg.decode.max_sym_per_frame })
    end
    for b = 1, #hyps do
      local ref, hyp = tokm.normalize(batch.texts[b]), tok:decode(hyps[b])
      scorer:add(ref, hyp)
      rows[#rows + 1] = { id = batch.ids[b], ref = ref, hyp = hyp }
    end
  end
  model:train()
  if P.on then
    parallel.sum_scorer(P, scorer)
    local sums = parallel.sum(P, { tot_loss, n })
    tot_loss, n = sums[1], sums[2]
    local lines = {}
    for i, r in ipairs(rows) do lines[i] = table.concat({ r.id, r.ref, r.hyp }, "\t") end
    rows = {}
    for _, chunk in ipairs(parallel.gather_strings(P, table.concat(lines, "\n"))) do
      for line in chunk:gmatch("[^\n]+") do
        local id, ref, hyp = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
        rows[#rows + 1] = { id = id, ref = ref, hyp = hyp }
      end
    end
  end
  return scorer:summary(), rows, n > 0 and tot_loss / n or nil
end

local function write_hyps(path, rows, summary)
  local f = assert(io.open(path .. ".tmp", "w"))
  for _, r in ipairs(rows) do f:write(fmt("%s\tREF: %s\n%s\tHYP: %s\n", r.id, r.ref, r.id, r.hyp)) end
  f:write(fmt("# WER %.2f%% (%d errors / %d words: %d sub, %d del, %d ins), CER %.2f%%, %d of %d sentences wrong\n",
    summary.wer, summary.word_errors, summary.words, summary.sub, summary.del, summary.ins, summary.cer,
    summary.sent_err, summary.sentences))
  f:close()
  os.rename(path .. ".tmp", path)
end

-- one utterance's simple-loss lattice occupation and its pruning band, for the plot
local function plot_lattice(cache, entries, cmvn)
  local loader = test_batches(cache, { entries[1] }, cmvn):iter(1)
  local batch = loader()
  loader:close()
  if batch then
    tn.no_grad(function()
      local feats, lens = batch_inputs(batch)
      local enc, enc_lens = model:encode(feats, lens)
      local tokens = tokens_of(batch.texts)
      local dec, symbols = model:decode_targets(tokens)
      local am, lm = model.joiner:simple(enc, dec)
      local boundary = tn.tensor({ { 0, 0, #tokens[1], enc_lens[1] } }, { dtype = "i64" })
      local _, pxg, pyg = tn.rnnt.loss_simple{ lm = lm:float(), am = am:float(), symbols = symbols,
        termination_symbol = 0, boundary = boundary, return_grad = true }
      local ranges = tn.rnnt.get_prune_ranges{ px_grad = pxg, py_grad = pyg, boundary = boundary,
        s_range = cfg.loss.s_range }
      local occ = pyg:select(1, 1):totable() -- (S+1, T): blank occupation per lattice node
      local r = ranges:select(1, 1):totable()
      local band = {}
      for t = 1, #r do band[t] = { r[t][1], r[t][#r[t]] } end
      report.plot_lattice(cfg.exp_dir, occ, band, "occupation of " .. batch.ids[1] .. " and its pruning band")
    end)
  end
end

-- modes --------------------------------------------------------------------------------------------

local function summary_line(s)
  return fmt("WER %.2f%%  CER %.2f%%  (%d words, %d sub / %d del / %d ins)", s.wer, s.cer, s.words, s.sub, s.del, s.ins)
end

local ckpt = tn.checkpoint.Manager{ dir = cfg.exp_dir .. "/ckpt", keep_last = cfg.train.keep_last,
  keep_best = cfg.train.keep_best, metric = "wer", mode = "min" }

local function run_train()
  local train_items, test_items = get_data()
  -- rank 0 computes the feature cache, the others then read it
  local cache, train, test = parallel.main_first(P, function() return features(train_items, test_items) end)
  local cmvn = cache:cmvn(train)
  local cmvn_c = cmvn_holder(cmvn)
  local sampler = tn.data.Batches{ items = train, max_frames = cfg.train.max_frames, shuffle = true, seed = cfg.seed,
    buckets = 10, cache = cache, cmvn = cmvn, rank = P.rank, world_size = P.size,
    spec_augment = cfg.features.spec_augment and { time_masks = cfg.features.time_masks,
      time_width = cfg.features.time_width, freq_masks = cfg.features.freq_masks,
      freq_width = cfg.features.freq_width } or false }
  local per_epoch = sampler:num_batches(1)
  local opt = make_optimizer()
  local sched = make_lr(cfg.train.epochs * per_epoch)
  local scaler = cfg.amp.dtype ~= "f32" and tn.amp.backoff{} or nil
  local comps = { model = model, optimizer = opt, lr = sched, scaler = scaler, cmvn = cmvn_c }
  local step, epoch, extra = 0, 1, nil
  if cfg.resume ~= "none" then
    local s, e, x
    if cfg.resume == "auto" then
      s, e, x = ckpt:restore(comps)
    else
      s, e, x = tn.checkpoint.restore(cfg.resume, comps)
    end
    if s then
      step, epoch, extra = s, e, x
      say("resumed from step %d (epoch %d)", step, epoch)
    end
  end
  if P.on then
    -- every rank starts from rank 0's parameters and optimizer state (fresh or restored)
    tn.dist.broadcast_parameters(model, 0)
    tn.dist.broadcast_optimizer_state(opt, 0)
    local same = parallel.sum(P, { step, epoch })
    if same[1] ~= step * P.size or same[2] ~= epoch * P.size then
      error(fmt("asr_train: rank %d resumed at step %d epoch %d, other ranks elsewhere: the ranks must see "
        .. "the same checkpoints (exp_dir on a shared file system) or use --resume=none", P.rank, step, epoch), 0)
    end
  end
  extra = extra or {}
  local skip = extra.batch_in_epoch or 0 -- batches of `epoch` already trained
  local curves = extra.curves or {}
  local log = P.main and report.JsonLog(cfg.exp_dir .. "/log.jsonl")
    or { write = function() end, close = function() end }
  say("model: %s encoder, %.2f M parameters, %s on %s; %d utterances (%d batches%s) per epoch; threads %d",
    cfg.model.encoder, n_params / 1e6, cfg.amp.dtype, cfg.device, #train, per_epoch,
    P.on and fmt(" per rank, %d ranks", P.size) or "", cfg.threads)
  log:write{ event = "start", n_params = n_params, train_utts = #train, test_utts = #test, batches_per_epoch = per_epoch,
    config = config.describe(cfg) }

  tn.signal_catch(1)
  local deadline = T_START + cfg.train.max_minutes * 60
  local t_train, steps_run, utts_run = report.now(), 0, 0
  local stop_reason
  local function save(ep, in_epoch, metrics)
    if not P.main then return nil end -- rank 0 writes; the ranks hold the same state
    local path = ckpt:save{ step = step, epoch = ep, model = model, optimizer = opt, lr = sched, scaler = scaler,
      cmvn = cmvn_c, metrics = metrics, extra = { batch_in_epoch = in_epoch, curves = curves } }
    log:write{ event = "checkpoint", step = step, epoch = ep, path = path }
    return path
  end

  while epoch <= cfg.train.epochs and not stop_reason do
    local bar = P.main and report.Progress{ total = per_epoch, label = fmt("epoch %d/%d", epoch, cfg.train.epochs) }
      or { update = function() end, finish = function() end }
    local ep_loss, ep_utts, k = 0, 0, skip
    for batch in sampler:iter(epoch, { start = skip }) do
      k = k + 1
      do
        local feats, lens = batch_inputs(batch)
        local B = #lens
        local ss, ps = Model.loss_scales(step, cfg.loss.warm_steps, cfg.loss.simple_scale)
        local loss, simple, pruned = model:loss({ feats = feats, feat_lens = lens, tokens = tokens_of(batch.texts) },
          { s_range = cfg.loss.s_range, simple_scale = ss, pruned_scale = ps, lm_only_scale = cfg.loss.lm_only_scale,
            am_only_scale = cfg.loss.am_only_scale })
        local lval = loss:item() / B
        if lval ~= lval or lval == math.huge then
          error(fmt("asr_train: the loss is %s at step %d (batch %s ...): lower --optim.lr or use --amp.dtype=f32",
            tostring(lval), step, tostring(batch.ids[1])), 0)
        end
        opt:zero_grad()
        local mean = loss * (1 / B)
        local applied = true
        if scaler then
          scaler:scale(mean):backward()
          scaler:unscale_(opt)
          if cfg.optim.clip > 0 then tn.optim.clip_grad_norm(opt, cfg.optim.clip) end
          applied = scaler:step(opt)
        else
          mean:backward()
          if cfg.optim.clip > 0 then tn.optim.clip_grad_norm(opt, cfg.optim.clip) end
          opt:step()
        end
        local lr = sched:step(opt)
        step, steps_run, utts_run = step + 1, steps_run + 1, utts_run + B
        ep_loss, ep_utts = ep_loss + lval * B, ep_utts + B
        local elapsed = report.now() - t_train
        local ups = utts_run / math.max(elapsed, 1e-9)
        local remaining_time = deadline - report.now()
        local eta = math.min(remaining_time, (per_epoch - k) * elapsed / steps_run)
        bar:update(k, { step = step, loss = lval, lr = lr, scale = scaler and scaler:get_scale() or nil, ups = ups,
          eta = eta })
        if step % cfg.train.log_every == 0 then
          log:write{ event = "step", step = step, epoch = epoch, loss = lval, simple = simple / B, pruned = pruned / B,
            lr = lr, scale = scaler and scaler:get_scale() or nil, applied = applied, utt_per_s = ups * P.size,
            elapsed_s = report.now() - T_START }
        end
        if step % cfg.train.ckpt_every == 0 then save(epoch, k) end
        local sig, past = parallel.agree_stop(P, tn.signal_pending(), report.now() > deadline)
        if sig ~= 0 then
          stop_reason = sig == 2 and "interrupted (Ctrl-C)" or "terminated"
          save(epoch, k)
          break
        end
        if past then
          stop_reason = fmt("time budget of %.1f min reached", cfg.train.max_minutes)
          save(epoch, k)
          break
        end
      end
    end
    skip = 0
    bar:finish()
    if not stop_reason or stop_reason:find("time budget", 1, true) then
      local s, _, vloss = evaluate(cache, test, cmvn, { loss = true })
      curves[#curves + 1] = { epoch = epoch, train_loss = ep_utts > 0 and ep_loss / ep_utts or nil, valid_loss = vloss,
        wer = s.wer }
      say("epoch %d: train loss %.3f, test loss %.3f, %s", epoch, ep_utts > 0 and ep_loss / ep_utts or 0 / 0,
        vloss or 0 / 0, summary_line(s))
      log:write{ event = "epoch", epoch = epoch, step = step, train_loss = curves[#curves].train_loss,
        valid_loss = vloss, wer = s.wer, cer = s.cer, elapsed_s = report.now() - T_START }
      if P.main then report.plot_curves(cfg.exp_dir, curves) end
      if not stop_reason then
        save(epoch + 1, 0, { wer = s.wer })
      end
    end
    epoch = epoch + 1
  end
  tn.signal_catch(0)
  if stop_reason and not stop_reason:find("time budget", 1, true) then
    say("%s: checkpoint saved at step %d; run the same command again to resume", stop_reason, step)
    log:close()
    if P.on then tn.dist.finalize() end
    os.exit(130, true) -- closing the Lua state runs the finalizers: native memory goes back too
  end
  if stop_reason then say("%s at step %d", stop_reason, step) end
  local train_s = report.now() - t_train
  -- final evaluation with the configured search
  local s, rows = evaluate(cache, test, cmvn, {})
  if P.main then write_hyps(cfg.exp_dir .. "/hyps.txt", rows, s) end
  save(epoch, 0, { wer = s.wer })
  if P.main then plot_lattice(cache, test, cmvn) end
  local total_min = (report.now() - T_START) / 60
  log:write{ event = "final", wer = s.wer, cer = s.cer, steps = step, minutes = total_min,
    steps_per_s = steps_run / math.max(train_s, 1e-9) }
  log:close()
  if not P.main then return end
  print(fmt("\nresult (%s search, %d test utterances): %s", cfg.decode.method, s.sentences, summary_line(s)))
  print(fmt("steps %d, %.2f steps/s, %.1f minutes in all; hypotheses in %s/hyps.txt, log %s/log.jsonl",
    step, steps_run / math.max(train_s, 1e-9), total_min, cfg.exp_dir, cfg.exp_dir))
  for i = 1, math.min(3, #rows) do print(fmt("  sample %s\n    REF: %s\n    HYP: %s", rows[i].id, rows[i].ref, rows[i].hyp)) end
end

local function restore_for_decoding(cmvn_c)
  local path = cfg.resume ~= "auto" and cfg.resume ~= "none" and cfg.resume or ckpt:best() or ckpt:latest()
  if not path then error("asr_train: no checkpoint in " .. cfg.exp_dir .. "/ckpt: train first (--mode=train)", 0) end
  local ok, err = pcall(tn.checkpoint.restore, path, { model = model, cmvn = cmvn_c })
  if not ok then
    error(tostring(err) .. "\n(--mode=eval and --mode=infer need the --model.* and --tokens.* options of the "
      .. "training run)", 0)
  end
  say("loaded %s", path)
end

local function run_eval()
  local _, test_items = get_data()
  local cache, _, test = features({}, test_items)
  local cmvn_c = cmvn_holder({})
  restore_for_decoding(cmvn_c)
  local s, rows = evaluate(cache, test, cmvn_c.value, {})
  write_hyps(cfg.exp_dir .. "/hyps.txt", rows, s)
  print(fmt("%s search on %d utterances: %s", cfg.decode.method, s.sentences, summary_line(s)))
end

local function run_infer()
  if cfg.infer.files == "" then error("asr_train: --mode=infer needs --infer.files=a.wav[,b.flac...]", 0) end
  local cmvn_c = cmvn_holder({})
  restore_for_decoding(cmvn_c)
  model:eval()
  local cm = cmvn_c.value
  for path in cfg.infer.files:gmatch("[^,]+") do
    local wave = tn.audio.load(path, { sample_rate = 16000 })
    local feats = tn.audio.fbank(wave, feat_opts)
    feats = ((feats - cm.mean) / cm.std):unsqueeze(1)
    if cfg.amp.dtype ~= "f32" then feats = feats:to(cfg.amp.dtype) end
    local enc, lens = tn.no_grad(function() return model:encode(feats, { feats:size(2) }) end)
    local hyp
    if cfg.decode.method == "beam" then
      hyp = decode.modified_beam_search(model, enc, lens, { beam = cfg.decode.beam })[1]
    else
      hyp = decode.greedy(model, enc, lens, { max_sym_per_frame = cfg.decode.max_sym_per_frame })[1]
    end
    print(fmt("%s\t%s", path, tok:decode(hyp)))
  end
end

local modes = { train = run_train, eval = run_eval, infer = run_infer }
local run = modes[cfg.mode]
if not run then
  io.stderr:write("asr_train: --mode must be train, eval or infer, got " .. tostring(cfg.mode) .. "\n")
  os.exit(2)
end
local ok, err = xpcall(run, debug.traceback)
if not ok then
  io.stderr:write(P.on and fmt("rank %d: ", P.rank) or "", tostring(err), "\n")
  if P.on and P.size > 1 then tn.dist.abort(1) end -- the other ranks would wait in a collective
  os.exit(1, true)
end
if P.on then tn.dist.finalize() end
