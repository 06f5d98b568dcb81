-- tern.nn.LSTM(input_size, hidden_size, {num_layers=1, bias=true, batch_first=false,
-- dropout=0, bidirectional=false, proj_size=0, dtype="f32"}) with PyTorch nn.LSTM semantics:
-- gates i, f, g, o; parameters weight_ih_l{k}[_reverse] (4H, in), weight_hh_l{k}[_reverse]
-- (4H, P), bias_ih_l{k}, bias_hh_l{k} (4H), weight_hr_l{k} (P, H) when proj_size > 0; all
-- initialised U(-1/sqrt(H), 1/sqrt(H)).
--
-- lstm(input, {h0, c0}, {lengths=}) -> output, {h_n, c_n}
--   input (L, B, in) or (B, L, in) with batch_first; h0 (layers*D, B, P), c0 (layers*D, B, H);
--   lengths (B): valid steps per sequence — padded steps give zero output and h_n, c_n come
--   from each sequence's last valid step, as PyTorch does with packed sequences.
-- Per layer and direction: one GEMM for the input projection of every step, then the fused
-- recurrence of core/lstm.c (one GEMM per step plus one pointwise pass).
local Module = require "tern.nn.Module"
local Tensor = require "tern.tensor"
local F = require "tern.nn.functional"
local R = require "tern.nn.recurrence"

local fmt = string.format

local LSTM = Module:extend("LSTM")

function LSTM:init(input_size, hidden_size, opts)
  opts = opts or {}
  Module.check_int("LSTM", "input_size", input_size, 1)
  Module.check_int("LSTM", "hidden_size", hidden_size, 1)
  local num_layers = opts.num_layers or 1
  Module.check_int("LSTM", "num_layers", num_layers, 1)
  local proj = opts.proj_size or 0
  Module.check_int("LSTM", "proj_size", proj, 0)
  if proj >= hidden_size then
    error(fmt("LSTM: proj_size (%d) must be smaller than hidden_size (%d)", proj, hidden_size), 3)
  end
  local dropout = opts.dropout or 0
  if type(dropout) ~= "number" or dropout < 0 or dropout > 1 then
    error("LSTM: dropout must be a number in [0, 1], got " .. tostring(dropout), 3)
  end
  self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
  self.proj_size, self.dropout = proj, dropout
  self.bias = opts.bias ~= false
  self.batch_first = opts.batch_first == true
  self.bidirectional = opts.bidirectional == true
  local D = self.bidirectional and 2 or 1
  local P = proj > 0 and proj or hidden_size
  local H4 = 4 * hidden_size
  local k = 1 / math.sqrt(hidden_size)
  local dt = { dtype = opts.dtype or "f32" }
  local function param(name, shape)
    self:register_parameter(name, Tensor.empty(shape, dt):uniform_(-k, k))
  end
  for layer = 0, num_layers - 1 do
    local in_k = layer == 0 and input_size or P * D
    for dir = 0, D - 1 do
      local sfx = fmt("_l%d%s", layer, dir == 1 and "_reverse" or "")
      param("weight_ih" .. sfx, { H4, in_k })
      param("weight_hh" .. sfx, { H4, P })
      if self.bias then
        param("bias_ih" .. sfx, { H4 })
        param("bias_hh" .. sfx, { H4 })
      end
      if proj > 0 then param("weight_hr" .. sfx, { P, hidden_size }) end
    end
  end
end

function LSTM:forward(input, hx, opts)
  local device = self.weight_ih_l0:device()
  local x, L, B = R.check_input("LSTM", input, self.batch_first, self.input_size,
    self.weight_ih_l0:dtype(), 2, device)
  local D = self.bidirectional and 2 or 1
  local H = self.hidden_size
  local P = self.proj_size > 0 and self.proj_size or H
  local h0, c0
  if hx ~= nil then
    if type(hx) ~= "table" or Tensor.is_tensor(hx) then
      error("LSTM: the state must be a table {h0, c0}", 2)
    end
    h0, c0 = hx[1], hx[2]
    R.check_state("LSTM", "h0", h0, { self.num_layers * D, B, P }, 2)
    R.check_state("LSTM", "c0", c0, { self.num_layers * D, B, H }, 2)
    if h0:dtype() ~= input:dtype() or c0:dtype() ~= input:dtype() then
      error(fmt("LSTM: h0 and c0 must be %s like the input, got %s and %s", input:dtype(), h0:dtype(), c0:dtype()), 2)
    end
    if h0:device() ~= device or c0:device() ~= device then
      error(fmt("LSTM: h0 and c0 must be on %s like the input, got %s and %s", device, h0:device(), c0:device()), 2)
    end
  end
  -- lengths stay on the CPU for every device: tn_lstm_* read them on the host (checks and the
  -- steps without a valid row) and upload them to the GPU themselves, with no wait
  local lengths = R.check_lengths("LSTM", opts and opts.lengths, L, B, 2)

  local layer_in = x
  local hs, cs = {}, {}
  for layer = 0, self.num_layers - 1 do
    local outs = {}
    for dir = 0, D - 1 do
      local sfx = fmt("_l%d%s", layer, dir == 1 and "_reverse" or "")
      local bias = self.bias and (self["bias_ih" .. sfx] + self["bias_hh" .. sfx]) or nil
      local xproj = F.linear(layer_in, self["weight_ih" .. sfx], bias)
      local idx = layer * D + dir + 1
      local out, h_n, c_n = R.lstm(xproj, self["weight_hh" .. sfx], self["weight_hr" .. sfx],
        h0 and h0:select(1, idx), c0 and c0:select(1, idx), lengths, dir == 1)
      outs[#outs + 1] = out
      hs[idx], cs[idx] = h_n, c_n
    end
    layer_in = D == 2 and Tensor.cat(outs, 3) or outs[1]
    if self.dropout > 0 and self.training and layer < self.num_layers - 1 then
      layer_in = F.dropout(layer_in, self.dropout, true)
    end
  end
  local output = self.batch_first and layer_in:transpose(1, 2) or layer_in
  return output, { Tensor.stack(hs, 1), Tensor.stack(cs, 1) }
end

function LSTM:extra_repr()
  local s = fmt("%d, %d", self.input_size, self.hidden_size)
  if self.proj_size > 0 then s = s .. ", proj_size=" .. self.proj_size end
  if self.num_layers ~= 1 then s = s .. ", num_layers=" .. self.num_layers end
  if not self.bias then s = s .. ", bias=false" end
  if self.batch_first then s = s .. ", batch_first=true" end
  if self.dropout > 0 then s = s .. ", dropout=" .. self.dropout end
  if self.bidirectional then s = s .. ", bidirectional=true" end
  return s
end

return LSTM
