-- Specs of tern.checkpoint: one safetensors file per checkpoint (component state, RNG, step,
-- epoch, user fields), exact round trips of the nested state, atomic saves that never harm
-- existing files, clear errors for truncated / corrupt / foreign / mismatched files, the
-- Manager's keep-last and keep-best pruning, and exact resume in a fresh process
-- (spec/helpers/resume_child.lua, sharing the run of spec/helpers/resume_train.lua).
local h = require "helpers.init"
local tn = h.tn
local ffi = require "ffi"
local bit = require "bit"
local ck = tn.checkpoint
local R = require "helpers.resume_train"

local nn = tn.nn

-- files -----------------------------------------------------------------------------------------

local read_file = h.read_file

local write_file = h.write_file

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- Sorted names in dir (no . and ..).
local function ls(dir)
  local p = assert(io.popen("ls -A '" .. dir .. "'"))
  local names = {}
  for line in p:lines() do names[#names + 1] = line end
  p:close()
  table.sort(names)
  return names
end

-- name -> bytes of every file in dir
local function snapshot(dir)
  local s = {}
  for _, n in ipairs(ls(dir)) do s[n] = read_file(dir .. "/" .. n) end
  return s
end

local function pid()
  local f = assert(io.open("/proc/self/stat"))
  local p = f:read("*n")
  f:close()
  return p
end

local dirs = {}
local function tmpdir()
  local d = h.tmpname("-ckpt")
  assert(os.execute("mkdir -p '" .. d .. "'") == 0)
  dirs[#dirs + 1] = d
  return d
end

-- tensors ---------------------------------------------------------------------------------------

local function bytes_of(t)
  t = t:detach():contiguous()
  return ffi.string(t._c.data, t:numel() * tonumber(tn.C.tn_dtype_size(t._c.dtype)))
end

-- Same nested shape, tensors with equal dtype, shape and bytes, numbers equal (NaN = NaN,
-- -0 ~= 0), 64-bit cdata equal. Returns nil or the first difference as a path and message.
local function diff(a, b, path)
  path = path or "$"
  if tn.is_tensor(a) or tn.is_tensor(b) then
    if not (tn.is_tensor(a) and tn.is_tensor(b)) then return path .. ": tensor vs " .. type(b) end
    if a:dtype() ~= b:dtype() or a:shape_string() ~= b:shape_string() then
      return string.format("%s: %s %s vs %s %s", path, a:dtype(), a:shape_string(), b:dtype(), b:shape_string())
    end
    if bytes_of(a) ~= bytes_of(b) then return path .. ": tensor bytes differ" end
    return nil
  end
  if type(a) ~= type(b) then return string.format("%s: %s vs %s", path, type(a), type(b)) end
  if type(a) == "number" then
    if a ~= a and b ~= b then return nil end
    if a ~= b or 1 / a ~= 1 / b then return string.format("%s: %.17g vs %.17g", path, a, b) end
    return nil
  end
  if type(a) == "cdata" then
    if tostring(a) ~= tostring(b) then return string.format("%s: %s vs %s", path, tostring(a), tostring(b)) end
    return nil
  end
  if type(a) ~= "table" then
    if a ~= b then return string.format("%s: %s vs %s", path, tostring(a), tostring(b)) end
    return nil
  end
  for k, v in pairs(a) do
    local d = diff(v, b[k], path .. "." .. tostring(k) .. "(" .. type(k) .. ")")
    if d then return d end
  end
  for k in pairs(b) do
    if a[k] == nil then return path .. "." .. tostring(k) .. ": only in the second" end
  end
  return nil
end

local function assert_same_state(a, b)
  local d = diff(a, b)
  assert(d == nil, "states differ at " .. tostring(d))
end

-- An object whose state_dict is sd.
local function holder(sd)
  return { state_dict = function() return sd end, load_state_dict = function(self, s) self.loaded = s end }
end

local function small_model()
  tn.manual_seed(3)
  return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
end

local function contains(s, part)
  assert.truthy(tostring(s):find(part, 1, true), "'" .. tostring(s) .. "' does not contain '" .. part .. "'")
end

describe("tern.checkpoint", function()
  teardown(function()
    for _, d in ipairs(dirs) do os.execute("rm -rf '" .. d .. "'") end
  end)

  describe("tn.rng_state", function()
    it("returns the generator state and set_rng_state puts it back", function()
      tn.manual_seed(11)
      tn.randn(7)
      local st = tn.rng_state()
      assert.are.equal("11ULL", tostring(st.seed))
      assert.are.equal("7ULL", tostring(st.offset))
      local a = tn.randn(5)
      tn.randn(3)
      tn.set_rng_state(st)
      assert.tensor_equal(a, tn.randn(5))
      tn.set_rng_state { seed = 2 ^ 63 + 2 ^ 11, offset = 5 }
      assert.are.equal("9223372036854777856ULL", tostring(tn.rng_state().seed))
    end)

    it("rejects states that are not non-negative integers", function()
      contains(h.error_of(tn.set_rng_state, 5), "expected a table {seed =, offset =}")
      contains(h.error_of(tn.set_rng_state, { seed = -1, offset = 0 }), "state.seed must be a non-negative integer")
      contains(h.error_of(tn.set_rng_state, { seed = 1, offset = 0.5 }), "state.offset must be")
      contains(h.error_of(tn.set_rng_state, { seed = 1 }), "state.offset must be")
    end)
  end)

  describe("save and load", function()
    it("round-trip every component's nested state with exact tensors, numbers and key types", function()
      local d = tmpdir()
      local model = small_model()
      local nasty = {
        state = { [3] = { exp_avg = tn.randn(4), step = 5 }, [10] = { exp_avg = tn.randn(2, 2), step = 6 } },
        groups = { { lr = 1e-3, betas = { 0.9, 0.999 }, eps = 1e-8, nesterov = false, name = "enc" } },
        numbers = { 0.1, 1 / 3, -0.0, 0, 2 ^ 60, -(2 ^ 62), 2 ^ 53 + 2, 1.7976931348623157e308,
          4.9406564584124654e-324, -2.2250738585072014e-308, math.pi, 1e21, 123456789012345680000 },
        specials = { inf = math.huge, ninf = -math.huge, nan = 0 / 0 },
        cdata = { u = 18446744073709551615ULL, i = -9223372036854775807LL, z = 0ULL },
        mixed = { "a", [3] = "c", b = true, [1.5] = "half", [false] = 0 },
        dollars = { ["$tensor"] = "not a tensor", ["$num"] = "nan" },
        text = { quote = 'a "b" \\ c\n\t\0 d', utf8 = "caf\195\169 \226\130\172", empty = "" },
        empty = {},
        list_of_tensors = { tn.ones(2, { dtype = "f64" }), tn.zeros(0, 3), tn.tensor(2.5) },
      }
      local extra = { note = "hi", table = { 1, 2, { x = tn.arange(3, { dtype = "i64" }) } } }
      local p = ck.save(d .. "/a.safetensors", { step = 12, epoch = 3, model = model, optimizer = holder(nasty),
        metrics = { wer = 0.25, loss = 1 / 3 }, extra = extra })
      assert.are.equal(d .. "/a.safetensors", p)
      local r = ck.load(p)
      assert.are.equal(12, r.step)
      assert.are.equal(3, r.epoch)
      assert.are.equal(p, r.path)
      assert.are.equal(1, r.format_version)
      assert_same_state({ wer = 0.25, loss = 1 / 3 }, r.metrics)
      assert_same_state(extra, r.extra)
      assert_same_state(model:state_dict(), r.state.model)
      assert_same_state(nasty, r.state.optimizer)
      assert.are.same({ "model", "optimizer" }, (function()
        local ks = {}
        for k in pairs(r.state) do ks[#ks + 1] = k end
        table.sort(ks)
        return ks
      end)())
    end)

    it("round-trip random doubles of every exponent bit for bit", function()
      local d = tmpdir()
      local u = ffi.new("union { uint64_t u; double d; }")
      local xs = {}
      local seed = 12345
      for i = 1, 2000 do
        -- a 64-bit LCG over all bit patterns (every exponent, subnormals, both signs)
        seed = (seed * 6364136223846793005ULL + 1442695040888963407ULL)
        u.u = seed
        local x = u.d
        -- NaN bit patterns are not all valid Lua numbers (NaN boxing): use the canonical NaN
        if bit.band(tonumber(bit.rshift(seed, 52)), 0x7ff) == 0x7ff then x = i % 2 == 0 and 0 / 0 or -math.huge end
        xs[i] = x
      end
      ck.save(d .. "/n.safetensors", { extra = { xs = xs } })
      local back = ck.load(d .. "/n.safetensors").extra.xs
      assert.are.equal(#xs, #back)
      for i = 1, #xs do
        local a, b = ffi.new("double[1]", xs[i]), ffi.new("double[1]", back[i])
        if xs[i] == xs[i] then -- NaN payloads are not kept
          assert(ffi.string(a, 8) == ffi.string(b, 8),
            string.format("element %d: %.17g read back as %.17g", i, xs[i], back[i]))
        else
          assert(back[i] ~= back[i], "NaN read back as " .. tostring(back[i]))
        end
      end
    end)

    it("store tensors under dotted names that any safetensors reader sees", function()
      local d = tmpdir()
      local p = ck.save(d .. "/b.safetensors", { step = 1, model = small_model(),
        optimizer = holder({ state = { [3] = { exp_avg = tn.ones(2) } } }), extra = { w = tn.ones(1) } })
      local tensors, meta = tn.load(p)
      local names = {}
      for k in pairs(tensors) do names[#names + 1] = k end
      table.sort(names)
      assert.are.same({ "extra.w", "model.0.bias", "model.0.weight", "model.2.bias", "model.2.weight",
        "optimizer.state.3.exp_avg" }, names)
      assert.are.equal("tern.checkpoint", meta.format)
      assert.are.equal("1", meta.format_version)
      contains(meta.tern, '"step":1')
    end)

    it("give colliding names distinct tensors", function()
      local d = tmpdir()
      local a, b = tn.ones(1), tn.zeros(1)
      local p = ck.save(d .. "/c.safetensors", { x = holder({ [3] = a, ["3"] = b }) })
      local r = ck.load(p).state.x
      assert.tensor_equal(a, r[3])
      assert.tensor_equal(b, r["3"])
    end)

    it("copy views, non-contiguous and every dtype of tensor", function()
      local d = tmpdir()
      local base = tn.arange(12, { dtype = "f64" }):view(3, 4)
      local st = {
        t = base:transpose(1, 2), n = base:narrow(2, 2, 2),
        f16 = tn.tensor({ 1.5, -65504 }, { dtype = "f16" }), bf16 = tn.tensor({ 3 }, { dtype = "bf16" }),
        i32 = tn.tensor({ -7 }, { dtype = "i32" }), u8 = tn.tensor({ 255 }, { dtype = "u8" }),
      }
      local r = ck.load(ck.save(d .. "/v.safetensors", { s = holder(st) })).state.s
      assert_same_state(st, r)
      assert.is_true(r.t:is_contiguous())
    end)

    it("save the RNG state, and restore puts it back", function()
      local d = tmpdir()
      local m = small_model()
      tn.manual_seed(5)
      tn.rand(10)
      local p = ck.save(d .. "/r.safetensors", { model = m })
      local r = ck.load(p)
      assert.are.same({ "5ULL", "10ULL" }, { tostring(r.rng.seed), tostring(r.rng.offset) })
      local next_draws = tn.randn(4)
      tn.manual_seed(77)
      ck.restore(p, { model = m })
      assert.tensor_equal(next_draws, tn.randn(4))
      local st = tn.rng_state()
      ck.restore(p, { model = m }, { rng = false })
      assert.are.same({ tostring(st.seed), tostring(st.offset) },
        { tostring(tn.rng_state().seed), tostring(tn.rng_state().offset) })
    end)

    it("raise on bad arguments and state that cannot be stored, naming the place", function()
      local d = tmpdir()
      local p = d .. "/bad.safetensors"
      contains(h.error_of(ck.save, 5, {}), "path must be a non-empty string")
      contains(h.error_of(ck.save, p, 5), "expected a table {step =")
      contains(h.error_of(ck.save, p, { step = "ten" }), "step must be a number, got string")
      contains(h.error_of(ck.save, p, { metrics = { wer = "low" } }), "metrics.wer must be a number")
      contains(h.error_of(ck.save, p, { model = tn.ones(2) }),
        "component 'model' must have a state_dict() method, got a tensor")
      contains(h.error_of(ck.save, p, { lr = 0.1 }), "put plain values in extra")
      contains(h.error_of(ck.save, p, { o = holder({ a = { f = print } }) }), "cannot store a function at 'o.a.f'")
      local cyc = {}
      cyc.self = cyc
      contains(h.error_of(ck.save, p, { o = holder(cyc) }), "a table contains itself at 'o.self'")
      contains(h.error_of(ck.save, p, { o = holder({ [{}] = 1 }) }), "a table key at 'o'")
      contains(h.error_of(ck.save, p, { o = holder(nil) }), "o:state_dict() returned nil")
      assert.is_false(exists(p))
      contains(h.error_of(ck.load, 5), "path must be a string")
      contains(h.error_of(ck.restore, {}, {}), "expected a checkpoint path or the table")
    end)
  end)

  describe("failed saves", function()
    local function setup_dir()
      local d = tmpdir()
      local p = d .. "/keep.safetensors"
      ck.save(p, { step = 1, model = small_model() })
      return d, p, snapshot(d)
    end

    it("leave every file untouched when a component's state_dict raises", function()
      local d, p, before = setup_dir()
      local boom = { state_dict = function() error("boom in state_dict") end }
      local err = h.error_of(ck.save, p, { step = 2, model = small_model(), optimizer = boom })
      contains(err, p)
      contains(err, "optimizer:state_dict() failed")
      contains(err, "boom in state_dict")
      assert.are.same(before, snapshot(d))
    end)

    it("leave every file untouched when the folder cannot be written", function()
      local d, _, before = setup_dir()
      local target = d .. "/keep.safetensors/sub.safetensors" -- a path through a regular file
      local err = h.error_of(ck.save, target, { step = 2, model = small_model() })
      contains(err, target)
      contains(err, "existing files are untouched")
      contains(err, "Not a directory")
      assert.are.same(before, snapshot(d))
    end)

    it("leave the old file and no temporary file behind when the disk is full", function()
      local d, p, before = setup_dir()
      -- the temporary file tern writes before renaming is <path>.tmp-<pid>: point it at /dev/full
      local tmp = p .. ".tmp-" .. pid()
      assert(os.execute("ln -s /dev/full '" .. tmp .. "'") == 0)
      local err = h.error_of(ck.save, p, { step = 2, model = small_model(), extra = { big = tn.zeros(100000) } })
      contains(err, p)
      contains(err, "No space left on device")
      assert.are.same(before, snapshot(d))
      assert.is_false(exists(tmp))
    end)
  end)

  describe("load", function()
    local d, good, bytes
    setup(function()
      d = tmpdir()
      good = d .. "/good.safetensors"
      ck.save(good, { step = 7, epoch = 1, model = small_model(), optimizer = holder({ m = tn.ones(8) }) })
      bytes = read_file(good)
    end)
    local n = 0
    local function variant(b)
      n = n + 1
      local p = string.format("%s/v%d.safetensors", d, n)
      write_file(p, b)
      return p
    end

    it("reads the good file", function()
      assert.are.equal(7, ck.load(good).step)
    end)

    it("rejects a missing file", function()
      local err = h.error_of(ck.load, d .. "/none.safetensors")
      contains(err, "tn.checkpoint.load: " .. d .. "/none.safetensors: cannot open")
    end)

    it("rejects a file truncated in its tensor data", function()
      local p = variant(bytes:sub(1, #bytes - 5))
      local err = h.error_of(ck.load, p)
      contains(err, p .. ": truncated: the header needs")
      contains(err, string.format("file of %d bytes, %d expected", #bytes - 5, #bytes))
    end)

    it("rejects a file truncated in its header or its length", function()
      local p = variant(bytes:sub(1, 100))
      local err = h.error_of(ck.load, p)
      contains(err, p .. ": not a readable safetensors file")
      contains(err, "does not fit in a file of 100 bytes")
      local q = variant(bytes:sub(1, 4))
      contains(h.error_of(ck.load, q), q .. ": not a readable safetensors file: file of 4 bytes is too short")
      local e = variant("")
      contains(h.error_of(ck.load, e), "file of 0 bytes is too short")
    end)

    it("rejects bytes after the tensor data", function()
      local p = variant(bytes .. "junk")
      contains(h.error_of(ck.load, p), p .. ": corrupt: 4 bytes after the tensor data")
    end)

    it("rejects a corrupt header", function()
      local hl = bytes:find("{", 1, true)
      local p = variant(bytes:sub(1, hl - 1) .. "[" .. bytes:sub(hl + 1))
      local err = h.error_of(ck.load, p)
      contains(err, p .. ": not a readable safetensors file")
      contains(err, "malformed safetensors header")
    end)

    it("rejects a flipped bit in the tensor data, naming the tensor", function()
      local pos = #bytes - 3 -- inside the last tensor
      local flipped = string.char(bit.bxor(bytes:byte(pos), 0x10))
      local p = variant(bytes:sub(1, pos - 1) .. flipped .. bytes:sub(pos + 1))
      local err = h.error_of(ck.load, p)
      contains(err, p .. ": corrupt: the data of tensor '")
      contains(err, "fails its checksum")
    end)

    it("rejects an edited checkpoint document", function()
      local a, b = bytes:find('\\"step\\":7', 1, true)
      assert.truthy(a, "the document holds the step")
      local p = variant(bytes:sub(1, a - 1) .. '\\"step\\":8' .. bytes:sub(b + 1))
      contains(h.error_of(ck.load, p), p .. ": corrupt: the checkpoint document fails its checksum")
    end)

    it("rejects a safetensors file that is not a checkpoint", function()
      local p = d .. "/plain.safetensors"
      tn.save(p, small_model():state_dict())
      contains(h.error_of(ck.load, p), p .. ": not a tern checkpoint (metadata format is missing")
      tn.save(p, { x = tn.ones(1) }, { format = "pt" })
      contains(h.error_of(ck.load, p), "not a tern checkpoint (metadata format is 'pt', expected 'tern.checkpoint')")
    end)

    it("rejects another format version", function()
      local t, meta = tn.load(good)
      meta.format_version = "99"
      local p = d .. "/v99.safetensors"
      tn.save(p, t, meta)
      contains(h.error_of(ck.load, p),
        p .. ": checkpoint format version 99 is not supported (this tern reads version 1)")
    end)

    it("rejects a tensor missing from or added to the file", function()
      local t, meta = tn.load(good)
      t["optimizer.m"] = nil
      local p = d .. "/missing.safetensors"
      tn.save(p, t, meta)
      contains(h.error_of(ck.load, p), p .. ": corrupt: tensor 'optimizer.m' is missing from the file")
      t["optimizer.m"] = tn.ones(8)
      t["intruder"] = tn.ones(1)
      tn.save(p, t, meta)
      contains(h.error_of(ck.load, p), p .. ": corrupt: tensor 'intruder' is not listed")
    end)
  end)

  describe("restore", function()
    local d, p
    setup(function()
      d = tmpdir()
      p = d .. "/m.safetensors"
      ck.save(p, { step = 40, epoch = 2, model = small_model(), scaler = holder({ scale = 1024 }),
        extra = { best = 0.5 } })
    end)

    it("loads the components and returns step, epoch, extra and the checkpoint", function()
      local m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
      local sc = holder(nil)
      local step, epoch, extra, c = ck.restore(p, { model = m, scaler = sc })
      assert.are.equal(40, step)
      assert.are.equal(2, epoch)
      assert.are.same({ best = 0.5 }, extra)
      assert.are.equal(p, c.path)
      assert_same_state(small_model():state_dict(), m:state_dict())
      assert.are.same({ scale = 1024 }, sc.loaded)
      -- a loaded table works too
      local m2 = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
      assert.are.equal(40, (ck.restore(ck.load(p), { model = m2 })))
      assert_same_state(small_model():state_dict(), m2:state_dict())
    end)

    it("rejects a component the file does not hold", function()
      local err = h.error_of(ck.restore, p, { model = small_model(), optimizer = holder({}) })
      contains(err, "tn.checkpoint.restore: " .. p
        .. ": the checkpoint has no 'optimizer' state (it holds: model, scaler)")
    end)

    it("rejects a shape mismatch with the model and changes nothing", function()
      tn.manual_seed(9)
      local m = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
      local before = m:state_dict()
      local copy = {}
      for k, v in pairs(before) do copy[k] = v:clone() end
      local sc = holder(nil)
      local err = h.error_of(ck.restore, p, { model = m, scaler = sc })
      contains(err, p .. ": the saved 'model' state does not match the module: "
        .. "shape/dtype mismatch: 0.bias: checkpoint {4}, model {5}")
      contains(err, "0.weight: checkpoint {4, 3}, model {5, 3}")
      assert_same_state(copy, m:state_dict())
      assert.is_nil(sc.loaded)
    end)

    it("rejects a dtype mismatch unless strict = false", function()
      local m = small_model():to("f64")
      local err = h.error_of(ck.restore, p, { model = m })
      contains(err, "0.weight: checkpoint dtype f32, model dtype f64")
      ck.restore(p, { model = m }, { strict = false })
      assert.tensor_near(small_model()[1].weight:to("f64"), m[1].weight, { atol = 0, rtol = 0 })
    end)

    it("rejects missing and unexpected model keys", function()
      local m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Linear(2, 2))
      local err = h.error_of(ck.restore, p, { model = m })
      contains(err, "missing from the checkpoint: 3.bias, 3.weight")
      local m2 = nn.Sequential(nn.Linear(3, 4))
      contains(h.error_of(ck.restore, p, { model = m2 }), "not in the model: 2.bias, 2.weight")
    end)

    it("names the component whose load_state_dict fails", function()
      local bad = { load_state_dict = function() error("wrong scaler kind") end }
      local err = h.error_of(ck.restore, p, { scaler = bad })
      contains(err, p .. ": scaler:load_state_dict() failed: ")
      contains(err, "wrong scaler kind")
      contains(h.error_of(ck.restore, p, { scaler = 5 }), "component 'scaler' must have a load_state_dict() method")
    end)
  end)

  describe("Manager", function()
    local function model_at(v)
      local m = small_model()
      tn.no_grad(function() m[1].bias:fill_(v) end)
      return m
    end

    it("keeps the last keep_last checkpoints", function()
      local d = tmpdir()
      local m = tn.checkpoint.Manager { dir = d, keep_last = 3 }
      for s = 1, 6 do m:save { step = s * 100, model = model_at(s) } end
      assert.are.same({ "ckpt-000000400.safetensors", "ckpt-000000500.safetensors", "ckpt-000000600.safetensors" },
        ls(d))
      assert.are.equal(d .. "/ckpt-000000600.safetensors", m:latest())
      local steps = {}
      for _, e in ipairs(m:list()) do steps[#steps + 1] = e.step end
      assert.are.same({ 400, 500, 600 }, steps)
    end)

    it("keeps the best by a metric besides the last ones", function()
      local d = tmpdir()
      local m = tn.checkpoint.Manager { dir = d, keep_last = 2, keep_best = 2, metric = "wer", mode = "min" }
      local wers = { 0.5, 0.3, 0.4, 0.35, 0.6, 0.7, 0.2, 0.9 }
      local expected_after = {
        [1] = { 1 }, [2] = { 1, 2 }, [3] = { 2, 3 }, [4] = { 2, 3, 4 }, [5] = { 2, 4, 5 },
        [6] = { 2, 4, 5, 6 }, [7] = { 2, 6, 7 }, [8] = { 2, 7, 8 },
      }
      for s, w in ipairs(wers) do
        m:save { step = s, model = model_at(s), metrics = { wer = w } }
        local want = {}
        for i, k in ipairs(expected_after[s]) do want[i] = string.format("ckpt-%09d.safetensors", k) end
        assert.are.same(want, ls(d), "after step " .. s)
      end
      assert.are.equal(d .. "/ckpt-000000007.safetensors", m:best())
      assert.are.equal(d .. "/ckpt-000000008.safetensors", m:latest())
      -- the best one restores the model it was saved with
      local r = model_at(0)
      ck.restore(m:best(), { model = r })
      assert.tensor_equal(model_at(7)[1].bias, r[1].bias)
    end)

    it("ranks mode = max, skips saves without the metric or with NaN", function()
      local d = tmpdir()
      local m = tn.checkpoint.Manager { dir = d, keep_last = 1, metric = "acc", mode = "max", prefix = "run_a" }
      m:save { step = 1, model = model_at(1), metrics = { acc = 0.8 } }
      m:save { step = 2, model = model_at(2), metrics = { acc = 0 / 0 } }
      m:save { step = 3, model = model_at(3) }
      m:save { step = 4, model = model_at(4), metrics = { acc = 0.7 } }
      assert.are.same({ "run_a-000000001.safetensors", "run_a-000000004.safetensors" }, ls(d))
      assert.are.equal(d .. "/run_a-000000001.safetensors", m:best())
    end)

    it("finds earlier checkpoints after a restart and never deletes other files", function()
      local d = tmpdir()
      write_file(d .. "/notes.txt", "mine")
      write_file(d .. "/other-000000001.safetensors", "not ours")
      write_file(d .. "/ckpt-000000099.safetensors", "garbage named like a checkpoint")
      local m1 = tn.checkpoint.Manager { dir = d, keep_last = 2 }
      m1:save { step = 1, model = model_at(1) }
      m1:save { step = 2, model = model_at(2) }
      local m2 = tn.checkpoint.Manager { dir = d, keep_last = 2 }
      assert.are.equal(d .. "/ckpt-000000002.safetensors", m2:latest())
      m2:save { step = 3, model = model_at(3) }
      assert.are.same({ "ckpt-000000002.safetensors", "ckpt-000000003.safetensors", "ckpt-000000099.safetensors",
        "notes.txt", "other-000000001.safetensors" }, ls(d))
      local bad = m2:list()[3]
      assert.are.equal(d .. "/ckpt-000000099.safetensors", bad.path)
      assert.truthy(bad.error)
    end)

    it("creates its folder", function()
      local d = tmpdir() .. "/a/b"
      local m = tn.checkpoint.Manager { dir = d .. "/" }
      assert.is_nil(m:latest())
      m:save { step = 0, model = model_at(0) }
      assert.are.same({ "ckpt-000000000.safetensors" }, ls(d))
    end)

    it("prunes nothing and keeps every file when a save fails", function()
      local d = tmpdir()
      local m = tn.checkpoint.Manager { dir = d, keep_last = 1 }
      m:save { step = 1, model = model_at(1) }
      local before = snapshot(d)
      local err = h.error_of(m.save, m, { step = 2, model = model_at(2),
        optimizer = { state_dict = function() error("no state") end } })
      contains(err, "tn.checkpoint.Manager:save: " .. d .. "/ckpt-000000002.safetensors: optimizer:state_dict() failed")
      assert.are.same(before, snapshot(d))
      contains(h.error_of(m.save, m, { step = -1, model = model_at(1) }), "step must be a non-negative integer, got -1")
      contains(h.error_of(m.save, m, { model = model_at(1) }), "step must be a non-negative integer, got nil")
    end)

    it("restores the newest checkpoint, falling back past a damaged one", function()
      local d = tmpdir()
      local logged = {}
      local m = tn.checkpoint.Manager { dir = d, keep_last = 3, log = function(msg) logged[#logged + 1] = msg end }
      local r = model_at(0)
      assert.is_nil(m:restore { model = r })
      m:save { step = 10, epoch = 1, model = model_at(1) }
      m:save { step = 20, epoch = 2, model = model_at(2) }
      local step, epoch, _, c = m:restore { model = r }
      assert.are.same({ 20, 2 }, { step, epoch })
      assert.are.equal(d .. "/ckpt-000000020.safetensors", c.path)
      assert.tensor_equal(model_at(2)[1].bias, r[1].bias)
      local newest = d .. "/ckpt-000000020.safetensors"
      local b = read_file(newest)
      write_file(newest, b:sub(1, #b - 8)) -- a truncated newest file
      assert.are.equal(10, (m:restore { model = r }))
      assert.tensor_equal(model_at(1)[1].bias, r[1].bias)
      assert.are.equal(1, #logged)
      contains(logged[1], newest .. ": truncated")
      contains(logged[1], "trying an older checkpoint")
      -- a mismatch with the model is an error, not a reason to fall back
      contains(h.error_of(m.restore, m, { model = nn.Linear(2, 2) }), "state does not match the module")
    end)

    it("rejects bad options", function()
      local M = tn.checkpoint.Manager
      contains(h.error_of(M, 5), "expected a table {dir =")
      contains(h.error_of(M, {}), "dir must be a non-empty string")
      local d = tmpdir()
      contains(h.error_of(M, { dir = d, keep_last = 0 }), "keep_last must be a positive integer")
      contains(h.error_of(M, { dir = d, keep_best = 1 }), "keep_best = 1 needs metric")
      contains(h.error_of(M, { dir = d, metric = "wer", mode = "lowest" }), "mode must be 'min' or 'max'")
      contains(h.error_of(M, { dir = d, prefix = "a/b" }), "prefix must be a string of letters")
      contains(h.error_of(M, { dir = d, log = "stderr" }), "log must be a function(msg), got string")
      write_file(d .. "/file", "x")
      contains(h.error_of(M, { dir = d .. "/file/sub" }), "cannot create folder " .. d .. "/file")
      contains(h.error_of(M { dir = d }.best, M { dir = d }), "this manager has no metric")
    end)
  end)

  describe("resume", function()
    local N = 3
    local root = debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or "."

    -- Runs resume_child.lua on ckpt in a fresh luajit; returns the checkpoint it wrote.
    local function child(ckpt, out, flag)
      local lua_path = string.format("%s/lua/?.lua;%s/lua/?/init.lua;%s/spec/?.lua;;", root, root, root)
      local cmd = string.format("cd '%s' && LUA_PATH='%s' luajit spec/helpers/resume_child.lua '%s' %d '%s' %s 2>&1",
        root, lua_path, ckpt, N, out, flag or "")
      local p = assert(io.popen(cmd))
      local log = p:read("*a")
      p:close()
      assert(exists(out), "the child process failed:\n" .. log)
      return ck.load(out)
    end

    local d, ckpt, full
    setup(function()
      d = tmpdir()
      -- 2N steps in one go
      local a = R.setup(2024)
      R.train(a, 2 * N)
      full = { state = { model = a.model:state_dict(), optimizer = a.optimizer:state_dict(),
        scaler = a.scaler:state_dict(), lr = a.lr:state_dict() }, rng = tn.rng_state() }
      -- N steps, then a checkpoint
      local b = R.setup(2024)
      R.train(b, N)
      ckpt = d .. "/half.safetensors"
      b.step, b.epoch = N, 0
      ck.save(ckpt, b)
    end)

    it("is exact: 2N steps equal N steps, save, restore in a fresh process, N steps (bit for bit)", function()
      local r = child(ckpt, d .. "/resumed.safetensors")
      assert.are.equal(2 * N, r.step)
      assert_same_state(full.state.model, r.state.model)
      assert_same_state(full.state.optimizer, r.state.optimizer)
      assert_same_state(full.state.scaler, r.state.scaler)
      assert_same_state(full.state.lr, r.state.lr)
      assert_same_state(full.rng, r.rng)
      -- the run really moved: parameters after 2N steps differ from those at N
      assert.is_truthy(diff(ck.load(ckpt).state.model, r.state.model))
    end)

    it("diverges without the RNG state (dropout and data depend on it)", function()
      local r = child(ckpt, d .. "/norng.safetensors", "norng")
      assert.are.equal(2 * N, r.step)
      assert.is_truthy(diff(full.state.model, r.state.model), "parameters should differ")
    end)
  end)
end)
