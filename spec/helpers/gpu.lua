-- spec/helpers/gpu.lua: what the #gpu specs that run an op on both devices share.
--
--   local g = require "helpers.gpu"
--   local expected, got = g.run_both(function(x) return x.a:sum(2) end, { a = tn.randn(4, 5) })
--   g.same_error(function(x) return x.a:gather(1, x.i) end, inputs, "out of range")
--   g.same_bits(expected, got, "what", true)   -- byte for byte, any NaN matching any NaN
local tn = require "tern"
local assert = require "luassert"

local M = {}

-- GPU copies of the tensors of inputs (other values as they are), made before anything runs
-- (ops may write into their inputs).
function M.to_gpu(inputs)
  local g = {}
  for k, v in pairs(inputs) do g[k] = tn.is_tensor(v) and v:cuda() or v end
  return g
end

-- make(inputs) on the CPU tensors and on GPU copies of them; make returns one or two tensors.
-- Checks each GPU result's device, dtype and shape and returns the CPU results and the GPU
-- results moved back: e1, g1, e2, g2.
function M.run_both(make, inputs)
  local g = M.to_gpu(inputs)
  local e1, e2 = make(inputs)
  local g1, g2 = make(g)
  local function back(e, r)
    if r == nil then return nil end
    assert.are.equal("cuda", r:device())
    assert.are.equal(e:dtype(), r:dtype())
    assert.are.same(e:shape(), r:shape())
    return r:cpu()
  end
  return e1, back(e1, g1), e2, back(e2, g2)
end

-- An error message without its "file:line: " prefix.
function M.strip(msg) return (tostring(msg):gsub("^[^\n]-:%d+: ", "")) end

-- make fails on both devices with the same message (which contains part); returns it.
function M.same_error(make, inputs, part)
  local g = M.to_gpu(inputs)
  local ok1, e1 = pcall(make, inputs)
  local ok2, e2 = pcall(make, g)
  assert.is_false(ok1, "the CPU call did not fail")
  assert.is_false(ok2, "the GPU call did not fail")
  assert.are.equal(M.strip(e1), M.strip(e2))
  if part then
    assert.truthy(M.strip(e2):find(part, 1, true), "'" .. M.strip(e2) .. "' does not contain '" .. part .. "'")
  end
  return M.strip(e2)
end

local ffi = require "ffi"
local ELSIZE = { f32 = 4, f64 = 8, f16 = 2, bf16 = 2, i32 = 4, i64 = 8, u8 = 1 }

-- expected and actual (CPU tensors) have the same dtype, shape and bytes, element by element;
-- nan_any: a NaN matches any NaN (the devices' NaNs may differ in sign and payload). level: the
-- error's level (default 2, the caller).
function M.same_bits(expected, actual, what, nan_any, level)
  what = what or "tensors"
  assert.are.equal("cpu", actual:device(), what .. ": actual is not a cpu tensor")
  assert.are.equal(expected:dtype(), actual:dtype(), what .. ": dtypes differ")
  assert.are.same(expected:shape(), actual:shape(), what .. ": shapes differ")
  local e, a = expected:contiguous(), actual:contiguous()
  local n, es = e:numel(), ELSIZE[e:dtype()]
  if n == 0 then return end
  local pe = ffi.cast("const uint8_t *", e:data_ptr())
  local pa = ffi.cast("const uint8_t *", a:data_ptr())
  local ef, af
  for k = 0, n - 1 do
    for b = k * es, k * es + es - 1 do
      if pe[b] ~= pa[b] then
        ef, af = ef or e:reshape(-1), af or a:reshape(-1)
        local ev, av = ef:get({ k + 1 }), af:get({ k + 1 })
        if not (nan_any and ev ~= ev and av ~= av) then
          error(string.format("%s: element %d of %d (flat, 1-based) differs: expected %.17g, actual %.17g (%s, shape {%s})",
            what, k + 1, n, ev, av, e:dtype(), table.concat(e:shape(), ", ")), (level or 2) + 1)
        end
        break
      end
    end
  end
end

return M
