-- recipes/asr/decode.lua: transducer search over a recipes/asr/model.lua Transducer.
--
--   M.greedy(model, enc, enc_lens, {max_sym_per_frame=1}) -> list (B) of token-id lists
--       batched greedy search (icefall greedy_search_batch): at each frame every utterance
--       takes the arg-max symbol; a non-blank one is emitted and advances that utterance's
--       decoder state; up to max_sym_per_frame symbols per frame.
--   M.modified_beam_search(model, enc, enc_lens, {beam=4}) -> list (B) of token-id lists
--       icefall's modified_beam_search: at most one symbol per frame; per frame the `beam`
--       best of (hypotheses x vocabulary) extensions survive, hypotheses with the same token
--       sequence are merged (log-add of their probabilities); the best at the end wins.
-- Both run under no_grad; enc (B, T, enc_out) from model:encode.
local tn = require "tern"

local M = {}

-- an i64 tensor of rows on the model's device
local function i64(model, rows) return tn.tensor(rows, { dtype = "i64", device = model:device() }) end

-- one decoder step: tokens (list of K ids), state {h, c} or nil -> dproj (K, J), state
local function dec_step(model, tokens, state)
  local emb = model.embedding(i64(model, { tokens })) -- (1, K, E)
  local out, st = model.decoder(emb, state)
  return model.joiner.decoder_proj(out:select(1, 1)), st
end

local function joint(model, e_t, dproj)
  return model.joiner.output_linear((e_t + dproj):tanh())
end

function M.greedy(model, enc, enc_lens, opts)
  opts = opts or {}
  local max_sym = opts.max_sym_per_frame or 1
  return tn.no_grad(function()
    local B, T = enc:size(1), enc:size(2)
    local e = model.joiner.encoder_proj(enc) -- (B, T, J)
    local blank = model.blank
    local toks = {}
    for b = 1, B do toks[b] = blank end
    local dproj, state = dec_step(model, toks, nil)
    local hyps = {}
    for b = 1, B do hyps[b] = {} end
    for t = 1, T do
      local e_t = e:select(2, t)
      for _ = 1, max_sym do
        local best = joint(model, e_t, dproj):argmax(2):totable()
        local mask, any = {}, false
        for b = 1, B do
          local y = best[b]
          if type(y) == "table" then y = y[1] end
          if t <= enc_lens[b] and y ~= blank then
            hyps[b][#hyps[b] + 1] = y
            toks[b], mask[b], any = y, 1, true
          else
            mask[b] = 0
          end
        end
        if not any then break end
        local nd, ns = dec_step(model, toks, state)
        local m = tn.tensor(mask, { dtype = "u8", device = e:device() })
        dproj = tn.where(m:view(B, 1):ne(0), nd, dproj)
        local m3 = m:view(1, B, 1):ne(0)
        state = { tn.where(m3, ns[1], state[1]), tn.where(m3, ns[2], state[2]) }
      end
    end
    return hyps
  end)
end

local function logadd(a, b)
  if a < b then a, b = b, a end
  if b == -math.huge then return a end
  return a + math.log(1 + math.exp(b - a))
end

local function beam_one(model, e, len, beam)
  local blank = model.blank
  local dproj, state = dec_step(model, { blank }, nil)
  -- a hypothesis: ys (list), key (string), logp, row (its index in dproj / state)
  local hyps = { { ys = {}, key = "", logp = 0.0, row = 1 } }
  for t = 1, len do
    local K = #hyps
    local rows = {}
    for k = 1, K do rows[k] = hyps[k].row - 1 end
    local idx = i64(model, rows)
    local dp = dproj:index_select(1, idx) -- (K, J)
    local lp = joint(model, e:select(1, t):unsqueeze(1), dp):log_softmax(2):totable()
    local cands = {}
    for k = 1, K do
      local h, row = hyps[k], lp[k]
      for v = 1, #row do cands[#cands + 1] = { k = k, v = v - 1, s = h.logp + row[v] } end
    end
    table.sort(cands, function(a, b) return a.s > b.s end)
    -- keep the best `beam` distinct token sequences, merging duplicates
    local new, by_key, ext = {}, {}, {}
    for _, c in ipairs(cands) do
      local h = hyps[c.k]
      local key = c.v == blank and h.key or (h.key .. "," .. c.v)
      local got = by_key[key]
      if got then
        got.logp = logadd(got.logp, c.s)
      elseif #new < beam then
        local n = { key = key, logp = c.s, parent = c.k }
        if c.v == blank then
          n.ys, n.row = h.ys, h.row
        else
          local ys = {}
          for i = 1, #h.ys do ys[i] = h.ys[i] end
          ys[#ys + 1] = c.v
          n.ys, n.tok = ys, c.v
          ext[#ext + 1] = n
        end
        new[#new + 1] = n
        by_key[key] = n
      end
    end
    -- advance the decoder for the hypotheses that emitted, in one batch
    if #ext > 0 then
      local prow, ptok = {}, {}
      for i, n in ipairs(ext) do
        prow[i] = hyps[n.parent].row - 1
        ptok[i] = n.tok
      end
      local pidx = i64(model, prow)
      local st = { state[1]:index_select(2, pidx), state[2]:index_select(2, pidx) }
      local nd, ns = dec_step(model, ptok, st)
      local base = dproj:size(1)
      dproj = tn.cat({ dproj, nd }, 1)
      state = { tn.cat({ state[1], ns[1] }, 2), tn.cat({ state[2], ns[2] }, 2) }
      for i, n in ipairs(ext) do n.row = base + i end
    end
    -- compact the decoder rows to those still referenced
    local used, order = {}, {}
    for _, n in ipairs(new) do
      if not used[n.row] then
        order[#order + 1] = n.row
        used[n.row] = #order
      end
    end
    if #order < dproj:size(1) then
      local sel = {}
      for i, r in ipairs(order) do sel[i] = r - 1 end
      local sidx = i64(model, sel)
      dproj = dproj:index_select(1, sidx)
      state = { state[1]:index_select(2, sidx), state[2]:index_select(2, sidx) }
      for _, n in ipairs(new) do n.row = used[n.row] end
    end
    hyps = new
  end
  local best = hyps[1]
  for _, h in ipairs(hyps) do if h.logp > best.logp then best = h end end
  return best.ys
end

function M.modified_beam_search(model, enc, enc_lens, opts)
  opts = opts or {}
  local beam = opts.beam or 4
  return tn.no_grad(function()
    local e = model.joiner.encoder_proj(enc)
    local out = {}
    for b = 1, enc:size(1) do out[b] = beam_one(model, e:select(1, b), enc_lens[b], beam) end
    return out
  end)
end

return M
