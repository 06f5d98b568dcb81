-- tern.nn.Joiner(enc_dim, dec_dim, joiner_dim, vocab, {dtype="f32", simple_proj=false}): the
-- RNN-T joiner of icefall's pruned transducer recipes, with icefall's parameter names:
--   encoder_proj  = Linear(enc_dim, joiner_dim)
--   decoder_proj  = Linear(dec_dim, joiner_dim)
--   output_linear = Linear(joiner_dim, vocab)
-- joiner(enc, dec) = output_linear(tanh(enc + dec)) for already projected enc, dec that
-- broadcast against each other (e.g. the (B, T, R, joiner_dim) pair of tn.rnnt.do_pruning, or
-- (B, T, 1, J) and (B, 1, S+1, J) for the full lattice); joiner(enc, dec, true) projects them
-- first (icefall's project_input=True). joiner:project(enc, dec) -> encoder_proj(enc),
-- decoder_proj(dec): what do_pruning takes.
-- joiner:pruned(am, lm, ranges) = joiner(tn.rnnt.do_pruning{am, lm, ranges}) for projected am
-- (B, T, joiner_dim), lm (B, S+1, joiner_dim) and prune ranges (B, T, R), with the pruning, add
-- and tanh fused (tn.rnnt.pruned_tanh): (B, T, R, vocab) logits for tn.rnnt.loss_pruned, and
-- two fewer (B, T, R, joiner_dim) tensors in memory.
-- With simple_proj = true the module also holds simple_am_proj = Linear(enc_dim, vocab) and
-- simple_lm_proj = Linear(dec_dim, vocab) (icefall keeps them in the transducer model), and
-- joiner:simple(enc, dec) -> am (B, T, vocab), lm (B, S+1, vocab) for tn.rnnt.loss_simple.
local Module = require "tern.nn.Module"
local Linear = require "tern.nn.Linear"
local Tensor = require "tern.tensor"

local Joiner = Module:extend("Joiner")

function Joiner:init(enc_dim, dec_dim, joiner_dim, vocab, opts)
  opts = opts or {}
  Module.check_int("Joiner", "enc_dim", enc_dim, 1)
  Module.check_int("Joiner", "dec_dim", dec_dim, 1)
  Module.check_int("Joiner", "joiner_dim", joiner_dim, 1)
  Module.check_int("Joiner", "vocab", vocab, 1)
  self.enc_dim, self.dec_dim, self.joiner_dim, self.vocab = enc_dim, dec_dim, joiner_dim, vocab
  local lo = { dtype = opts.dtype }
  self:add_module("encoder_proj", Linear(enc_dim, joiner_dim, lo))
  self:add_module("decoder_proj", Linear(dec_dim, joiner_dim, lo))
  self:add_module("output_linear", Linear(joiner_dim, vocab, lo))
  if opts.simple_proj then
    self:add_module("simple_am_proj", Linear(enc_dim, vocab, lo))
    self:add_module("simple_lm_proj", Linear(dec_dim, vocab, lo))
  end
end

-- raises at the line that called the method (level 3 from here; __call tail-calls forward)
local function check_input(name, x, dim)
  if not Tensor.is_tensor(x) then
    error(string.format("Joiner: %s must be a tensor, got %s", name, type(x)), 3)
  end
  if x:dim() < 1 or x:size(-1) ~= dim then
    error(string.format("Joiner: %s of shape {%s} must end in %d features", name,
      table.concat(x:shape(), ", "), dim), 3)
  end
end

function Joiner:project(enc, dec)
  check_input("enc", enc, self.enc_dim)
  check_input("dec", dec, self.dec_dim)
  return self.encoder_proj(enc), self.decoder_proj(dec)
end

function Joiner:forward(enc, dec, project_input)
  if project_input then
    check_input("enc", enc, self.enc_dim)
    check_input("dec", dec, self.dec_dim)
    enc, dec = self.encoder_proj(enc), self.decoder_proj(dec)
  else
    if Tensor.is_tensor(enc) and Tensor.is_tensor(dec) and enc:dim() > 0 and dec:dim() > 0
      and (enc:size(-1) ~= self.joiner_dim or dec:size(-1) ~= self.joiner_dim) then
      error(string.format("Joiner: enc {%s} and dec {%s} must end in joiner_dim = %d "
        .. "(projected inputs; joiner(enc, dec, true) projects raw ones)",
        table.concat(enc:shape(), ", "), table.concat(dec:shape(), ", "), self.joiner_dim), 2)
    end
    check_input("enc", enc, self.joiner_dim)
    check_input("dec", dec, self.joiner_dim)
  end
  return self.output_linear((enc + dec):tanh())
end

function Joiner:pruned(am, lm, ranges)
  check_input("am", am, self.joiner_dim)
  check_input("lm", lm, self.joiner_dim)
  local h = require("tern.rnnt").pruned_tanh{ am = am, lm = lm, ranges = ranges }
  return self.output_linear(h)
end

function Joiner:simple(enc, dec)
  if not self.simple_am_proj then
    error("Joiner: simple() needs the simple projections: construct with {simple_proj = true}", 2)
  end
  check_input("enc", enc, self.enc_dim)
  check_input("dec", dec, self.dec_dim)
  return self.simple_am_proj(enc), self.simple_lm_proj(dec)
end

function Joiner:extra_repr()
  return string.format("enc_dim=%d, dec_dim=%d, joiner_dim=%d, vocab=%d", self.enc_dim, self.dec_dim,
    self.joiner_dim, self.vocab)
end

return Joiner
