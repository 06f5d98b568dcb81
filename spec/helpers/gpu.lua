-- spec/helpers/gpu.lua: what the #gpu specs that run an op on both devices share.
--
--   local g = require "helpers.gpu"
--   local expected, got = g.run_both(function(x) return x.a:sum(2) end, { a = tn.randn(4, 5) })
--   g.same_error(function(x) return x.a:gather(1, x.i) end, inputs, "out of range")
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

return M
