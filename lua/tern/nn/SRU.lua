-- tern.nn.SRU(input_size, hidden_size, {num_layers=2, dropout=0, rnn_dropout=0,
-- bidirectional=false, projection_size=0, layer_norm=false, normalize_after=false,
-- highway_bias=0, has_skip_term=true, rescale=false, v1=false, use_tanh=false,
-- batch_first=false, dtype="f32"}): the Simple Recurrent Unit of Lei et al. (EMNLP 2018)
-- with the equations, parameter names (rnn_lst.{i}.weight, .weight_c, .bias, .weight_proj,
-- .layer_norm.*, buffer .scale_x) and initialisation of the `sru` package 2.x, so its
-- checkpoints load directly.
--
-- sru(input, c0, {mask_pad=}) -> h, c
--   input (L, B, input_size) (or (B, L, .) with batch_first); c0 (num_layers, B, D*hidden);
--   mask_pad (L, B) (or (B, L) with batch_first), nonzero = padding: c carries over padded
--   steps and h is 0 there. h is (L, B, D*hidden), c is (num_layers, B, D*hidden).
-- Each layer: one GEMM for the projections of all steps, then the fused recurrence
-- (core/sru.c), parallel over batch x hidden.
local Module = require "tern.nn.Module"
local Tensor = require "tern.tensor"
local autograd = require "tern.autograd"
local F = require "tern.nn.functional"
local R = require "tern.nn.recurrence"
local LayerNorm = require "tern.nn.LayerNorm"
local ModuleList = require "tern.nn.ModuleList"

local fmt = string.format
local shape_str = R.shape_str

-- SRUCell -------------------------------------------------------------------------------------

local SRUCell = Module:extend("SRUCell")

function SRUCell:init(input_size, hidden_size, opts)
  opts = opts or {}
  self.input_size, self.hidden_size = input_size, hidden_size
  self.bidirectional = opts.bidirectional == true
  local D = self.bidirectional and 2 or 1
  self.output_size = hidden_size * D
  self.dropout = opts.dropout or 0
  self.rnn_dropout = opts.rnn_dropout or 0
  self.highway_bias = opts.highway_bias or 0
  self.has_skip_term = opts.has_skip_term ~= false
  self.rescale = opts.rescale == true
  self.v1 = opts.v1 == true
  self.activation_type = opts.use_tanh and 1 or 0
  self.normalize_after = opts.normalize_after == true
  local n_proj = opts.projection_size or 0
  self.projection_size = 0
  if n_proj > 0 and n_proj < input_size and n_proj < self.output_size then
    self.projection_size = n_proj
  end
  self.num_matrices = (self.has_skip_term and input_size ~= self.output_size) and 4 or 3
  local dt = { dtype = opts.dtype or "f32" }
  local k = self.num_matrices
  if self.projection_size > 0 then
    self:register_parameter("weight_proj", Tensor.empty({ input_size, self.projection_size }, dt))
    self:register_parameter("weight", Tensor.empty({ self.projection_size, self.output_size * k }, dt))
  else
    self:register_parameter("weight", Tensor.empty({ input_size, self.output_size * k }, dt))
  end
  self:register_parameter("weight_c", Tensor.empty({ 2 * self.output_size }, dt))
  self:register_parameter("bias", Tensor.empty({ 2 * self.output_size }, dt))
  self:register_buffer("scale_x", Tensor.zeros({ 1 }, dt))
  if opts.layer_norm then
    self:add_module("layer_norm", LayerNorm(self.normalize_after and self.output_size or input_size, dt))
  end
  self:reset_parameters()
end

-- The package's initialisation (sru/modules.py SRUCell.reset_parameters).
function SRUCell:reset_parameters()
  autograd.no_grad(function()
    local out, hb = self.output_size, self.highway_bias
    self.bias:zero_()
    self.bias:narrow(1, out + 1, out):fill_(hb)
    local scale = 1
    if self.rescale and self.has_skip_term then scale = math.sqrt(1 + math.exp(hb) * 2) end
    self.scale_x:fill_(scale)
    local d = self.weight:size(1)
    local r = math.sqrt(3 / d)
    self.weight:uniform_(-r, r)
    if self.projection_size > 0 then
      local rp = math.sqrt(3 / self.weight_proj:size(1))
      self.weight_proj:uniform_(-rp, rp)
    end
    -- (d, D, hidden, k) view of the weight
    local w = self.weight:view(d, -1, self.hidden_size, self.num_matrices)
    local function scale_col(m, f) w:select(4, m + 1):mul_(f) end
    if self.dropout > 0 then scale_col(0, math.sqrt(1 - self.dropout)) end
    if self.rnn_dropout > 0 then w:mul_(math.sqrt(1 - self.rnn_dropout)) end
    if self.layer_norm then w:mul_(0.1) end
    if self.rescale and self.has_skip_term and self.num_matrices == 4 then
      scale_col(3, math.sqrt(1 + math.exp(hb) * 2))
    end
    if not self.v1 then
      self.weight_c:uniform_(-math.sqrt(3), math.sqrt(3)):mul_(math.sqrt(0.5))
      scale_col(1, math.sqrt(0.5))
      scale_col(2, math.sqrt(0.5))
    else
      self.weight_c:zero_()
      self.weight_c:requires_grad(false)
    end
  end)
end

local function dropout_mask(like, shape, p)
  return autograd.no_grad(function()
    return Tensor.empty(shape, { dtype = like:dtype(), device = like:device() }):bernoulli_(1 - p):div_(1 - p)
  end)
end

-- x (L, B, input_size), c0 (B, output_size) or nil, mask_pad (L, B) u8 or nil
function SRUCell:forward(x, c0, mask_pad)
  local _, L, B = R.check_input("SRUCell", x, false, self.input_size, self.weight:dtype(), 2, self.weight:device())
  local residual = x
  local input = x
  if self.layer_norm and not self.normalize_after then input = self.layer_norm(input) end
  if self.training and self.rnn_dropout > 0 then
    input = input * dropout_mask(x, { B, self.input_size }, self.rnn_dropout)
  end
  local mask_c = nil
  if self.training and self.dropout > 0 then
    mask_c = dropout_mask(x, { B, self.output_size }, self.dropout)
  end
  local x2 = input:reshape(L * B, self.input_size)
  if self.weight_proj then x2 = x2:matmul(self.weight_proj) end
  local U = x2:matmul(self.weight):view(L, B, self.weight:size(2))
  local skip_x = (self.has_skip_term and self.num_matrices == 3) and residual or nil
  local h, c = R.sru(U, skip_x, (not self.v1) and self.weight_c or nil, self.bias, c0, mask_c,
    mask_pad, {
      scale_x = self.rescale and self.scale_x:item() or 1,
      activation = self.activation_type, has_skip = self.has_skip_term,
      bidirectional = self.bidirectional,
    })
  if self.layer_norm and self.normalize_after then h = self.layer_norm(h) end
  return h, c
end

function SRUCell:extra_repr()
  local s = fmt("%d, %d", self.input_size, self.hidden_size)
  if self.projection_size > 0 then s = s .. ", projection_size=" .. self.projection_size end
  if self.dropout > 0 then s = s .. ", dropout=" .. self.dropout end
  if self.bidirectional then s = s .. ", bidirectional=true" end
  if self.highway_bias ~= 0 then s = s .. ", highway_bias=" .. self.highway_bias end
  if self.v1 then s = s .. ", v1=true" end
  s = s .. ", rescale=" .. tostring(self.rescale)
  if not self.has_skip_term then s = s .. ", has_skip_term=false" end
  return s
end

-- SRU -------------------------------------------------------------------------------------------

local SRU = Module:extend("SRU")
SRU.Cell = SRUCell

function SRU:init(input_size, hidden_size, opts)
  opts = opts or {}
  Module.check_int("SRU", "input_size", input_size, 1)
  Module.check_int("SRU", "hidden_size", hidden_size, 1)
  local num_layers = opts.num_layers or 2
  Module.check_int("SRU", "num_layers", num_layers, 1)
  Module.check_int("SRU", "projection_size", opts.projection_size or 0, 0)
  for _, name in ipairs({ "dropout", "rnn_dropout" }) do
    local p = opts[name] or 0
    if type(p) ~= "number" or p < 0 or p >= 1 then
      error(fmt("SRU: %s must be a number in [0, 1), got %s", name, tostring(p)), 3)
    end
  end
  self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
  self.bidirectional = opts.bidirectional == true
  self.output_size = hidden_size * (self.bidirectional and 2 or 1)
  self.batch_first = opts.batch_first == true
  local cells = {}
  for i = 1, num_layers do
    local cell_opts = {}
    for k, v in pairs(opts) do cell_opts[k] = v end
    cell_opts.dropout = i ~= num_layers and (opts.dropout or 0) or 0
    cells[i] = SRUCell(i == 1 and input_size or self.output_size, hidden_size, cell_opts)
  end
  self:add_module("rnn_lst", ModuleList(cells))
end

function SRU:forward(input, c0, opts)
  local x, L, B = R.check_input("SRU", input, self.batch_first, self.input_size,
    self.rnn_lst[1].weight:dtype(), 2, self.rnn_lst[1].weight:device())
  if c0 ~= nil then
    R.check_state("SRU", "c0", c0, { self.num_layers, B, self.output_size }, 2)
    if c0:dtype() ~= input:dtype() then
      error(fmt("SRU: c0 is %s but the input is %s", c0:dtype(), input:dtype()), 2)
    end
    if c0:device() ~= input:device() then
      error(fmt("SRU: c0 is on %s but the input is on %s", c0:device(), input:device()), 2)
    end
  end
  local mask_pad = opts and opts.mask_pad
  if mask_pad ~= nil then
    if not Tensor.is_tensor(mask_pad) then
      error("SRU: mask_pad must be a tensor, got " .. type(mask_pad), 2)
    end
    local want = self.batch_first and { B, L } or { L, B }
    if table.concat(mask_pad:shape(), ",") ~= table.concat(want, ",") then
      error(fmt("SRU: mask_pad must have shape {%s} for input %s, got %s", table.concat(want, ", "),
        shape_str(input), shape_str(mask_pad)), 2)
    end
    if mask_pad:device() ~= input:device() then
      error(fmt("SRU: mask_pad is on %s but the input is on %s", mask_pad:device(), input:device()), 2)
    end
    if self.batch_first then mask_pad = mask_pad:t() end
    mask_pad = mask_pad:ne(0):contiguous()
  end
  local prev = x
  local cs = {}
  for i = 1, self.num_layers do
    local h, c = self.rnn_lst[i](prev, c0 and c0:select(1, i), mask_pad)
    prev = h
    cs[i] = c
  end
  local h = self.batch_first and prev:transpose(1, 2) or prev
  return h, Tensor.stack(cs, 1)
end

function SRU:extra_repr()
  return ""
end

return SRU
