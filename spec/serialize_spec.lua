-- Specs of tern.serialize: safetensors files written and read by tern, files written by the
-- Python safetensors package (spec/fixtures/python_written.safetensors, make_fixtures.py),
-- atomic writes and clear errors for bad files.
local h = require "helpers.init"
local tn = h.tn

local write_file = h.write_file

local read_file = h.read_file

local function u64le(n)
  local b = {}
  for i = 1, 8 do b[i] = string.char(n % 256); n = math.floor(n / 256) end
  return table.concat(b)
end

-- a safetensors file from a header string and a data string
local function st_bytes(header, data)
  return u64le(#header) .. header .. (data or "")
end

local function dir_entries(dir)
  local p = io.popen("ls -a " .. dir)
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  return names
end

describe("tern.serialize", function()
  local paths = {}
  local function tmp()
    local p = h.tmpname(".safetensors")
    paths[#paths + 1] = p
    return p
  end
  teardown(function()
    for _, p in ipairs(paths) do os.remove(p) end
  end)

  describe("tn.save and tn.load", function()
    it("round-trip every dtype with its values and shape", function()
      local p = tmp()
      local src = {
        f32 = tn.tensor({ { 1.5, -2.25 }, { 1 / 3, -0.0 } }),
        f64 = tn.tensor({ math.pi, 1e-300, -1e300 }, { dtype = "f64" }),
        f16 = tn.tensor({ 65504, 2 ^ -24, -0.5 }, { dtype = "f16" }),
        bf16 = tn.tensor({ 1 + 2 ^ -7, -3e38 }, { dtype = "bf16" }),
        i32 = tn.tensor({ -2147483648, 2147483647 }, { dtype = "i32" }),
        i64 = tn.tensor({ { -(2 ^ 53) }, { 2 ^ 53 } }, { dtype = "i64" }),
        u8 = tn.tensor({ 0, 128, 255 }, { dtype = "u8" }),
      }
      tn.save(p, src)
      local got = tn.load(p)
      local n = 0
      for name, t in pairs(src) do
        n = n + 1
        assert.is_not_nil(got[name], name)
        assert.tensor_equal(t, got[name])
      end
      local m = 0
      for _ in pairs(got) do m = m + 1 end
      assert.are.equal(n, m)
    end)

    it("round-trip NaN, infinities and signed zero bit for bit", function()
      local p = tmp()
      local ffi = require "ffi"
      local t = tn.tensor({ 0 / 0, math.huge, -math.huge, -0.0 }, { dtype = "f64" })
      tn.save(p, { t = t })
      local r = tn.load(p).t
      local a, b = ffi.cast("uint64_t *", t._c.data), ffi.cast("uint64_t *", r._c.data)
      for i = 0, 3 do assert.are.equal(a[i], b[i]) end
    end)

    it("round-trip metadata", function()
      local p = tmp()
      tn.save(p, { x = tn.zeros(1) }, { format = "pt", step = 12, text = 'a "quoted"\nline \195\169' })
      local _, meta = tn.load(p)
      assert.are.same({ format = "pt", step = "12", text = 'a "quoted"\nline \195\169' }, meta)
    end)

    it("returns nil metadata when the file has none", function()
      local p = tmp()
      tn.save(p, { x = tn.zeros(1) })
      local t, meta = tn.load(p)
      assert.is_nil(meta)
      assert.are.same({ 0 }, t.x:totable())
    end)

    it("round-trip 0-d and empty tensors and names with punctuation", function()
      local p = tmp()
      tn.save(p, { s = tn.tensor(7, { dtype = "i64" }), e = tn.zeros(0, 4), ["a.b/c:d"] = tn.ones(2) })
      local t = tn.load(p)
      assert.are.same({}, t.s:shape())
      assert.are.equal(7, t.s:item())
      assert.are.same({ 0, 4 }, t.e:shape())
      assert.are.same({ 1, 1 }, t["a.b/c:d"]:totable())
    end)

    it("write non-contiguous tensors as their row-major values", function()
      local p = tmp()
      local m = tn.arange(12):view(3, 4)
      tn.save(p, { t = m:t(), n = m:narrow(2, 2, 2), e = tn.tensor({ { 1 }, { 2 } }):expand(2, 3) })
      local t = tn.load(p)
      assert.are.same(m:t():totable(), t.t:totable())
      assert.are.same({ { 1, 2 }, { 5, 6 }, { 9, 10 } }, t.n:totable())
      assert.are.same({ { 1, 1, 1 }, { 2, 2, 2 } }, t.e:totable())
      assert.is_true(t.t:is_contiguous())
    end)

    it("write a header padded to 8 bytes with sorted names and the data after it", function()
      local p = tmp()
      tn.save(p, { b = tn.tensor({ 1 }, { dtype = "u8" }), a = tn.tensor({ 2, 3 }, { dtype = "u8" }) }, { k = "v" })
      local s = read_file(p)
      local n = 0
      for i = 8, 1, -1 do n = n * 256 + s:byte(i) end
      assert.are.equal(0, n % 8)
      local header = s:sub(9, 8 + n)
      assert.are.equal('{"__metadata__":{"k":"v"},'
        .. '"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},'
        .. '"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}', (header:gsub(" +$", "")))
      assert.are.equal("\2\3\1", s:sub(9 + n))
    end)

    it("load tensors that are contiguous, writable and independent of the file", function()
      local p = tmp()
      tn.save(p, { x = tn.zeros(3) })
      local x = tn.load(p).x
      x[1] = 5
      assert.are.same({ 5, 0, 0 }, x:totable())
      assert.are.same({ 0, 0, 0 }, tn.load(p).x:totable())
    end)

    it("overwrite an existing file", function()
      local p = tmp()
      tn.save(p, { x = tn.zeros(100) })
      tn.save(p, { y = tn.ones(1) })
      local t = tn.load(p)
      assert.is_nil(t.x)
      assert.are.same({ 1 }, t.y:totable())
    end)
  end)

  describe("atomic writes", function()
    it("leave no temporary file beside the target", function()
      local dir = h.tmpname("-dir")
      os.execute("mkdir -p " .. dir)
      tn.save(dir .. "/m.safetensors", { x = tn.randn(1000) })
      tn.save(dir .. "/m.safetensors", { x = tn.randn(10) })
      local names = dir_entries(dir)
      table.sort(names)
      assert.are.same({ ".", "..", "m.safetensors" }, names)
      os.remove(dir .. "/m.safetensors")
      os.remove(dir)
    end)

    it("raise on an unwritable path and leave the old file intact", function()
      local p = tmp()
      tn.save(p, { x = tn.ones(2) })
      assert.error_matches(function() tn.save("/nonexistent-dir/x.safetensors", { x = tn.ones(1) }) end,
        "nonexistent%-dir")
      assert.are.same({ 1, 1 }, tn.load(p).x:totable())
    end)
  end)

  describe("files written by Python", function()
    local py
    setup(function() py = { tn.load(h.fixtures .. "/python_written.safetensors") } end)

    it("are read with every dtype and value", function()
      local t = py[1]
      assert.tensor_equal(tn.tensor({ { 1.5, -2.25, 3 }, { 0, 1e-3, -7 } }), t.f32)
      assert.tensor_equal(tn.tensor({ math.pi, -math.exp(1), 1e-300, 1e300 }, { dtype = "f64" }), t.f64)
      assert.tensor_equal(tn.tensor({ { 0.5, -1 }, { 65504, 2 ^ -24 } }, { dtype = "f16" }), t.f16)
      assert.tensor_equal(tn.tensor({ 1, -3e38, 0.0078125, 1 + 2 ^ -7 }, { dtype = "bf16" }), t.bf16)
      assert.tensor_equal(tn.tensor({ { -2147483648, 2147483647, 0 }, { 1, -1, 42 } }, { dtype = "i32" }), t.i32)
      assert.tensor_equal(tn.tensor({ -(2 ^ 53), 2 ^ 53, -1, 7 }, { dtype = "i64" }), t.i64)
      assert.tensor_equal(tn.tensor({ 0, 1, 128, 255 }, { dtype = "u8" }), t.u8)
    end)

    it("read BOOL as u8", function()
      assert.tensor_equal(tn.tensor({ 1, 0, 1 }, { dtype = "u8" }), py[1].bool)
    end)

    it("read 0-d, empty and punctuated names", function()
      local t = py[1]
      assert.are.same({}, t.scalar:shape())
      assert.are.equal(2.5, t.scalar:item())
      assert.are.same({ 0, 3 }, t.empty:shape())
      assert.are.same(tn.arange(24, { dtype = "i64" }):view(2, 3, 4):totable(), t["nested.name/with:chars"]:totable())
    end)

    it("read metadata with escapes and UTF-8", function()
      assert.are.same({ format = "pt", producer = "make_fixtures.py", note = 'quote " and \195\169' }, py[2])
    end)

    it("are rewritten by tern with the same content", function()
      local p = tmp()
      tn.save(p, py[1], py[2])
      local t, meta = tn.load(p)
      assert.are.same(py[2], meta)
      for name, v in pairs(py[1]) do assert.tensor_equal(v, t[name]) end
    end)
  end)

  describe("bad files", function()
    it("a missing file raises naming the path", function()
      assert.error_matches(function() tn.load("/nonexistent/none.safetensors") end,
        "load: cannot open /nonexistent/none.safetensors")
    end)

    it("a file shorter than 8 bytes raises", function()
      local p = tmp()
      write_file(p, "abc")
      assert.error_matches(function() tn.load(p) end, "file of 3 bytes is too short for a safetensors header")
    end)

    it("a header length past the end raises", function()
      local p = tmp()
      write_file(p, u64le(1000) .. "{}")
      assert.error_matches(function() tn.load(p) end, "header length 1000 does not fit in a file of 10 bytes")
    end)

    it("malformed JSON raises", function()
      local p = tmp()
      write_file(p, st_bytes('{"x": {"dtype": "F32",'))
      assert.error_matches(function() tn.load(p) end, "malformed safetensors header")
    end)

    it("an unsupported dtype raises naming it", function()
      local p = tmp()
      write_file(p, st_bytes('{"x":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}', string.rep("\0", 8)))
      assert.error_matches(function() tn.load(p) end, "tensor 'x' has dtype C64, which tern does not support")
    end)

    it("data_offsets that disagree with the shape raise", function()
      local p = tmp()
      write_file(p, st_bytes('{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', string.rep("\0", 8)))
      assert.error_matches(function() tn.load(p) end, "tensor 'x' of shape {2} f32 needs 8 bytes, data_offsets give %[0, 4%]")
    end)

    it("data past the end of the file raises", function()
      local p = tmp()
      write_file(p, st_bytes('{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', string.rep("\0", 8)))
      assert.has_error(function() tn.load(p) end)
    end)

    it("a missing shape raises", function()
      local p = tmp()
      write_file(p, st_bytes('{"x":{"dtype":"F32","data_offsets":[0,4]}}', string.rep("\0", 4)))
      assert.error_matches(function() tn.load(p) end, "tensor 'x' lacks shape or data_offsets")
    end)

    it("a header that is not an object raises", function()
      local p = tmp()
      write_file(p, st_bytes('[1, 2]'))
      assert.error_matches(function() tn.load(p) end, "header is not a JSON object")
    end)
  end)

  describe("bad arguments to save", function()
    it("raise for non-tensors, reserved names and bad metadata", function()
      local p = tmp()
      assert.error_matches(function() tn.save(p, { x = 3 }) end, "save: 'x' is a number, not a tensor")
      assert.error_matches(function() tn.save(p, { __metadata__ = tn.ones(1) }) end, "'__metadata__' is reserved")
      assert.error_matches(function() tn.save(p, { x = tn.ones(1) }, { k = {} }) end,
        "metadata entries must map strings to strings")
      assert.error_matches(function() tn.save(nil, {}) end, "save: path must be a string")
      assert.error_matches(function() tn.save(p, { tn.ones(1) }) end, "save: tensor names must be strings")
    end)
  end)
end)
