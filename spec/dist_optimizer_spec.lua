-- Specs of tn.dist.DistributedOptimizer, broadcast_parameters and broadcast_optimizer_state
-- (lua/tern/dist/). The untagged block needs no MPI job: argument errors, the bucket layout of
-- a size-1 job run in a subprocess. The #mpi block runs spec/mpi/dopt.lua and
-- spec/mpi/dbcast.lua under `mpirun -np 2`: K steps of 2 ranks at batch B against one process
-- at batch 2B, with fusion on and off, overlap on and off, fp16 compression, gradient
-- accumulation, the loss scaler and clipping; broadcasts that make the ranks identical.
local h = require "helpers.init"
local mpi = require "helpers.mpi"
local tn = h.tn

local contains, error_of = h.contains, h.error_of

describe("tn.dist.DistributedOptimizer", function()
  it("refuses what is not an optimizer, unknown and bad options, before init", function()
    local m = tn.nn.Linear(3, 2)
    local opt = tn.optim.SGD(m, { lr = 0.1 })
    local D = tn.dist.DistributedOptimizer
    contains(error_of(function() D(m) end), "opt must be a tern optimizer")
    contains(error_of(function() D(opt, { fusion = 3 }) end), "unknown option 'fusion'")
    contains(error_of(function() D(opt, { fusion_mb = -1 }) end), "fusion_mb must be a non-negative number")
    contains(error_of(function() D(opt, { compression = "int8" }) end), "compression must be \"none\" or \"fp16\"")
    contains(error_of(function() D(opt, { predivide = 0 }) end), "predivide must be a positive number")
    contains(error_of(function() D(opt, { backward_passes_per_step = 1.5 }) end),
      "backward_passes_per_step must be a positive integer")
    local acc = tn.optim.SGD(m, { lr = 0.1, iter_size = 2 })
    contains(error_of(function() D(acc, { backward_passes_per_step = 3 }) end), "differs from the optimizer's iter_size")
    if not tn.dist.is_initialized() then
      contains(error_of(function() D(opt) end), "tn.dist.init() must come first")
      contains(error_of(function() tn.dist.broadcast_parameters(m, 0) end), "call tn.dist.init() first")
      contains(error_of(function() tn.dist.broadcast_optimizer_state(opt, 0) end), "call tn.dist.init() first")
    end
  end)

  it("cuts the gradient buffers into buckets at parameter boundaries (a size-1 job)", function()
    if not tn.has_mpi() then
      pending("tern was built without MPI")
      return
    end
    -- in a subprocess: MPI, once finalised, cannot start again in this one
    local out, code = mpi.run(mpi.ENV .. "timeout 120 env -u OMPI_COMM_WORLD_SIZE luajit spec/mpi/dbuckets.lua")
    assert.are.same(0, code, out)
    contains(out, "buckets ok")
  end)

  describe("with 2 ranks #mpi", function()
    local function train(args, tol)
      local out, code = mpi.run_workers(2, "spec/mpi/dopt.lua " .. args .. " tol=" .. tol)
      assert.are.same(0, code, out)
      local n = 0
      for _ in out:gmatch("rank %d: ok") do n = n + 1 end
      assert.are.same(2, n, out)
      return out
    end

    it("gives the parameters of one process at twice the batch (f64, fusion on, overlap on)", function()
      train("fusion_mb=64 overlap=true dtype=f64", 1e-12)
    end)

    it("gives the same with fusion off (one allreduce per parameter) and with tiny buckets", function()
      local out = train("fusion_mb=0 overlap=true dtype=f64", 1e-12)
      contains(out, "buckets 6") -- 3 weights and 3 biases
      train("fusion_mb=0.0001 overlap=false dtype=f64", 1e-12)
    end)

    it("gives the same in f32 within f32 rounding", function()
      train("fusion_mb=64 dtype=f32", 2e-5)
    end)

    it("gives nearly the same with fp16 compression", function()
      train("fusion_mb=64 compression=fp16 dtype=f32", 5e-3)
    end)

    it("averages once per applied step with gradient accumulation (iter_size 2)", function()
      train("iter=2 dtype=f64 steps=3", 1e-12)
    end)

    it("works with the loss scaler and gradient clipping (same skip decisions, clipped averages)", function()
      train("amp=true clip=0.5 dtype=f64", 1e-12)
      train("clip=0.3 dtype=f64 overlap=false", 1e-12)
    end)

    it("broadcast_parameters and broadcast_optimizer_state make the ranks identical", function()
      local out, code = mpi.run_workers(2, "spec/mpi/dbcast.lua")
      assert.are.same(0, code, out)
      local n = 0
      for _ in out:gmatch("rank %d: ok") do n = n + 1 end
      assert.are.same(2, n, out)
    end)
  end)
end)
