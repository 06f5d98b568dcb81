-- recipes/asr/model.lua: the SRU-transducer of the ASR recipe.
--
--   front end  stack `stack` consecutive fbank frames (x4 subsampling: (B, T, F) -> (B, T/4, 4F)),
--              Linear(4F, d_model), LayerNorm, ReLU
--   encoder    SRU(d_model, hidden, {num_layers, bidirectional}) (default) or LSTM
--              (`encoder = "lstm"`), padded frames masked
--   decoder    Embedding(vocab, dec_dim) over [blank] .. tokens (blank = 0 starts every
--              sequence, icefall's convention) -> LSTM(dec_dim, dec_dim)
--   joiner     tn.nn.Joiner(enc_out, dec_dim, joiner_dim, vocab, {simple_proj = true})
--
-- model:loss(batch, opts) runs the pruned RNN-T of icefall's pruned-transducer recipes: the
-- smoothed simple loss on simple_am_proj(enc) + simple_lm_proj(dec) with its occupation
-- gradients, prune ranges of s_range symbols, the real joiner on that band only
-- (joiner:pruned), the pruned loss; loss = simple_scale * simple + pruned_scale * pruned
-- (scales from M.loss_scales: the simple loss dominates during warm-up, as in icefall's
-- stateless7 recipe).
local tn = require "tern"

local M = {}

local Transducer = tn.nn.Module:extend("Transducer")
M.Transducer = Transducer

local function default(v, d) if v == nil then return d end return v end

-- cfg: {feat_dim=80, stack=4, d_model=256, encoder="sru", enc_layers=4, enc_hidden=256,
--       bidirectional=true, dropout=0.1, dec_dim=256, joiner_dim=256, vocab=}
function Transducer:init(cfg)
  assert(type(cfg) == "table" and cfg.vocab, "Transducer: cfg.vocab is required")
  self.cfg = cfg
  self.feat_dim = default(cfg.feat_dim, 80)
  self.stack = default(cfg.stack, 4)
  self.vocab = cfg.vocab
  self.blank = 0
  local d_model = default(cfg.d_model, 256)
  local hidden = default(cfg.enc_hidden, 256)
  local layers = default(cfg.enc_layers, 4)
  local bidir = default(cfg.bidirectional, true)
  local dropout = default(cfg.dropout, 0.1)
  local dec_dim = default(cfg.dec_dim, 256)
  local joiner_dim = default(cfg.joiner_dim, 256)
  self.encoder_type = default(cfg.encoder, "sru")
  self:add_module("front", tn.nn.Linear(self.feat_dim * self.stack, d_model))
  self:add_module("front_norm", tn.nn.LayerNorm(d_model))
  if self.encoder_type == "sru" then
    self:add_module("encoder", tn.nn.SRU(d_model, hidden, { num_layers = layers, bidirectional = bidir,
      dropout = dropout, layer_norm = true }))
  elseif self.encoder_type == "lstm" then
    self:add_module("encoder", tn.nn.LSTM(d_model, hidden, { num_layers = layers, bidirectional = bidir,
      dropout = dropout }))
  else
    error("Transducer: model.encoder must be 'sru' or 'lstm', got " .. tostring(self.encoder_type), 2)
  end
  self.enc_out = hidden * (bidir and 2 or 1)
  self:add_module("embedding", tn.nn.Embedding(self.vocab, dec_dim))
  self:add_module("decoder", tn.nn.LSTM(dec_dim, dec_dim))
  self:add_module("joiner", tn.nn.Joiner(self.enc_out, dec_dim, joiner_dim, self.vocab, { simple_proj = true }))
  self.dec_dim = dec_dim
end

-- The device of the parameters ("cpu" or "cuda"): where inputs made from Lua lists go.
-- (a parameter keeps its identity when the model moves, so the first one is looked up once)
function Transducer:device()
  local p = rawget(self, "_dev_param")
  if not p then
    p = self.joiner:parameters()[1]
    rawset(self, "_dev_param", p)
  end
  return p:device()
end

-- Frames after the front end for `n` input frames.
function Transducer:out_frames(n) return math.floor(n / self.stack) end

-- feats (B, T, F) f32, feat_lens: Lua list of frame counts -> enc (B, T', enc_out), enc_lens list
function Transducer:encode(feats, feat_lens)
  local B, T, F = feats:size(1), feats:size(2), feats:size(3)
  local T4 = self:out_frames(T)
  if T4 < 1 then error(string.format("Transducer: %d frames is fewer than one stack of %d", T, self.stack), 2) end
  local x = feats:narrow(2, 1, T4 * self.stack):reshape(B, T4, F * self.stack)
  x = self.front_norm(self.front(x)):relu()
  local lens, mask = {}, nil
  local any_pad = false
  for b = 1, B do
    lens[b] = math.max(1, math.min(T4, self:out_frames(feat_lens[b])))
    if lens[b] < T4 then any_pad = true end
  end
  x = x:transpose(1, 2):contiguous() -- (T', B, d)
  local h
  if self.encoder_type == "sru" then
    if any_pad then
      local m = {}
      for t = 1, T4 do
        local row = {}
        for b = 1, B do row[b] = t > lens[b] and 1 or 0 end
        m[t] = row
      end
      mask = tn.tensor(m, { dtype = "u8", device = feats:device() })
    end
    h = self.encoder(x, nil, { mask_pad = mask })
  else
    h = self.encoder(x, nil, { lengths = tn.tensor(lens, { dtype = "i64", device = feats:device() }) })
  end
  return h:transpose(1, 2):contiguous(), lens
end

-- tokens: list (B) of lists of token ids (1..vocab-1) -> dec (B, S+1, dec_dim), symbols (B, S) i64
function Transducer:decode_targets(tokens)
  local B, S = #tokens, 0
  for b = 1, B do S = math.max(S, #tokens[b]) end
  local rows, sym = {}, {}
  for b = 1, B do
    local r, s = { self.blank }, {}
    for i = 1, S do
      local v = tokens[b][i] or self.blank
      r[i + 1] = v
      s[i] = v
    end
    rows[b], sym[b] = r, s
  end
  local dev = self:device()
  local ids = tn.tensor(rows, { dtype = "i64", device = dev })
  local emb = self.embedding(ids):transpose(1, 2):contiguous() -- (S+1, B, E)
  local out = self.decoder(emb)
  return out:transpose(1, 2):contiguous(), (S > 0 and tn.tensor(sym, { dtype = "i64", device = dev }) or tn.zeros({ B, 0 }, { dtype = "i64", device = dev })), S
end

-- icefall stateless7: during warm-up the simple loss carries the model and the pruned loss
-- fades in: simple = 1 - r (1 - simple_scale), pruned = 0.1 + 0.9 r with r = step / warm_steps.
function M.loss_scales(step, warm_steps, simple_scale)
  if step >= warm_steps then return simple_scale, 1.0 end
  local r = step / warm_steps
  return 1.0 - r * (1.0 - simple_scale), 0.1 + 0.9 * r
end

-- batch: {feats, feat_lens (list), tokens (list of lists)}; opts: {s_range=5, simple_scale,
-- pruned_scale, lm_only_scale=0.25, am_only_scale=0.0}. Returns the loss (a scalar tensor, sum
-- over the batch), and the simple and pruned sums as numbers.
function Transducer:loss(batch, opts)
  opts = opts or {}
  local enc, enc_lens = self:encode(batch.feats, batch.feat_lens)
  local dec, symbols, S = self:decode_targets(batch.tokens)
  local B = #enc_lens
  local bnd = {}
  for b = 1, B do bnd[b] = { 0, 0, #batch.tokens[b], enc_lens[b] } end
  local boundary = tn.tensor(bnd, { dtype = "i64", device = enc:device() })
  local am, lm = self.joiner:simple(enc, dec)
  local simple, px_grad, py_grad = tn.rnnt.loss_smoothed{ lm = lm, am = am, symbols = symbols,
    termination_symbol = self.blank, boundary = boundary, reduction = "sum", return_grad = true,
    lm_only_scale = opts.lm_only_scale or 0.25, am_only_scale = opts.am_only_scale or 0.0 }
  -- the boundary as Lua rows: the band width is worked out on the host, with no device read
  local ranges = tn.rnnt.get_prune_ranges{ px_grad = px_grad, py_grad = py_grad, boundary = bnd,
    s_range = opts.s_range or 5 }
  local e, d = self.joiner:project(enc, dec)
  local logits = self.joiner:pruned(e, d, ranges)
  local pruned = tn.rnnt.loss_pruned{ logits = logits, symbols = symbols, ranges = ranges,
    termination_symbol = self.blank, boundary = boundary, reduction = "sum", overwrite_logits = true }
  local ss, ps = opts.simple_scale or 0.5, opts.pruned_scale or 1.0
  local loss = simple * ss + pruned * ps
  return loss, simple:item(), pruned:item(), S
end

function Transducer:extra_repr()
  return string.format("encoder=%s, vocab=%d", self.encoder_type, self.vocab)
end

return M
