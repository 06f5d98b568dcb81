-- Specs of the spec helpers themselves (spec/helpers/init.lua): the registered assertions
-- fail when they should, with messages that locate the worst element.
local h = require "helpers.init"
local tn = h.tn

describe("spec helpers", function()
  describe("assert.tensor_near", function()
    it("passes within tolerance and against nested tables and numbers", function()
      assert.tensor_near({ { 1, 2 }, { 3, 4 } }, tn.tensor({ { 1, 2 }, { 3, 4 + 1e-7 } }))
      assert.tensor_near(2.5, tn.tensor(2.5))
      assert.tensor_near(tn.tensor({ 0 / 0, math.huge }), tn.tensor({ 0 / 0, math.huge }))
    end)

    it("fails naming the worst element, its 1-based index, both values and the shapes", function()
      local ok, err = pcall(assert.tensor_near, { { 1, 2, 3 }, { 4, 5, 6 } },
        tn.tensor({ { 1, 2.1, 3 }, { 4, 5, 7 } }), { atol = 1e-3, rtol = 0 })
      assert.is_false(ok)
      err = tostring(err)
      assert.truthy(err:find("2 of 6 elements differ", 1, true), err)
      assert.truthy(err:find("worst at index {2, 3}: expected 6, actual 7", 1, true), err)
      assert.truthy(err:find("shape {2, 3}", 1, true), err)
    end)

    it("fails on different shapes", function()
      local ok, err = pcall(assert.tensor_near, { 1, 2 }, tn.tensor({ { 1, 2 } }))
      assert.is_false(ok)
      assert.truthy(tostring(err):find("shapes differ: expected {2}, actual {1, 2}", 1, true))
    end)

    it("fails when NaN meets a number", function()
      assert.is_false(pcall(assert.tensor_near, { 0 / 0 }, tn.tensor({ 1 })))
      assert.is_false(pcall(assert.tensor_near, { 1 }, tn.tensor({ 0 / 0 })))
      assert.is_false(pcall(assert.tensor_near, { math.huge }, tn.tensor({ -math.huge })))
    end)
  end)

  describe("assert.tensor_equal", function()
    it("requires equal dtypes and exact values", function()
      assert.tensor_equal(tn.tensor({ 1, 2 }), tn.tensor({ 1, 2 }))
      assert.is_false(pcall(assert.tensor_equal, tn.tensor({ 1, 2 }), tn.tensor({ 1, 2 }, { dtype = "f64" })))
      assert.is_false(pcall(assert.tensor_equal, { 1, 2 }, tn.tensor({ 1, 2 + 1e-6 })))
    end)
  end)

  describe("assert.gradcheck", function()
    it("fails with gradcheck's message for a wrong gradient", function()
      local x = h.leaf({ 2 }, 1)
      local function bad(a)
        return tn.autograd.record(a:detach() * 2, "bad", function(g) return g end, nil, a)
      end
      local ok, err = pcall(assert.gradcheck, bad, { x })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("Jacobian mismatch", 1, true))
    end)
  end)
end)
