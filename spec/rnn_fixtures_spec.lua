-- tn.nn.LSTM and tn.nn.SRU against golden files made by PyTorch's nn.LSTM and the `sru`
-- package 2.6.0 (spec/fixtures/make_rnn_fixtures.py): the checkpoint loads by its own names,
-- and outputs and the gradients of every input and parameter match.
local h = require "helpers.init"
local tn = h.tn

local function split(s)
  local r = {}
  for k in (s or ""):gmatch("[^,]+") do r[#r + 1] = k end
  return r
end

local function bool(s) return s == "true" or s == "True" end

local function build(m)
  local num = function(k) return tonumber(m[k]) end
  if m.kind == "lstm" then
    return tn.nn.LSTM(num("input_size"), num("hidden_size"), {
      num_layers = num("num_layers"), bias = bool(m.bias), batch_first = bool(m.batch_first),
      bidirectional = bool(m.bidirectional), proj_size = num("proj_size"), dtype = "f64",
    })
  end
  return tn.nn.SRU(num("input_size"), num("hidden_size"), {
    num_layers = num("num_layers"), bidirectional = bool(m.bidirectional),
    projection_size = num("projection_size"), layer_norm = bool(m.layer_norm),
    normalize_after = bool(m.normalize_after), highway_bias = num("highway_bias"),
    has_skip_term = bool(m.has_skip_term), rescale = bool(m.rescale), v1 = bool(m.v1),
    use_tanh = bool(m.use_tanh), dtype = "f64",
  })
end

local function state_dict(t, m)
  local sd = {}
  for _, k in ipairs(split(m.state_dict_keys)) do sd[k] = t[k] end
  return sd
end

local TOL = { atol = 1e-10, rtol = 1e-8 }

-- Run the fixture: forward with its inputs, the fixture's loss, backward; returns the model,
-- the leaf inputs and the outputs.
local function run(name)
  local t, m = tn.load(h.fixtures .. "/" .. name .. ".safetensors")
  local model = build(m)
  model:load_state_dict(state_dict(t, m))
  local input = t.input:clone():requires_grad(true)
  local leaves = { input = input }
  local loss, outs
  if m.kind == "lstm" then
    local hx
    if t.h0 then
      leaves.h0 = t.h0:clone():requires_grad(true)
      leaves.c0 = t.c0:clone():requires_grad(true)
      hx = { leaves.h0, leaves.c0 }
    end
    local output, state = model(input, hx, { lengths = t.lengths })
    outs = { output = output, h_n = state[1], c_n = state[2] }
    loss = (output * t.w_out):sum() + (state[1] * t.w_h):sum() + (state[2] * t.w_c):sum()
  else
    if t.c0 then leaves.c0 = t.c0:clone():requires_grad(true) end
    local hh, c = model(input, leaves.c0, { mask_pad = t.mask_pad })
    outs = { h = hh, c = c }
    loss = (hh * t.w_h):sum() + (c * t.w_c):sum()
  end
  loss:backward()
  return t, m, model, leaves, outs
end

local function check(name)
  local t, m, model, leaves, outs = run(name)
  for k, v in pairs(outs) do
    assert.tensor_near(t[k], v, TOL)
  end
  local params = {}
  for pname, p in model:named_parameters() do params[pname] = p end
  local n = 0
  for _, gk in ipairs(split(m.grad_keys)) do
    local what = gk:sub(6) -- after "grad."
    local x = leaves[what] or params[what]
    assert.is_not_nil(x, "no tensor for " .. gk)
    assert.is_not_nil(x.grad, "no gradient for " .. what)
    assert.tensor_near(t[gk], x.grad, TOL)
    n = n + 1
  end
  assert.is_true(n >= 3)
end

describe("nn.LSTM matches torch.nn.LSTM", function()
  for _, name in ipairs({ "lstm_uni", "lstm_bi2", "lstm_proj", "lstm_batch_first", "lstm_lengths",
    "lstm_lengths_uni", "lstm_nobias" }) do
    it("gives the outputs and gradients of " .. name, function() check(name) end)
  end

  it("names its parameters as PyTorch's state_dict does", function()
    local _, m = tn.load(h.fixtures .. "/lstm_proj.safetensors")
    local model = build(m)
    local names = {}
    for pname in model:named_parameters() do names[#names + 1] = pname end
    assert.are.same(split(m.param_keys), names)
  end)
end)

describe("nn.SRU matches the sru package", function()
  for _, name in ipairs({ "sru_default", "sru_in_ne_hidden", "sru_bi", "sru_proj",
    "sru_layer_norm", "sru_normalize_after", "sru_v1", "sru_rescale", "sru_mask_pad",
    "sru_mask_pad_bi", "sru_no_skip" }) do
    it("gives the outputs and gradients of " .. name, function() check(name) end)
  end

  it("names parameters and buffers as the package's state_dict does", function()
    for _, name in ipairs({ "sru_proj", "sru_layer_norm", "sru_bi" }) do
      local _, m = tn.load(h.fixtures .. "/" .. name .. ".safetensors")
      local model = build(m)
      local names = {}
      for pname in model:named_parameters() do names[#names + 1] = pname end
      assert.are.same(split(m.param_keys), names)
      local bufs = {}
      for bname in model:named_buffers() do bufs[#bufs + 1] = bname end
      assert.are.same(split(m.buffer_keys), bufs)
    end
  end)
end)
