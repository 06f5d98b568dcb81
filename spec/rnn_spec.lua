-- Specs of tn.nn.LSTM and tn.nn.SRU beyond the PyTorch / sru-package golden files
-- (rnn_fixtures_spec.lua): f64 gradient checks over the input, the initial state and every
-- parameter in each configuration; dropout between layers (SRU's variational masks);
-- padded steps; thread-count independence; and the errors for bad input.
local h = require "helpers.init"
local tn = h.tn
local nn = tn.nn

local function f64(x) return tn.tensor(x, { dtype = "f64" }) end

local function contains(s, part)
  assert.truthy(s:find(part, 1, true), "'" .. s .. "' does not contain '" .. part .. "'")
end

-- Gradient check of a module over its inputs and every parameter that requires grad.
-- tn.autograd.gradcheck perturbs the tensors of its `inputs` list in place and reads their
-- .grad after backward, so the module's parameters go into that list themselves (the very
-- tensor objects the module computes with): the analytic side is the gradient backward
-- leaves in each parameter, the numeric side perturbs that parameter. call(...) receives the
-- leading `inputs` and returns the module's output tensors.
-- A parameter the forward forgot to use would pass that check vacuously (both sides zero),
-- so every checked tensor must also get a non-zero gradient from a random projection of the
-- outputs.
local function check_module(model, inputs, call, opts)
  local list, names = {}, {}
  for i, x in ipairs(inputs) do list[i], names[i] = x, "input " .. i end
  local nparams = 0
  for name, p in model:named_parameters() do
    if p:requires_grad() then
      list[#list + 1], names[#list + 1] = p, name
      nparams = nparams + 1
    end
  end
  assert.is_true(nparams > 0)
  local n_in = #inputs
  local fn = function(...) return call(unpack({ ... }, 1, n_in)) end
  assert.gradcheck(fn, list, opts)

  for _, x in ipairs(list) do rawset(x, "grad", nil) end
  tn.manual_seed(1234)
  local outs = { call(unpack(list, 1, n_in)) }
  local loss
  for _, o in ipairs(outs) do
    local term = (o * tn.randn_like(o)):sum()
    loss = loss and loss + term or term
  end
  loss:backward()
  for i, x in ipairs(list) do
    local g = rawget(x, "grad")
    assert.is_true(g ~= nil and g:abs():max():item() > 0, names[i] .. " gets no gradient")
  end
end

local function lstm(input_size, hidden, opts)
  opts = opts or {}
  opts.dtype = opts.dtype or "f64"
  return nn.LSTM(input_size, hidden, opts)
end

local function sru(input_size, hidden, opts)
  opts = opts or {}
  opts.dtype = opts.dtype or "f64"
  return nn.SRU(input_size, hidden, opts)
end

-- LSTM gradient check with x (L, B, in) and h0, c0; opts.lengths passed to forward.
local function check_lstm(m, L, B, fwd_opts)
  local D = m.bidirectional and 2 or 1
  local P = m.proj_size > 0 and m.proj_size or m.hidden_size
  local x = m.batch_first and h.leaf({ B, L, m.input_size }, 1) or h.leaf({ L, B, m.input_size }, 1)
  local h0 = h.leaf({ m.num_layers * D, B, P }, 2)
  local c0 = h.leaf({ m.num_layers * D, B, m.hidden_size }, 3)
  check_module(m, { x, h0, c0 }, function(x_, h0_, c0_)
    local out, state = m(x_, { h0_, c0_ }, fwd_opts)
    return out, state[1], state[2]
  end)
end

-- SRU gradient check with x (L, B, in) and c0; fwd_opts passed to forward.
local function check_sru(m, L, B, fwd_opts, with_c0)
  local x = m.batch_first and h.leaf({ B, L, m.input_size }, 4) or h.leaf({ L, B, m.input_size }, 4)
  local inputs = { x }
  if with_c0 ~= false then inputs[2] = h.leaf({ m.num_layers, B, m.output_size }, 5) end
  check_module(m, inputs, function(x_, c0_)
    return m(x_, c0_, fwd_opts)
  end)
end

local pad_mask = h.pad_mask

-- fn, written on one line, raises an error that starts with prefix and names that line (the
-- module's caller, not a line inside tern).
local function raises_at_line(fn, prefix)
  local line = debug.getinfo(fn, "S").linedefined
  local ok, err = pcall(fn)
  assert.is_false(ok)
  contains(tostring(err), "rnn_spec.lua:" .. line .. ": " .. prefix)
end

describe("nn.LSTM", function()
  describe("gradients (f64 finite differences over input, h0, c0 and every parameter)", function()
    it("are right for one unidirectional layer", function()
      check_lstm(lstm(2, 3), 3, 2)
    end)

    it("are right for a bidirectional layer", function()
      check_lstm(lstm(2, 2, { bidirectional = true }), 3, 2)
    end)

    it("are right for two stacked layers", function()
      check_lstm(lstm(2, 2, { num_layers = 2 }), 3, 2)
    end)

    it("are right with proj_size, bidirectional, two layers", function()
      check_lstm(lstm(2, 3, { proj_size = 2, num_layers = 2, bidirectional = true }), 3, 2)
    end)

    it("are right with lengths, unidirectional", function()
      check_lstm(lstm(2, 2), 4, 3, { lengths = { 4, 1, 2 } })
    end)

    it("are right with unequal lengths in both directions and two layers", function()
      check_lstm(lstm(2, 2, { bidirectional = true, num_layers = 2 }), 4, 3, { lengths = { 2, 4, 3 } })
    end)

    it("are right with batch_first", function()
      check_lstm(lstm(2, 2, { batch_first = true, bidirectional = true }), 3, 2)
    end)

    it("are right without bias", function()
      local m = lstm(2, 2, { bias = false, num_layers = 2 })
      assert.is_nil(m.bias_ih_l0)
      check_lstm(m, 3, 2)
    end)

    it("are right through the dropout between layers (training, a seeded mask)", function()
      local m = lstm(2, 2, { num_layers = 2, dropout = 0.5 })
      local x, h0, c0 = h.leaf({ 3, 2, 2 }, 7), h.leaf({ 2, 2, 2 }, 8), h.leaf({ 2, 2, 2 }, 9)
      check_module(m, { x, h0, c0 }, function(x_, h0_, c0_)
        tn.manual_seed(51)
        local out, state = m(x_, { h0_, c0_ })
        return out, state[1], state[2]
      end)
    end)

    it("are right without an initial state", function()
      local m = lstm(2, 2, { bidirectional = true })
      check_module(m, { h.leaf({ 3, 2, 2 }, 6) }, function(x)
        local out, state = m(x)
        return out, state[1], state[2]
      end)
    end)
  end)

  describe("forward", function()
    it("gives the shapes of output, h_n and c_n", function()
      local m = lstm(3, 4, { num_layers = 2, bidirectional = true, proj_size = 2 })
      local out, state = m(tn.zeros(5, 2, 3, { dtype = "f64" }))
      assert.are.same({ 5, 2, 4 }, out:shape())
      assert.are.same({ 4, 2, 2 }, state[1]:shape())
      assert.are.same({ 4, 2, 4 }, state[2]:shape())
    end)

    it("with batch_first equals the time-major module on the transposed input", function()
      tn.manual_seed(21)
      local a = lstm(3, 2, { bidirectional = true, batch_first = true })
      local b = lstm(3, 2, { bidirectional = true })
      b:load_state_dict(a:state_dict())
      local x = tn.randn(2, 4, 3, { dtype = "f64" })
      local oa, sa = a(x, nil, { lengths = { 4, 2 } })
      local ob, sb = b(x:transpose(1, 2), nil, { lengths = { 4, 2 } })
      assert.tensor_near(ob:transpose(1, 2), oa, { atol = 1e-14 })
      assert.tensor_near(sb[1], sa[1], { atol = 1e-14 })
      assert.tensor_near(sb[2], sa[2], { atol = 1e-14 })
    end)

    it("of two layers equals two one-layer LSTMs in a row (eval mode)", function()
      tn.manual_seed(22)
      local m = lstm(3, 2, { num_layers = 2, bidirectional = true, dropout = 0.5 }):eval()
      local l0 = lstm(3, 2, { bidirectional = true })
      local l1 = lstm(4, 2, { bidirectional = true })
      for name, p in m:named_parameters() do
        local base, layer, rev = name:match("^(%a+_%a+)_l(%d)(.*)$")
        local target = layer == "0" and l0 or l1
        tn.no_grad(function() target[base .. "_l0" .. rev]:copy_(p) end)
      end
      local x = tn.randn(4, 2, 3, { dtype = "f64" })
      local out, state = m(x)
      local o0, s0 = l0(x)
      local o1, s1 = l1(o0)
      assert.tensor_near(o1, out, { atol = 1e-14 })
      assert.tensor_near(tn.cat({ s0[1], s1[1] }, 1), state[1], { atol = 1e-14 })
      assert.tensor_near(tn.cat({ s0[2], s1[2] }, 1), state[2], { atol = 1e-14 })
    end)
  end)

  describe("empty input", function()
    it("of zero steps gives an empty output and the initial state", function()
      local m = lstm(3, 2, { num_layers = 2 })
      local h0, c0 = tn.randn(2, 2, 2, { dtype = "f64" }), tn.randn(2, 2, 2, { dtype = "f64" })
      local out, state = m(tn.zeros(0, 2, 3, { dtype = "f64" }), { h0, c0 })
      assert.are.same({ 0, 2, 2 }, out:shape())
      assert.tensor_equal(h0, state[1])
      assert.tensor_equal(c0, state[2])
    end)
  end)

  describe("dropout between layers", function()
    it("applies a seeded dropout to the first layer's output in training only", function()
      tn.manual_seed(23)
      local m = lstm(3, 2, { num_layers = 2, dropout = 0.5 })
      local l0, l1 = lstm(3, 2), lstm(2, 2)
      for name, p in m:named_parameters() do
        local base, layer = name:match("^(%a+_%a+)_l(%d)$")
        tn.no_grad(function() (layer == "0" and l0 or l1)[base .. "_l0"]:copy_(p) end)
      end
      local x = tn.randn(5, 3, 3, { dtype = "f64" })
      tn.manual_seed(99)
      local train_out = m(x)
      tn.manual_seed(99)
      local o0 = l0(x)
      local want = l1(tn.nn.F.dropout(o0, 0.5, true))
      assert.tensor_near(want, train_out, { atol = 1e-14 })
      m:eval()
      local eval_out = m(x)
      assert.tensor_near(l1(o0), eval_out, { atol = 1e-14 })
      assert.is_false(eval_out:allclose(train_out))
      assert.tensor_equal(eval_out, m(x))
    end)

    it("does nothing after the last layer", function()
      tn.manual_seed(24)
      local m = lstm(3, 2, { dropout = 0.9 })
      local x = tn.randn(4, 2, 3, { dtype = "f64" })
      local train_out = m(x)
      m:eval()
      assert.tensor_equal(m(x), train_out)
    end)
  end)

  describe("lengths", function()
    -- Each sequence alone, cut to its length, must give the batch's valid outputs and state.
    local function check_against_single(m, lengths, L)
      local B = #lengths
      local x = tn.randn(L, B, m.input_size, { dtype = "f64" })
      local D = m.bidirectional and 2 or 1
      local h0 = tn.randn(m.num_layers * D, B, m.hidden_size, { dtype = "f64" })
      local c0 = tn.randn(m.num_layers * D, B, m.hidden_size, { dtype = "f64" })
      local out, state = m(x, { h0, c0 }, { lengths = lengths })
      for b, n in ipairs(lengths) do
        local xb = x:narrow(1, 1, n):narrow(2, b, 1):contiguous()
        local ob, sb = m(xb, { h0:narrow(2, b, 1):contiguous(), c0:narrow(2, b, 1):contiguous() })
        assert.tensor_near(ob, out:narrow(1, 1, n):narrow(2, b, 1), { atol = 1e-13 })
        if n < L then
          local pad = out:narrow(1, n + 1, L - n):narrow(2, b, 1)
          assert.tensor_equal(pad:zeros_like(), pad)
        end
        assert.tensor_near(sb[1], state[1]:narrow(2, b, 1), { atol = 1e-13 })
        assert.tensor_near(sb[2], state[2]:narrow(2, b, 1), { atol = 1e-13 })
      end
    end

    it("give zero output at padded steps and the state of each sequence's last valid step", function()
      tn.manual_seed(25)
      check_against_single(lstm(3, 2), { 5, 2, 1, 4 }, 5)
    end)

    it("run the reverse direction from each sequence's own last step", function()
      tn.manual_seed(26)
      check_against_single(lstm(3, 2, { bidirectional = true, num_layers = 2 }), { 3, 5, 1 }, 5)
    end)

    it("accept a tensor of any integer dtype", function()
      tn.manual_seed(27)
      local m = lstm(2, 2)
      local x = tn.randn(3, 2, 2, { dtype = "f64" })
      local a = m(x, nil, { lengths = { 3, 1 } })
      local b = m(x, nil, { lengths = tn.tensor({ 3, 1 }, { dtype = "i32" }) })
      assert.tensor_equal(a, b)
    end)
  end)

  describe("bad input", function()
    local m = lstm(3, 4, { num_layers = 2 })
    local x = tn.zeros(5, 2, 3, { dtype = "f64" })

    it("raises naming the shape for a wrong input rank", function()
      contains(h.error_of(m, tn.zeros(5, 3, { dtype = "f64" })),
        "LSTM: input must be 3-d (L, B, input_size), got shape {5, 3}")
      local bf = lstm(3, 4, { batch_first = true })
      contains(h.error_of(bf, tn.zeros(2, 5, 3, 1, { dtype = "f64" })),
        "3-d (B, L, input_size), got shape {2, 5, 3, 1}")
      contains(h.error_of(m, { 1, 2 }), "LSTM: input must be a tensor, got table")
    end)

    it("raises naming input_size and the shape for a wrong feature size", function()
      contains(h.error_of(m, tn.zeros(5, 2, 4, { dtype = "f64" })),
        "LSTM: input has 4 features in shape {5, 2, 4}, expected input_size = 3")
    end)

    it("raises for lengths longer than the sequence", function()
      contains(h.error_of(m, x, nil, { lengths = { 6, 2 } }),
        "LSTM: lengths must be <= the sequence length 5, got 6")
      contains(h.error_of(m, x, nil, { lengths = tn.tensor({ 1, 9 }, { dtype = "i32" }) }),
        "LSTM: lengths must be <= the sequence length 5, got 9")
    end)

    it("raises for lengths <= 0", function()
      contains(h.error_of(m, x, nil, { lengths = { 3, 0 } }), "LSTM: lengths must be >= 1, got 0")
      contains(h.error_of(m, x, nil, { lengths = { -2, 3 } }), "LSTM: lengths must be >= 1, got -2")
    end)

    it("raises for lengths that are not whole numbers", function()
      contains(h.error_of(m, x, nil, { lengths = { 2.5, 3 } }),
        "LSTM: lengths must be whole numbers, got 2.5 at index 1")
      contains(h.error_of(m, x, nil, { lengths = f64({ 2, 1.5 }) }),
        "LSTM: lengths must be whole numbers, got 1.5 at index 2")
    end)

    it("raises naming the expected count for lengths of the wrong count or shape", function()
      contains(h.error_of(m, x, nil, { lengths = { 5, 5, 5 } }),
        "LSTM: lengths must have shape {2} (one per sequence), got {3}")
      contains(h.error_of(m, x, nil, { lengths = tn.tensor({ { 5, 5 } }) }), "got {1, 2}")
      contains(h.error_of(m, x, nil, { lengths = "5" }), "lengths must be a tensor or a table of numbers, got string")
    end)

    it("raises naming both shapes for h0 or c0 of the wrong shape", function()
      local good_h, good_c = tn.zeros(2, 2, 4, { dtype = "f64" }), tn.zeros(2, 2, 4, { dtype = "f64" })
      contains(h.error_of(m, x, { tn.zeros(1, 2, 4, { dtype = "f64" }), good_c }),
        "LSTM: h0 must have shape {2, 2, 4}, got {1, 2, 4}")
      contains(h.error_of(m, x, { good_h, tn.zeros(2, 3, 4, { dtype = "f64" }) }),
        "LSTM: c0 must have shape {2, 2, 4}, got {2, 3, 4}")
      contains(h.error_of(m, x, { good_h }), "LSTM: c0 must have shape {2, 2, 4}, got nil")
      contains(h.error_of(m, x, good_h), "LSTM: the state must be a table {h0, c0}")
      local p = lstm(3, 4, { proj_size = 2 })
      contains(h.error_of(p, x, { good_h:narrow(1, 1, 1), good_c:narrow(1, 1, 1) }),
        "LSTM: h0 must have shape {1, 2, 2}, got {1, 2, 4}")
    end)

    it("raises naming the dtypes for an f32 input to an f64 module or f32 states", function()
      contains(h.error_of(m, x:float()), "LSTM: input is f32 but the parameters are f64")
      contains(h.error_of(m, x, { tn.zeros(2, 2, 4), tn.zeros(2, 2, 4) }),
        "LSTM: h0 and c0 must be f64 like the input, got f32 and f32")
    end)

    it("raises at the caller's line", function()
      raises_at_line(function() local r = m(tn.zeros(5, 2, 7, { dtype = "f64" })) return r end, "LSTM:")
    end)

    it("rejects bad constructor options", function()
      contains(h.error_of(nn.LSTM, 3, 4, { proj_size = 4 }), "proj_size (4) must be smaller than hidden_size (4)")
      contains(h.error_of(nn.LSTM, 0, 4), "input_size must be a positive integer, got 0")
      contains(h.error_of(nn.LSTM, 3, 4, { dropout = 2 }), "dropout must be a number in [0, 1], got 2")
    end)
  end)
end)

describe("nn.SRU", function()
  describe("gradients (f64 finite differences over input, c0 and every parameter)", function()
    it("are right for one unidirectional layer with four matrices (input != hidden)", function()
      local m = sru(3, 2, { num_layers = 1 })
      assert.are.equal(4, m.rnn_lst[1].num_matrices)
      check_sru(m, 3, 2)
    end)

    it("are right with three matrices (input == hidden)", function()
      local m = sru(2, 2, { num_layers = 1 })
      assert.are.equal(3, m.rnn_lst[1].num_matrices)
      check_sru(m, 3, 2)
    end)

    it("are right for a bidirectional layer", function()
      check_sru(sru(3, 2, { num_layers = 1, bidirectional = true }), 3, 2)
    end)

    it("are right for two bidirectional layers", function()
      check_sru(sru(3, 2, { num_layers = 2, bidirectional = true }), 3, 2)
    end)

    it("are right with a projection", function()
      local m = sru(4, 3, { num_layers = 1, projection_size = 2 })
      assert.is_not_nil(m.rnn_lst[1].weight_proj)
      check_sru(m, 3, 2)
    end)

    it("are right with layer norm before the recurrence", function()
      local m = sru(3, 2, { num_layers = 2, layer_norm = true })
      assert.is_not_nil(m.rnn_lst[1].layer_norm)
      check_sru(m, 3, 2)
    end)

    it("are right with layer norm after the recurrence", function()
      local m = sru(3, 2, { num_layers = 1, layer_norm = true, normalize_after = true, bidirectional = true })
      assert.are.same({ 4 }, m.rnn_lst[1].layer_norm.weight:shape())
      check_sru(m, 3, 2)
    end)

    it("are right for v1 (no v terms)", function()
      local m = sru(3, 2, { num_layers = 2, v1 = true })
      assert.is_false(m.rnn_lst[1].weight_c:requires_grad())
      check_sru(m, 3, 2)
    end)

    it("are right with rescale and a highway bias, three and four matrices", function()
      local m3 = sru(2, 2, { num_layers = 1, rescale = true, highway_bias = -1 })
      assert.is_true(math.abs(m3.rnn_lst[1].scale_x:item() - math.sqrt(1 + 2 * math.exp(-1))) < 1e-12)
      check_sru(m3, 3, 2)
      check_sru(sru(3, 2, { num_layers = 1, rescale = true, highway_bias = -1 }), 3, 2)
    end)

    it("are right without the skip term", function()
      local m = sru(3, 2, { num_layers = 2, has_skip_term = false })
      assert.are.equal(3, m.rnn_lst[1].num_matrices)
      check_sru(m, 3, 2)
    end)

    it("are right with use_tanh", function()
      check_sru(sru(3, 2, { num_layers = 1, use_tanh = true, bidirectional = true }), 3, 2)
    end)

    it("are right with mask_pad, unidirectional", function()
      check_sru(sru(3, 2, { num_layers = 2 }), 4, 3, { mask_pad = pad_mask({ 4, 1, 3 }, 4) })
    end)

    it("are right with mask_pad, bidirectional", function()
      check_sru(sru(3, 2, { num_layers = 1, bidirectional = true }), 4, 3,
        { mask_pad = pad_mask({ 2, 4, 3 }, 4) })
    end)

    it("are right through the variational dropout (training, a seeded mask)", function()
      local m = sru(3, 2, { num_layers = 2, dropout = 0.5, rnn_dropout = 0.3, bidirectional = true })
      local x, c0 = h.leaf({ 3, 2, 3 }, 10), h.leaf({ 2, 2, 4 }, 11)
      check_module(m, { x, c0 }, function(x_, c0_)
        tn.manual_seed(52)
        return m(x_, c0_)
      end)
    end)

    it("are right with batch_first and without c0", function()
      check_sru(sru(3, 2, { num_layers = 1, batch_first = true }), 3, 2, nil, false)
    end)
  end)

  describe("forward", function()
    it("gives h (L, B, D*hidden) and c (layers, B, D*hidden)", function()
      local m = sru(3, 4, { num_layers = 3, bidirectional = true })
      local hh, c = m(tn.zeros(5, 2, 3, { dtype = "f64" }))
      assert.are.same({ 5, 2, 8 }, hh:shape())
      assert.are.same({ 3, 2, 8 }, c:shape())
    end)

    it("with batch_first equals the time-major module on transposed input and mask", function()
      tn.manual_seed(31)
      local a = sru(3, 2, { bidirectional = true, batch_first = true })
      local b = sru(3, 2, { bidirectional = true })
      b:load_state_dict(a:state_dict())
      local x = tn.randn(3, 4, 3, { dtype = "f64" })
      local mask = pad_mask({ 4, 2, 3 }, 4)
      local ha, ca = a(x, nil, { mask_pad = mask:t():contiguous() })
      local hb, cb = b(x:transpose(1, 2), nil, { mask_pad = mask })
      assert.tensor_near(hb:transpose(1, 2), ha, { atol = 1e-14 })
      assert.tensor_near(cb, ca, { atol = 1e-14 })
    end)
  end)

  describe("empty input", function()
    it("of zero steps gives an empty h and c = c0 (zeros without c0)", function()
      local m = sru(3, 2, { num_layers = 2, bidirectional = true })
      local c0 = tn.randn(2, 2, 4, { dtype = "f64" })
      local hh, c = m(tn.zeros(0, 2, 3, { dtype = "f64" }), c0)
      assert.are.same({ 0, 2, 4 }, hh:shape())
      assert.tensor_equal(c0, c)
      local _, cz = m(tn.zeros(0, 2, 3, { dtype = "f64" }))
      assert.tensor_equal(tn.zeros(2, 2, 4, { dtype = "f64" }), cz)
      local hb, cb = m(tn.zeros(3, 0, 3, { dtype = "f64" }))
      assert.are.same({ 3, 0, 4 }, hb:shape())
      assert.are.same({ 2, 0, 4 }, cb:shape())
    end)
  end)

  describe("dropout between layers", function()
    it("uses one mask per sequence: a dropped unit is zero at every step", function()
      tn.manual_seed(32)
      local m = sru(3, 8, { num_layers = 2, dropout = 0.5, has_skip_term = false })
      assert.are.equal(0.5, m.rnn_lst[1].dropout)
      assert.are.equal(0, m.rnn_lst[2].dropout)
      local cell = m.rnn_lst[1]
      local L, B = 6, 3
      local x = tn.randn(L, B, 3, { dtype = "f64" })
      tn.manual_seed(33)
      local hh = cell(x)
      cell:eval()
      local he = cell(x)
      cell:train()
      local zero = hh:eq(0):double():sum(1) -- (B, 8): steps where unit (b, j) is zero
      local dropped, kept = 0, 0
      for b = 1, B do
        for j = 1, 8 do
          local n = zero:get({ b, j })
          assert.is_true(n == 0 or n == L,
            string.format("unit %d of sequence %d is zero at %d of %d steps", j, b, n, L))
          if n == L then dropped = dropped + 1 else kept = kept + 1 end
          if n == 0 then
            -- kept units are the eval output scaled by 1/(1-p)
            assert.tensor_near(he:select(2, b):select(2, j) * 2, hh:select(2, b):select(2, j), { atol = 1e-13 })
          end
        end
      end
      assert.is_true(dropped > 0 and kept > 0, "dropped " .. dropped .. ", kept " .. kept)
      -- and the masks differ between sequences of the batch
      assert.is_false(zero:select(1, 1):equal(zero:select(1, 2)) and zero:select(1, 2):equal(zero:select(1, 3)))
    end)

    it("draws a new mask on each forward in training and none in eval", function()
      tn.manual_seed(34)
      local m = sru(3, 4, { num_layers = 2, dropout = 0.5 })
      local x = tn.randn(4, 2, 3, { dtype = "f64" })
      local a, b = m(x), m(x)
      assert.is_false(a:allclose(b))
      m:eval()
      local e1, e2 = m(x), m(x)
      assert.tensor_equal(e1, e2)
      assert.is_false(e1:allclose(a))
    end)

    it("applies rnn_dropout as one input mask per sequence", function()
      tn.manual_seed(35)
      local cell = nn.SRUCell(3, 2, { rnn_dropout = 0.5, dtype = "f64" })
      assert.are.equal(4, cell.num_matrices) -- no skip of the raw input
      local x = tn.randn(4, 5, 3, { dtype = "f64" })
      tn.manual_seed(36)
      local got = cell(x)
      tn.manual_seed(36)
      local mask = tn.empty({ 5, 3 }, { dtype = "f64" }):bernoulli_(0.5):div_(0.5)
      cell:eval()
      assert.tensor_near(cell(x * mask), got, { atol = 1e-13 })
      assert.is_false(cell(x):allclose(got))
    end)
  end)

  describe("mask_pad", function()
    -- Each sequence alone, cut to its length, must give the batch's valid h and final c.
    local function check_against_single(m, lengths, L)
      local B = #lengths
      local x = tn.randn(L, B, m.input_size, { dtype = "f64" })
      local c0 = tn.randn(m.num_layers, B, m.output_size, { dtype = "f64" })
      local hh, c = m(x, c0, { mask_pad = pad_mask(lengths, L) })
      for b, n in ipairs(lengths) do
        local hb, cb = m(x:narrow(1, 1, n):narrow(2, b, 1):contiguous(), c0:narrow(2, b, 1):contiguous())
        assert.tensor_near(hb, hh:narrow(1, 1, n):narrow(2, b, 1), { atol = 1e-13 })
        assert.tensor_near(cb, c:narrow(2, b, 1), { atol = 1e-13 })
        if n < L then
          local pad = hh:narrow(1, n + 1, L - n):narrow(2, b, 1)
          assert.tensor_equal(pad:zeros_like(), pad)
        end
      end
    end

    it("gives h = 0 at padded steps and carries c over them (unidirectional)", function()
      tn.manual_seed(37)
      check_against_single(sru(3, 2, { num_layers = 2 }), { 5, 2, 1, 4 }, 5)
    end)

    it("gives h = 0 at padded steps and carries c over them (bidirectional)", function()
      tn.manual_seed(38)
      check_against_single(sru(3, 2, { num_layers = 2, bidirectional = true }), { 3, 5, 1 }, 5)
    end)

    it("treats any nonzero value of a float mask as padding", function()
      tn.manual_seed(39)
      local m = sru(3, 2, { num_layers = 1 })
      local x = tn.randn(3, 2, 3, { dtype = "f64" })
      local a = m(x, nil, { mask_pad = pad_mask({ 3, 1 }, 3) })
      local b = m(x, nil, { mask_pad = pad_mask({ 3, 1 }, 3):double() * 0.5 })
      assert.tensor_equal(a, b)
    end)
  end)

  describe("bad input", function()
    local m = sru(3, 4, { num_layers = 2, bidirectional = true })
    local x = tn.zeros(5, 2, 3, { dtype = "f64" })

    it("raises naming the shape for a wrong input rank", function()
      contains(h.error_of(m, tn.zeros(5, 3, { dtype = "f64" })),
        "SRU: input must be 3-d (L, B, input_size), got shape {5, 3}")
      contains(h.error_of(m, "x"), "SRU: input must be a tensor, got string")
    end)

    it("raises naming input_size and the shape for a wrong feature size", function()
      contains(h.error_of(m, tn.zeros(5, 2, 6, { dtype = "f64" })),
        "SRU: input has 6 features in shape {5, 2, 6}, expected input_size = 3")
    end)

    it("raises naming both shapes for a mask_pad of the wrong shape", function()
      contains(h.error_of(m, x, nil, { mask_pad = tn.zeros(2, 5, { dtype = "u8" }) }),
        "SRU: mask_pad must have shape {5, 2} for input {5, 2, 3}, got {2, 5}")
      contains(h.error_of(m, x, nil, { mask_pad = tn.zeros(5, 2, 1, { dtype = "u8" }) }), "got {5, 2, 1}")
      local bf = sru(3, 4, { batch_first = true })
      contains(h.error_of(bf, tn.zeros(2, 5, 3, { dtype = "f64" }), nil, { mask_pad = tn.zeros(5, 2) }),
        "SRU: mask_pad must have shape {2, 5} for input {2, 5, 3}, got {5, 2}")
      contains(h.error_of(m, x, nil, { mask_pad = { { 0, 1 } } }), "SRU: mask_pad must be a tensor, got table")
    end)

    it("raises naming both shapes for c0 of the wrong shape", function()
      contains(h.error_of(m, x, tn.zeros(2, 2, 4, { dtype = "f64" })),
        "SRU: c0 must have shape {2, 2, 8}, got {2, 2, 4}")
      contains(h.error_of(m, x, tn.zeros(1, 2, 8, { dtype = "f64" })), "got {1, 2, 8}")
    end)

    it("raises naming the dtypes for an f32 input to an f64 module or an f32 c0", function()
      contains(h.error_of(m, x:float()), "SRU: input is f32 but the parameters are f64")
      contains(h.error_of(m, x, tn.zeros(2, 2, 8)), "SRU: c0 is f32 but the input is f64")
    end)

    it("raises at the caller's line", function()
      raises_at_line(function() local r = m(tn.zeros(5, 2, { dtype = "f64" })) return r end, "SRU:")
    end)

    it("raises from a bare SRUCell for a wrong shape or dtype, and from the kernel for c0 and mask_pad", function()
      local cell = nn.SRUCell(3, 2, { dtype = "f64" })
      contains(h.error_of(cell, tn.zeros(5, 2, 4, { dtype = "f64" })),
        "SRUCell: input has 4 features in shape {5, 2, 4}, expected input_size = 3")
      contains(h.error_of(cell, tn.zeros(5, 2, { dtype = "f64" })), "SRUCell: input must be 3-d (L, B, input_size), got shape {5, 2}")
      contains(h.error_of(cell, x:float()), "SRUCell: input is f32 but the parameters are f64")
      contains(h.error_of(cell, x, tn.zeros(3, 2, { dtype = "f64" })),
        "'c0' has shape [3, 2], expected (B, D*d) = [2, 2]")
      contains(h.error_of(cell, x, nil, tn.zeros(2, 5, { dtype = "u8" })),
        "'mask_pad' has shape [2, 5], expected (L, B) = [5, 2]")
    end)

    it("rejects bad constructor options", function()
      contains(h.error_of(nn.SRU, 3, 4, { dropout = 1 }), "dropout must be a number in [0, 1), got 1")
      contains(h.error_of(nn.SRU, 3, 0), "hidden_size must be a positive integer, got 0")
      contains(h.error_of(nn.SRU, 3, 4, { num_layers = 1.5 }), "num_layers must be a positive integer, got 1.5")
    end)
  end)
end)

describe("the recurrent layers and the thread count", function()
  -- Run fn with n OpenMP (and BLAS) threads, restoring the count after.
  local function with_threads(n, fn)
    local old = tn.get_num_threads()
    tn.set_num_threads(n)
    local ok, res = pcall(fn)
    tn.set_num_threads(old)
    assert(ok, res)
    return res
  end

  -- forward and backward with n threads; returns the outputs and every gradient
  local function run(n, m, x, extra)
    return with_threads(n, function()
      for _, p in ipairs(m:parameters()) do rawset(p, "grad", nil) end
      local xl = x:clone():requires_grad(true)
      local out, state = m(xl, nil, extra)
      tn.manual_seed(41)
      local loss = (out * tn.randn_like(out)):sum()
      loss:backward()
      local r = { out = out:detach(), gx = xl.grad }
      if tn.is_tensor(state) then r.c = state:detach() else r.h_n, r.c_n = state[1]:detach(), state[2]:detach() end
      for name, p in m:named_parameters() do r[name] = p.grad end
      return r
    end)
  end

  local function same(a, b, tol)
    local n = 0
    for k, v in pairs(a) do
      if tol then assert.tensor_near(v, b[k], tol) else assert.tensor_equal(v, b[k]) end
      n = n + 1
    end
    assert.is_true(n >= 5)
  end

  -- sizes above the kernels' parallel thresholds (SRU: L*B*D*d >= 32768; LSTM: B*H >= 4096)
  local sru_lengths = { 16, 9, 16, 3, 16, 16, 1, 16, 12, 16, 16, 16, 5, 16, 16, 16 }
  local lstm_lengths = { 4, 3, 4, 1, 4, 4, 2, 4, 4, 4, 4, 3, 4, 4, 4, 4 }

  it("do not change the f64 SRU's outputs or gradients by a bit (1 vs 2 threads)", function()
    tn.manual_seed(42)
    local m = sru(32, 64, { num_layers = 2, bidirectional = true })
    local x = tn.randn(16, 16, 32, { dtype = "f64" })
    local mask = pad_mask(sru_lengths, 16)
    same(run(1, m, x, { mask_pad = mask }), run(2, m, x, { mask_pad = mask }))
  end)

  it("do not change the f64 LSTM's outputs or gradients by a bit (1 vs 2 threads)", function()
    tn.manual_seed(43)
    local m = lstm(16, 256, { bidirectional = true })
    local x = tn.randn(4, 16, 16, { dtype = "f64" })
    same(run(1, m, x, { lengths = lstm_lengths }), run(2, m, x, { lengths = lstm_lengths }))
  end)

  it("do not change the f32 SRU recurrence by a bit, forward and backward (1 vs 2 threads)", function()
    local R = require "tern.nn.recurrence"
    tn.manual_seed(44)
    local L, B, Dd = 16, 16, 128
    local U = tn.randn(L, B, 3 * Dd):requires_grad(true)
    local x = tn.randn(L, B, Dd):requires_grad(true)
    local wc, bias = tn.randn(2 * Dd):requires_grad(true), tn.randn(2 * Dd):requires_grad(true)
    local c0 = tn.randn(B, Dd):requires_grad(true)
    local mask = pad_mask(sru_lengths, L)
    local function go(n)
      return with_threads(n, function()
        for _, t in ipairs({ U, x, wc, bias, c0 }) do rawset(t, "grad", nil) end
        local hh, c = R.sru(U, x, wc, bias, c0, nil, mask, { bidirectional = true })
        tn.manual_seed(45)
        local loss = (hh * tn.randn_like(hh)):sum() + (c * tn.randn_like(c)):sum()
        loss:backward()
        return { h = hh:detach(), c = c:detach(), gU = U.grad, gx = x.grad, gwc = wc.grad,
          gb = bias.grad, gc0 = c0.grad }
      end)
    end
    same(go(1), go(2))
  end)

  -- f32 GEMMs go to OpenBLAS, whose sgemm rounds differently with 1 and 2 threads at these
  -- sizes: the f32 modules agree to rounding, not bit for bit.
  it("change the f32 modules' outputs and gradients by rounding at most (1 vs 2 threads)", function()
    tn.manual_seed(46)
    local s = nn.SRU(32, 64, { num_layers = 2, bidirectional = true })
    local x = tn.randn(16, 16, 32)
    local mask = pad_mask(sru_lengths, 16)
    local tol = { atol = 1e-5, rtol = 1e-4 }
    same(run(1, s, x, { mask_pad = mask }), run(2, s, x, { mask_pad = mask }), tol)
    local l = nn.LSTM(16, 256, { bidirectional = true })
    local xl = tn.randn(4, 16, 16)
    same(run(1, l, xl, { lengths = lstm_lengths }), run(2, l, xl, { lengths = lstm_lengths }), tol)
  end)
end)

describe("the recurrent layers in half precision", function()
  for _, dt in ipairs({ "f16", "bf16" }) do
    it("run " .. dt .. " models with the recurrence in f32 and give " .. dt .. " outputs and gradients", function()
      for _, kind in ipairs({ "SRU", "LSTM" }) do
        tn.manual_seed(11)
        local ref = nn[kind](8, 6, { num_layers = 2, bidirectional = true })
        local half = nn[kind](8, 6, { num_layers = 2, bidirectional = true })
        half:load_state_dict(ref:state_dict())
        half:to(dt)
        local x = tn.randn(5, 3, 8)
        local y32 = ref(x)
        local y16 = half(x:to(dt))
        assert.are.equal(dt, y16:dtype())
        local tol = dt == "f16" and 2e-2 or 6e-2
        assert.tensor_near(y32, y16:to("f32"), { atol = tol, rtol = tol })
        y16:to("f32"):sum():backward()
        y32:sum():backward()
        for name, p in half:named_parameters() do
          assert.are.equal(dt, p.grad:dtype(), name)
          local g32 = nil
          for n2, p2 in ref:named_parameters() do if n2 == name then g32 = p2.grad end end
          assert.tensor_near(g32, p.grad:to("f32"), { atol = 10 * tol, rtol = 10 * tol })
        end
      end
    end)
  end
end)
