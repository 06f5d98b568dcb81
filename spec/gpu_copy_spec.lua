-- Specs of the CUDA side of copies, fills, dtype conversion, arange and the random fills
-- (cuda/copy.cu, cuda/random.cu, core/copy.c, core/random.c): every op runs on the CPU and on
-- the GPU from the same inputs, and the GPU's result, brought back with :cpu(), must hold the
-- CPU's bits (conversions, fills, arange and the generator are exact on both devices; only the
-- sign and payload of a NaN may differ after a conversion). Layouts: contiguous, transposed,
-- permuted, narrowed, selected, expanded (stride 0), 0-d and empty.
--
-- Every block is tagged #gpu: on a machine without a GPU .ci/test.sh filters them out and
-- counts them as skipped. TERN_SPEC_GPU_DEVICE=cpu runs the same comparisons with the CPU
-- standing in for the GPU, which checks the specs themselves (not the GPU) on any machine:
--   TERN_SPEC_GPU_DEVICE=cpu luajit $(command -v busted) spec/gpu_copy_spec.lua
local ffi = require "ffi"
local h = require "helpers.init"
local tn = h.tn
local C = tn.C

local DEVICE = os.getenv("TERN_SPEC_GPU_DEVICE") or "cuda"
local DEVICE_ENUM = DEVICE == "cpu" and 0 or 1

local DTYPES = { "f32", "f64", "f16", "bf16", "i32", "i64", "u8" }
local FLOATS = { "f32", "f64", "f16", "bf16" }
local DTYPE_ENUM = { f32 = 0, f64 = 1, f16 = 2, bf16 = 3, i32 = 4, i64 = 5, u8 = 6 }

-- x on the device under test (a copy, also when the CPU stands in for it)
local function dev(x) return DEVICE == "cpu" and x:clone() or x:to(DEVICE) end
local function on_dev(opts)
  local o = { device = DEVICE }
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

local same_bits = require("helpers.gpu").same_bits

-- the message of the error fn raises, without its "file:line: " prefix
local function message_of(fn)
  local ok, err = pcall(fn)
  assert.is_false(ok, "expected an error")
  return (tostring(err):gsub("^[^\n]-:%d+: ", ""))
end

-- the C message of a failing status
local function c_error(st)
  assert.are_not.equal(0, st, "expected the C call to fail")
  return ffi.string(C.tn_last_error())
end

-- values that exercise every conversion: ties of f16 / bf16 rounding, subnormals, overflow,
-- saturation of every integer type, signed zero, infinities and NaN
local SPECIAL = {
  0, -0.0, 1, -1, 0.5, -0.5, 1.5, 2.5, -2.5, 1 / 3, -2 / 3, 1e-8, -3e-7, 2 ^ -24, 2 ^ -25, 3 * 2 ^ -26,
  1 + 2 ^ -8, 1 + 3 * 2 ^ -8, 1 + 2 ^ -11, 1 + 3 * 2 ^ -11, 65504, 65519.99, 65520, -70000, 1e5,
  3.4e38, -3.5e38, 1e300, 2 ^ 31 - 1, 2 ^ 31, -2 ^ 31 - 1, 2 ^ 40 + 0.5, 2 ^ 62, -2 ^ 63, 2 ^ 64,
  127.9, 255, 255.5, 256, -1.5, 0 / 0, math.huge, -math.huge,
}
local INTS = {
  0, 1, -1, 7, 127, 128, 255, 256, -129, 65535, 2 ^ 24 + 1, 2 ^ 31 - 1, 2 ^ 31, -2 ^ 31, -2 ^ 31 - 1,
  2 ^ 40 + 3, -2 ^ 52, 2 ^ 53, 2 ^ 62, -2 ^ 63,
}

-- a CPU tensor of dtype holding the special values (1-d)
local function specials(dtype)
  local src = (dtype == "i32" or dtype == "i64" or dtype == "u8") and INTS or SPECIAL
  return tn.tensor(src, { dtype = "f64" }):to(dtype)
end

-- a CPU tensor of dtype and shape (4, 6, 5) with varied values
local function sample(dtype, seed)
  tn.manual_seed(seed or 1)
  local x = tn.randn(4, 6, 5, { dtype = "f64" }) * 300
  return x:to(dtype)
end

-- views of a (4, 6, 5) tensor: { name, view }
local function layouts(x)
  return {
    { "contiguous", x },
    { "transposed", x:transpose(1, 3) },
    { "permuted", x:permute(2, 3, 1) },
    { "narrowed", x:narrow(2, 2, 3) },
    { "selected", x:select(3, 2) },
    { "expanded", x:narrow(1, 2, 1):expand(3, 6, 5) },
    { "0-d", x:select(1, 2):select(1, 3):select(1, 4) },
    { "empty", x:narrow(1, 1, 0) },
  }
end

describe("copies between devices #gpu", function()
  it("round-trip every dtype bit for bit", function()
    for _, dt in ipairs(DTYPES) do
      local x = specials(dt)
      local g = dev(x)
      assert.are.equal(DEVICE, g:device())
      assert.are.equal(dt, g:dtype())
      same_bits(x, g:cpu(), "round trip " .. dt)
      if DEVICE == "cuda" then same_bits(x, x:cuda():to("cpu"), "cuda() " .. dt) end
      same_bits(sample(dt), dev(sample(dt)):cpu(), "sample " .. dt)
    end
  end)

  it("round-trip every layout", function()
    for _, dt in ipairs(DTYPES) do
      for _, l in ipairs(layouts(sample(dt))) do
        same_bits(l[2], dev(l[2]):cpu(), dt .. " " .. l[1])
      end
    end
  end)

  it("copy into non-contiguous destinations on either side", function()
    for _, dt in ipairs(DTYPES) do
      local x = sample(dt)
      -- cpu -> a transposed cuda view
      local gbase = tn.zeros(5, 6, 4, on_dev({ dtype = dt }))
      gbase:transpose(1, 3):copy_(x)
      same_bits(x:transpose(1, 3):contiguous(), gbase:cpu(), dt .. " into a cuda view")
      -- cuda -> a narrowed cpu view, the rest untouched
      local cbase = tn.zeros(4, 8, 5, { dtype = dt })
      cbase:narrow(2, 2, 6):copy_(dev(x))
      local expect = tn.zeros(4, 8, 5, { dtype = dt })
      expect:narrow(2, 2, 6):copy_(x)
      same_bits(expect, cbase, dt .. " into a cpu view")
    end
  end)

  it("convert, broadcast and scatter in one tn_copy call, as the CPU does", function()
    -- tn_copy itself (not the Lua layer, which prepares contiguous one-dtype copies)
    for _, sdt in ipairs(DTYPES) do
      local src = specials(sdt):view(1, -1)                 -- (1, n): broadcast over 3 rows
      local n = src:size(2)
      for _, ddt in ipairs(DTYPES) do
        local expect = tn.empty(3, n, { dtype = ddt })
        expect:copy_(src)
        -- host -> device, converted and broadcast on the device
        local g = tn.zeros(n, 3, on_dev({ dtype = ddt })):t() -- a transposed destination
        assert.are.equal(0, C.tn_copy(g._c, src._c), ffi.string(C.tn_last_error()))
        same_bits(expect, g:cpu(), sdt .. " -> " .. ddt .. " host to device", true)
        -- device -> host, converted on the device, broadcast and scattered on the host
        local back = tn.zeros(n, 3, { dtype = ddt }):t()
        assert.are.equal(0, C.tn_copy(back._c, dev(src)._c), ffi.string(C.tn_last_error()))
        same_bits(expect, back, sdt .. " -> " .. ddt .. " device to host", true)
        -- a non-contiguous host source
        local hs = specials(sdt):view(1, -1):expand(2, n):t()   -- (n, 2), strides (1, 0)
        local e2 = tn.empty(n, 2, { dtype = ddt })
        e2:copy_(hs)
        local g2 = tn.empty(n, 2, on_dev({ dtype = ddt }))
        assert.are.equal(0, C.tn_copy(g2._c, hs._c), ffi.string(C.tn_last_error()))
        same_bits(e2, g2:cpu(), sdt .. " -> " .. ddt .. " expanded host source", true)
      end
    end
  end)

  it("copy large tensors through several staging buffers", function()
    local n = 20 * 2 ^ 20 + 3 -- 80 MiB of f32: three 32 MiB chunks each way
    local x = tn.arange(n, { dtype = "f32" })
    local g = dev(x)
    same_bits(x, g:cpu(), "80 MiB round trip")
    same_bits(x:to("f16"), g:to("f16"):cpu(), "80 MiB converted on the device")
    local back = tn.empty(n, { dtype = "f64" })
    assert.are.equal(0, C.tn_copy(back._c, g._c), ffi.string(C.tn_last_error()))
    same_bits(x:to("f64"), back, "80 MiB converted on the way back")
  end)

  it("keep the values of a source freed right after a host-to-device copy", function()
    local xs = {}
    local gs = {}
    for i = 1, 8 do
      xs[i] = tn.full({ 1000 }, i, { dtype = "i32" })
      gs[i] = dev(xs[i])
      xs[i]:fill_(-1) -- the host copy may be reused at once
    end
    for i = 1, 8 do same_bits(tn.full({ 1000 }, i, { dtype = "i32" }), gs[i]:cpu(), "copy " .. i) end
  end)
end)

describe("copies on the device #gpu", function()
  it("convert every dtype pair over every layout as the CPU does", function()
    for _, sdt in ipairs(DTYPES) do
      local x = sample(sdt, 2)
      local cl, gl = layouts(x), layouts(dev(x))
      for i = 1, #cl do
        for _, ddt in ipairs(DTYPES) do
          local what = sdt .. " -> " .. ddt .. " " .. cl[i][1]
          local cv, gv = cl[i][2], gl[i][2]
          local ce = tn.empty(cv:shape(), { dtype = ddt })
          ce:copy_(cv)
          local ge = tn.empty(gv:shape(), on_dev({ dtype = ddt }))
          ge:copy_(gv)
          same_bits(ce, ge:cpu(), what, true)
          same_bits(cv:to(ddt), gv:to(ddt):cpu(), "to " .. what, true)
          same_bits(cv:contiguous(), gv:contiguous():cpu(), "contiguous " .. what)
        end
      end
    end
  end)

  it("convert the special values of every dtype pair", function()
    for _, sdt in ipairs(DTYPES) do
      local x = specials(sdt)
      for _, ddt in ipairs(DTYPES) do
        same_bits(x:to(ddt), dev(x):to(ddt):cpu(), sdt .. " -> " .. ddt, true)
      end
    end
  end)

  it("broadcast into transposed and narrowed destinations", function()
    for _, dt in ipairs({ "f32", "f16", "i64", "u8" }) do
      local row = sample("f64", 3):select(1, 1):select(1, 1):to(dt) -- (5)
      local cb, gb = tn.zeros(5, 7, { dtype = dt }), tn.zeros(5, 7, on_dev({ dtype = dt }))
      cb:t():narrow(1, 2, 4):copy_(row)
      gb:t():narrow(1, 2, 4):copy_(dev(row))
      same_bits(cb, gb:cpu(), dt .. " broadcast row")
      local cs, gs = tn.zeros(3, 4, { dtype = dt }), tn.zeros(3, 4, on_dev({ dtype = dt }))
      cs:copy_(tn.tensor(7.75, { dtype = "f64" }))
      gs:copy_(dev(tn.tensor(7.75, { dtype = "f64" })))
      same_bits(cs, gs:cpu(), dt .. " broadcast 0-d")
    end
  end)

  it("copy overlapping views as the CPU does", function()
    for _, dt in ipairs({ "f32", "f64", "i32" }) do
      local c, g = tn.arange(10, { dtype = dt }), dev(tn.arange(10, { dtype = dt }))
      c:narrow(1, 2, 8):copy_(c:narrow(1, 1, 8))
      g:narrow(1, 2, 8):copy_(g:narrow(1, 1, 8))
      same_bits(c, g:cpu(), dt .. " shift right")
      c:narrow(1, 1, 8):copy_(c:narrow(1, 3, 8))
      g:narrow(1, 1, 8):copy_(g:narrow(1, 3, 8))
      same_bits(c, g:cpu(), dt .. " shift left")
      local cm, gm = tn.arange(16, { dtype = dt }):view(4, 4), dev(tn.arange(16, { dtype = dt })):view(4, 4)
      cm:copy_(cm:t())
      gm:copy_(gm:t())
      same_bits(cm, gm:cpu(), dt .. " in-place transpose")
    end
  end)

  it("copy large converting and strided tensors", function()
    tn.manual_seed(4)
    local x = tn.randn(1025, 2049, { dtype = "f32" }) -- odd sizes: unaligned tails
    local g = dev(x)
    for _, dt in ipairs(DTYPES) do
      same_bits(x:to(dt), g:to(dt):cpu(), "f32 -> " .. dt, true)
      same_bits(x:narrow(2, 2, 2047):to(dt), g:narrow(2, 2, 2047):to(dt):cpu(), "narrowed f32 -> " .. dt, true)
    end
    same_bits(x:t():contiguous(), g:t():contiguous():cpu(), "transpose")
  end)
end)

describe("fill and arange on the device #gpu", function()
  local VALUES = { 0, -0.0, 1, -1, 0.1, -3.7, 2.5, 255.9, 300, -1e10, 1e10, 65520, 1e-9, 0 / 0, math.huge, -math.huge }

  it("fill every dtype with every kind of value", function()
    for _, dt in ipairs(DTYPES) do
      for _, v in ipairs(VALUES) do
        local what = dt .. " " .. tostring(v)
        same_bits(tn.full({ 3, 5 }, v, { dtype = dt }), tn.full({ 3, 5 }, v, on_dev({ dtype = dt })):cpu(), what)
        local cb, gb = tn.zeros(5, 6, { dtype = dt }), tn.zeros(5, 6, on_dev({ dtype = dt }))
        cb:t():narrow(1, 2, 3):fill_(v)
        gb:t():narrow(1, 2, 3):fill_(v)
        same_bits(cb, gb:cpu(), "strided " .. what)
      end
    end
  end)

  it("fill large, unaligned and empty tensors", function()
    for _, dt in ipairs(DTYPES) do
      for _, start in ipairs({ 1, 2, 4 }) do -- aligned and unaligned first elements
        local cb, gb = tn.zeros(100003, { dtype = dt }), tn.zeros(100003, on_dev({ dtype = dt }))
        cb:narrow(1, start, 99990):fill_(-2.5)
        gb:narrow(1, start, 99990):fill_(-2.5)
        same_bits(cb, gb:cpu(), dt .. " from element " .. start)
      end
      same_bits(tn.ones(0, 3, { dtype = dt }), tn.ones(0, 3, on_dev({ dtype = dt })):cpu(), dt .. " empty")
      same_bits(tn.full({}, 3, { dtype = dt }), tn.full({}, 3, on_dev({ dtype = dt })):cpu(), dt .. " 0-d")
    end
  end)

  -- tn_arange through the C API with device = the GPU, brought back with tn_copy
  local function c_arange(device, start, stop, step, dt)
    local OUT = ffi.new("tn_tensor *[1]")
    local st = C.tn_arange(OUT, start, stop, step, DTYPE_ENUM[dt], device)
    if st ~= 0 then return nil, ffi.string(C.tn_last_error()) end
    local host = tn.empty(tonumber(OUT[0].shape[0]), { dtype = dt })
    st = C.tn_copy(host._c, OUT[0])
    C.tn_tensor_free(OUT[0])
    assert.are.equal(0, st, ffi.string(C.tn_last_error()))
    return host
  end

  it("arange every dtype as the CPU does", function()
    local cases = {
      { 0, 10, 1 }, { -3, 4.5, 0.7 }, { 1, -2, -0.1 }, { 0, 1, 1 / 3 }, { 0, 1000, 7 }, { 0.5, 20, 1.5 },
      { -1e6, 1e6, 12345.678 }, { 2 ^ 53 - 10, 2 ^ 53, 1 }, { 5, 5, 1 }, { 0, 3e6 + 1, 1 },
    }
    for _, c in ipairs(cases) do
      for _, dt in ipairs(DTYPES) do
        local what = string.format("arange(%.17g, %.17g, %.17g) %s", c[1], c[2], c[3], dt)
        local expect = assert(c_arange(0, c[1], c[2], c[3], dt))
        same_bits(expect, assert(c_arange(DEVICE_ENUM, c[1], c[2], c[3], dt)), what)
        same_bits(expect, tn.arange(c[1], c[2], c[3], on_dev({ dtype = dt })):cpu(), "tn." .. what)
      end
    end
  end)

  it("raise the CPU's errors", function()
    local _, e1 = c_arange(0, 0, 1, -1, "f32")
    local _, e2 = c_arange(DEVICE_ENUM, 0, 1, -1, "f32")
    assert.are.equal(e1, e2)
    local _, e3 = c_arange(0, 0, 1, 0, "f32")
    local _, e4 = c_arange(DEVICE_ENUM, 0, 1, 0, "f32")
    assert.are.equal(e3, e4)
    local OUT = ffi.new("tn_tensor *[1]")
    local cpu_msg = c_error(C.tn_to_dtype(OUT, tn.zeros(2)._c, 9))
    assert.are.equal(cpu_msg, c_error(C.tn_to_dtype(OUT, dev(tn.zeros(2))._c, 9)))
    assert.are.equal(message_of(function() tn.zeros(3):copy_(tn.zeros(4)) end),
      message_of(function() tn.zeros(3, on_dev()):copy_(tn.zeros(4, on_dev())) end))
    local g3, c4 = tn.zeros(3, on_dev()), tn.zeros(4)
    assert.are.equal("copy: src [4] (f32) does not broadcast to dst [3] (f32)", c_error(C.tn_copy(g3._c, c4._c)))
    assert.are.equal("copy: src [3] (f32) does not broadcast to dst [4] (f32)", c_error(C.tn_copy(c4._c, g3._c)))
  end)
end)

describe("random numbers on the device #gpu", function()
  -- each case fills a fresh tensor t in place
  local FLOAT_CASES = {
    { "uniform_(0, 1)", function(t) return t:uniform_(0, 1) end },
    { "uniform_(-3, 5)", function(t) return t:uniform_(-3, 5) end },
    { "uniform_(0.999, 1)", function(t) return t:uniform_(0.999, 1) end }, -- rounds up to high: stepped down
    { "uniform_(2, 2)", function(t) return t:uniform_(2, 2) end },
    { "normal_(0, 1)", function(t) return t:normal_(0, 1) end },
    { "normal_(3, 0.25)", function(t) return t:normal_(3, 0.25) end },
    { "normal_(1, 0)", function(t) return t:normal_(1, 0) end },
  }
  local ANY_CASES = {
    { "bernoulli_(0.3)", function(t) return t:bernoulli_(0.3) end },
    { "bernoulli_(0)", function(t) return t:bernoulli_(0) end },
    { "bernoulli_(1)", function(t) return t:bernoulli_(1) end },
  }

  -- fill(out) on the CPU and on the GPU from the same generator state: same bits, same
  -- offset afterwards
  local function compare(what, make, fill)
    tn.set_rng_state({ seed = 20240, offset = 77 })
    local c = make("cpu")
    fill(c)
    local cst = tn.rng_state()
    tn.set_rng_state({ seed = 20240, offset = 77 })
    local g = make(DEVICE)
    fill(g)
    local gst = tn.rng_state()
    assert.is_true(cst.offset == gst.offset, what .. ": the generator advanced differently")
    same_bits(c, g:cpu(), what)
  end

  it("draw the CPU's numbers in every float dtype", function()
    for _, dt in ipairs(FLOATS) do
      for _, cs in ipairs(FLOAT_CASES) do
        for _, shape in ipairs({ { 257, 3 }, { 65541 } }) do
          compare(cs[1] .. " " .. dt, function(d) return tn.empty(shape, { dtype = dt, device = d }) end, cs[2])
        end
      end
    end
  end)

  it("draw the CPU's numbers in every dtype for bernoulli and randint", function()
    for _, dt in ipairs(DTYPES) do
      for _, cs in ipairs(ANY_CASES) do
        compare(cs[1] .. " " .. dt, function(d) return tn.empty({ 300, 7 }, { dtype = dt, device = d }) end, cs[2])
      end
      local lo, hi = -3, 100
      if dt == "u8" then lo, hi = 0, 256 end
      compare("randint " .. dt, function(d) return tn.randint(lo, hi, { 300, 7 }, { dtype = dt, device = d }) end,
        function() end)
    end
    compare("randint i64 full range", function(d)
      local OUT = tn.empty({ 1000 }, { dtype = "i64", device = d })
      assert.are.equal(0, C.tn_randint(OUT._c, -2 ^ 62, 2 ^ 62))
      return OUT
    end, function() end)
  end)

  it("draw the same numbers through tn.rand, tn.randn and the like-constructors", function()
    for _, dt in ipairs(FLOATS) do
      compare("rand " .. dt, function(d) return tn.rand(33, 5, { dtype = dt, device = d }) end, function() end)
      compare("randn " .. dt, function(d) return tn.randn(33, 5, { dtype = dt, device = d }) end, function() end)
    end
    compare("randn_like", function(d) return tn.randn_like(tn.zeros(9, 4, { device = d })) end, function() end)
  end)

  it("draw the same numbers in large tensors (f64 normals included)", function()
    for _, dt in ipairs({ "f64", "f32", "bf16" }) do
      compare("normal_ 3M " .. dt, function(d) return tn.empty({ 3 * 2 ^ 20 + 1 }, { dtype = dt, device = d }) end,
        function(t) t:normal_(0, 1) end)
      compare("uniform_ 3M " .. dt, function(d) return tn.empty({ 3 * 2 ^ 20 + 1 }, { dtype = dt, device = d }) end,
        function(t) t:uniform_(-1, 1) end)
    end
  end)

  it("fill strided, narrowed and expanded outputs in logical order", function()
    local views = {
      { "transposed", function(b) return b:t() end, { 6, 5 } },
      { "narrowed", function(b) return b:narrow(2, 2, 3) end, { 6, 5 } },
      { "permuted 3-d", function(b) return b:permute(3, 1, 2) end, { 3, 4, 5 } },
      { "expanded", function(b) return b:narrow(1, 1, 1):expand(4, 5) end, { 6, 5 } },
      { "expanded inner", function(b) return b:narrow(2, 1, 1):expand(6, 5) end, { 6, 5 } },
      { "0-d", function(b) return b:select(1, 2):select(1, 3) end, { 6, 5 } },
      { "empty", function(b) return b:narrow(1, 1, 0) end, { 6, 5 } },
    }
    for _, v in ipairs(views) do
      for _, cs in ipairs({ FLOAT_CASES[2], FLOAT_CASES[5], ANY_CASES[1] }) do
        -- compare the whole base: the draws landed at the same addresses
        compare(cs[1] .. " " .. v[1], function(d) return tn.zeros(v[3], { dtype = "f64", device = d }) end,
          function(base) cs[2](v[2](base)) end)
      end
    end
  end)

  it("continue one stream across devices", function()
    tn.manual_seed(99)
    local whole = tn.rand(50, { dtype = "f64" })
    tn.manual_seed(99)
    local a = tn.rand(20, { dtype = "f64" })
    local b = tn.rand(30, { dtype = "f64", device = DEVICE })
    same_bits(whole:narrow(1, 1, 20), a, "first part on the cpu")
    same_bits(whole:narrow(1, 21, 30), b:cpu(), "second part on the device")
  end)

  it("raise the CPU's errors", function()
    local function both(fn)
      local mc = message_of(function() fn("cpu") end)
      local mg = message_of(function() fn(DEVICE) end)
      assert.are.equal(mc, mg)
    end
    both(function(d) tn.empty(3, { dtype = "i32", device = d }):uniform_(0, 1) end)
    both(function(d) tn.empty(3, { dtype = "u8", device = d }):normal_(0, 1) end)
    both(function(d) tn.empty(3, { device = d }):uniform_(2, 1) end)
    both(function(d) tn.empty(3, { device = d }):normal_(0, -1) end)
    both(function(d) tn.empty(3, { device = d }):bernoulli_(1.5) end)
    both(function(d) tn.randint(-1, 5, { 3 }, { dtype = "u8", device = d }) end)
    both(function(d) tn.randint(3, 3, { 3 }, { device = d }) end)
    -- a failed call does not advance the generator
    local before = tn.rng_state()
    pcall(function() tn.empty(3, { dtype = "i64", device = DEVICE }):uniform_(0, 1) end)
    assert.is_true(before.offset == tn.rng_state().offset)
  end)
end)
