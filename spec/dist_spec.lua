-- Specs of tn.dist (core/dist.c, lua/tern/dist.lua). The untagged block runs in the busted
-- process without MPI being initialised there (MPI cannot be re-initialised once finalised,
-- and a singleton MPI in the test process would outlive this file): it checks the errors before
-- init and, in a subprocess without mpirun, the size-1 semantics of a singleton MPI init. The
-- #mpi block launches worker scripts (spec/mpi/*.lua) under `mpirun -np 2`, each bounded by
-- `timeout 120`, and checks their output and exit status.
local h = require "helpers.init"
local tn = h.tn
local dist = tn.dist

local contains, error_of = h.contains, h.error_of

-- the launches (spec/helpers/mpi.lua): run(cmd) -> output, status, seconds; ENV the sanitizer
-- setting every subprocess gets; MPIRUN the bounded `mpirun -np 2 luajit ` prefix
local mpi = require "helpers.mpi"
local run, ENV = mpi.run, mpi.ENV
local MPIRUN = mpi.PREFIX .. "2 luajit "

-- cmd exits with status 0 and its output contains every one of the given parts
local function succeeds(cmd, ...)
  local out, code = run(cmd)
  assert.are.same(0, code, out)
  for _, part in ipairs({ ... }) do contains(out, part) end
end

-- cmd fails, within 40 s; returns its output
local function fails_quickly(cmd)
  local out, code, secs = run(cmd)
  assert.are_not.same(0, code, out)
  assert.truthy(secs < 40, "took " .. secs .. " s:\n" .. out)
  return out
end

describe("tn.dist", function()
  describe("before init", function()
    if dist.is_initialized() then return end

    it("raises an error naming the call for every query and collective", function()
      local why = tn.has_mpi() and "not initialised; call dist.init() first"
        or "tern was built without MPI"
      for name, fn in pairs({
        rank = dist.rank, size = dist.size, local_rank = dist.local_rank,
        local_size = dist.local_size, barrier = dist.barrier,
        allreduce = function() dist.allreduce(tn.zeros(2)) end,
        allreduce_async = function() dist.allreduce_async(tn.zeros(2)) end,
        broadcast = function() dist.broadcast(tn.zeros(2), 0) end,
        allgather = function() dist.allgather(tn.zeros(2)) end,
      }) do
        local msg = error_of(fn)
        contains(msg, "dist." .. name:gsub("_async$", ""))
        contains(msg, why)
      end
    end)

    it("reports no backend and is not initialised", function()
      assert.is_false(dist.is_initialized())
      assert.is_nil(dist.backend())
    end)

    it("checks the options of init before touching MPI", function()
      contains(error_of(function() dist.init{ backend = "gloo" } end), "unknown backend gloo")
      contains(error_of(function() dist.init{ timeout = -1 } end), "timeout must be a number")
      contains(error_of(function() dist.init("mpi") end), "expected an options table")
      assert.is_false(dist.is_initialized())
    end)

    it("says whether it is available and why", function()
      local ok, why = dist.available()
      assert.are.same(tn.has_mpi(), ok)
      if ok then
        assert.truthy(why:find("built with MPI", 1, true))
      else
        contains(why, "tern was built without MPI")
        contains(why, "apt-get install libopenmpi-dev openmpi-bin")
      end
    end)

    it("explains a missing NCCL before initialising MPI", function()
      if tn.has_nccl() then return end
      local msg = error_of(function() dist.init{ backend = "nccl" } end)
      contains(msg, tn.has_mpi() and "needs a build with CUDA and NCCL" or "built without MPI")
      assert.is_false(dist.is_initialized())
    end)

    it("sets and reads the timeout", function()
      local old = dist.get_timeout()
      assert.is_true(old > 0)
      dist.set_timeout(12.5)
      assert.are.same(12.5, dist.get_timeout())
      contains(error_of(function() dist.set_timeout(0) end), "seconds must be > 0")
      dist.set_timeout(old)
    end)
  end)

  describe("without mpirun (singleton MPI)", function()
    if not tn.has_mpi() then return end

    it("runs as rank 0 of size 1", function()
      succeeds(ENV .. "timeout 120 env -u OMPI_COMM_WORLD_SIZE luajit spec/mpi/single.lua", "rank 0: ok")
    end)
  end)

  describe("on a GPU #gpu", function()
    if not tn.has_mpi() then return end

    it("runs the collectives on CUDA tensors through NCCL (one rank)", function()
      if not tn.has_nccl() then return end
      succeeds(ENV .. "timeout 120 luajit spec/mpi/gpu.lua nccl", "rank 0: ok (nccl, 1 ranks)")
    end)

    it("stages CUDA tensors through host memory on the mpi backend #mpi", function()
      succeeds(MPIRUN .. "spec/mpi/gpu.lua mpi", "rank 0: ok (mpi, 2 ranks)", "rank 1: ok (mpi, 2 ranks)")
    end)
  end)

  describe("under mpirun -np 2 #mpi", function()
    if not tn.has_mpi() then
      pending("tern was built without MPI (.ci/test.sh leaves #mpi out then)")
      return
    end

    it("reduces, broadcasts and gathers every dtype", function()
      succeeds(MPIRUN .. "spec/mpi/collectives.lua", "rank 0: ok (size 2", "rank 1: ok (size 2")
    end)

    it("gives the same results when an allreduce goes in many chunks", function()
      succeeds("TERN_DIST_CHUNK_KB=1 " .. MPIRUN .. "spec/mpi/collectives.lua", "rank 0: ok (size 2",
        "rank 1: ok (size 2")
    end)

    it("raises an error on every rank when the ranks pass different sizes or dtypes", function()
      succeeds(MPIRUN .. "spec/mpi/mismatch.lua", "rank 0: ok", "rank 1: ok")
    end)

    it("ends the job within the timeout when a rank does not reach a collective", function()
      local out = fails_quickly(MPIRUN .. "spec/mpi/dies.lua hang 5")
      contains(out, "rank 0: allreduce of f32[1000] waited 5 s")
      contains(out, "a peer rank probably died")
    end)

    it("ends the job quickly when a rank exits with an error", function()
      local out = fails_quickly(MPIRUN .. "spec/mpi/dies.lua exit 5")
      contains(out, "rank 1: exiting with status 3")
      -- mpirun ends rank 0 (SIGTERM) and names rank 1's exit; rank 0 names the collective it
      -- was waiting in (or, had it reached its timeout first, says so)
      contains(out, "exited with non-zero status")
      assert.truthy(out:find("dist: rank 0: allreduce of f32[1000]: ended by SIGTERM", 1, true)
        or out:find("a peer rank probably died", 1, true), out)
    end)
  end)
end)
