-- recipes/asr/config.lua: the recipe's configuration, a Lua table (OpenSeq2Seq-style), and the
-- command-line overrides `--a.b=v`.
--
--   local cfg = config.parse(arg)   -- defaults <- --config=file.lua <- --a.b=v overrides
--
-- An override must name an existing key (a typo is an error listing the keys of that table);
-- its value is converted to the default's type (number, boolean, string); keys whose default is
-- nil (e.g. data.train) take strings. `--quick=true` selects the tiny configuration the specs
-- use (M.quick is applied before the other overrides).
local M = {}

function M.defaults()
  return {
    mode = "train",               -- train | eval | infer
    exp_dir = "exp/asr",          -- checkpoints, logs, plots, hypotheses
    seed = 42,
    threads = 2,
    quick = false,
    resume = "auto",              -- auto (latest checkpoint of exp_dir if any) | none | a path
    device = "cpu",               -- cpu | cuda (with --dist, the GPU of the rank's local_rank)
    dist = false,                 -- data parallel over MPI ranks: mpirun -np N luajit ... --dist=true
    dist_backend = "auto",        -- auto (nccl for cuda, else mpi) | nccl | mpi
    dist_timeout = 300,           -- seconds a collective may wait for a peer before failing
    dist_fusion_mb = 64,          -- allreduce bucket size (0: one allreduce per parameter)
    dist_compression = "none",    -- none | fp16 (gradients travel as f16)
    data = {
      dir = "data/synth",         -- where the default data set is made and cached
      train = "",                 -- a LibriSpeech dir, CSV or JSONL manifest ("" = the default set)
      test = "",
      n_train = 16000, n_test = 300,
      max_duration = 15.0, min_duration = 0.3,
      speed_perturb = false,      -- speeds 0.9 / 1.0 / 1.1 ...
      speed_copies = false,       -- ... as three copies of every utterance, or one speed each
      procs = 2,                  -- processes generating the default data set
    },
    features = {
      num_mel_bins = 80,
      spec_augment = false, time_masks = 2, time_width = 0.05, freq_masks = 2, freq_width = 15,
    },
    -- chars, or SentencePiece: a given .model, else one trained on the training transcripts
    -- into <exp_dir>/tokens/spm.model
    tokens = { type = "chars", model = "", vocab_size = 256, model_type = "unigram" },
    model = {
      encoder = "sru", d_model = 256, enc_layers = 4, enc_hidden = 256, bidirectional = true,
      dropout = 0.1, dec_dim = 256, joiner_dim = 256, stack = 4,
    },
    loss = { s_range = 5, simple_scale = 0.5, warm_steps = 300, lm_only_scale = 0.25, am_only_scale = 0.0 },
    optim = { name = "adam", lr = 2e-3, beta1 = 0.9, beta2 = 0.98, eps = 1e-8, weight_decay = 1e-6, clip = 5.0 },
    lr = { policy = "cosine_decay", warmup_steps = 200, min_lr = 1e-5 },
    amp = { dtype = "f32" },      -- f32 | f16 | bf16 (f16 / bf16: loss scaling and f32 masters)
    train = {
      epochs = 3, max_minutes = 19, max_frames = 12000, log_every = 10, ckpt_every = 200,
      keep_last = 3, keep_best = 1,
    },
    decode = { method = "greedy", beam = 4, max_sym_per_frame = 2 },
    infer = { files = "" },       -- comma-separated audio files for --mode=infer
  }
end

-- The configuration the specs and `--quick=true` use: tiny data, a small model, a minute.
function M.quick(cfg)
  cfg.exp_dir = "exp/asr_quick"
  cfg.data.dir = "data/synth_quick"
  cfg.data.n_train, cfg.data.n_test = 120, 12
  cfg.data.speed_perturb = false
  cfg.model.d_model, cfg.model.enc_layers, cfg.model.enc_hidden = 96, 2, 96
  cfg.model.dec_dim, cfg.model.joiner_dim = 64, 64
  cfg.loss.warm_steps = 20
  cfg.lr.warmup_steps = 10
  cfg.train.epochs, cfg.train.max_minutes, cfg.train.ckpt_every, cfg.train.log_every = 10, 1.5, 40, 5
  return cfg
end

local function keys_of(t)
  local k = {}
  for name in pairs(t) do k[#k + 1] = name end
  table.sort(k)
  return table.concat(k, ", ")
end

local function convert(key, v, default)
  local ty = type(default)
  if ty == "number" then
    local n = tonumber(v)
    if not n then error(string.format("asr_train: --%s expects a number, got '%s'", key, v), 0) end
    return n
  elseif ty == "boolean" then
    if v == "true" or v == "1" or v == "yes" then return true end
    if v == "false" or v == "0" or v == "no" then return false end
    error(string.format("asr_train: --%s expects true or false, got '%s'", key, v), 0)
  end
  return v
end

-- Set cfg[a][b]... = v for the dotted key, checking the key exists.
function M.set(cfg, key, v)
  local t, parts = cfg, {}
  for p in key:gmatch("[^.]+") do parts[#parts + 1] = p end
  for i = 1, #parts - 1 do
    local sub = t[parts[i]]
    if type(sub) ~= "table" then
      error(string.format("asr_train: unknown option --%s ('%s' is not a section; sections: %s)", key,
        table.concat(parts, ".", 1, i), keys_of(t)), 0)
    end
    t = sub
  end
  local last = parts[#parts]
  if t[last] == nil or type(t[last]) == "table" then
    error(string.format("asr_train: unknown option --%s (known here: %s)", key, keys_of(t)), 0)
  end
  t[last] = convert(key, v, t[last])
end

local function merge(dst, src, prefix)
  for k, v in pairs(src) do
    local key = prefix .. k
    if type(v) == "table" then
      if type(dst[k]) ~= "table" then error("asr_train: config file: unknown section " .. key, 0) end
      merge(dst[k], v, key .. ".")
    else
      M.set(dst, key, tostring(v))
    end
  end
end

-- args: the script's arg table. Returns the configuration.
function M.parse(args)
  local cfg = M.defaults()
  local pairs_ = {}
  for _, a in ipairs(args or {}) do
    if a == "-h" or a == "--help" then
      M.help = true
    else
      local k, v = a:match("^%-%-([%w_.]+)=(.*)$")
      if not k then error("asr_train: arguments are --key=value, got '" .. a .. "'", 0) end
      pairs_[#pairs_ + 1] = { k, v }
    end
  end
  for _, kv in ipairs(pairs_) do
    if kv[1] == "quick" and convert("quick", kv[2], false) then M.quick(cfg) end
  end
  for _, kv in ipairs(pairs_) do
    if kv[1] == "config" then
      local chunk, err = loadfile(kv[2])
      if not chunk then error("asr_train: --config: " .. err, 0) end
      merge(cfg, chunk(), "")
    end
  end
  for _, kv in ipairs(pairs_) do
    if kv[1] ~= "config" then M.set(cfg, kv[1], kv[2]) end
  end
  return cfg
end

-- Lines "key = value" of every leaf, sorted (for --help and the log header).
function M.describe(cfg, prefix, out)
  out, prefix = out or {}, prefix or ""
  local ks = {}
  for k in pairs(cfg) do ks[#ks + 1] = k end
  table.sort(ks)
  for _, k in ipairs(ks) do
    local v = cfg[k]
    if type(v) == "table" then M.describe(v, prefix .. k .. ".", out)
    else out[#out + 1] = string.format("--%s%s=%s", prefix, k, tostring(v)) end
  end
  return out
end

return M
