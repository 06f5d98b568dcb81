-- Worker (needs a GPU): luajit spec/mpi/gpu.lua <nccl|mpi>
-- CUDA tensors through the given backend: allreduce sum / avg / max for the float dtypes and
-- i32, async allreduce, broadcast and allgather. Run as one rank (singleton, the NCCL path on one
-- GPU) or under mpirun with the mpi backend (CUDA tensors staged through host memory; several
-- ranks may share one GPU). NCCL with several ranks needs one GPU per rank:
--   mpirun -np <GPUs> luajit spec/mpi/gpu.lua nccl
-- Prints "rank <r>: ok" on success.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
local u = require "mpi.util"
local tn = require "tern"
local dist = tn.dist
local backend = arg[1] or "nccl"

u.run(function()
  dist.init{ backend = backend, timeout = 60 }
  local rank, size = dist.rank(), dist.size()
  u.set_rank(rank)
  u.check(dist.backend() == backend, "backend() is " .. tostring(dist.backend()))
  local S = size * (size + 1) / 2
  for _, dtype in ipairs({ "f32", "f64", "f16", "bf16", "i32" }) do
    local t = tn.full({ 3, 5 }, rank + 1, { dtype = dtype, device = "cuda" })
    dist.allreduce(t, { op = "sum" })
    u.same_list({ S, S, S }, t:cpu():select(2, 1):tolist(), dtype .. " sum")
    t = tn.full({ 7 }, rank + 1, { dtype = dtype, device = "cuda" })
    dist.allreduce(t, { op = "max" })
    u.same_list({ size, size }, t:cpu():narrow(1, 1, 2):tolist(), dtype .. " max")
    if dtype ~= "i32" then
      t = tn.full({ 4 }, rank + 1, { dtype = dtype, device = "cuda" })
      dist.allreduce(t, { op = "avg" })
      u.same_list({ S / size }, t:cpu():narrow(1, 1, 1):tolist(), dtype .. " avg")
    end
  end
  local big = tn.full({ 2 ^ 20 }, rank + 1, { device = "cuda" })
  local h = dist.allreduce_async(big, { op = "sum" })
  u.check(h:wait() == big, "wait() does not return the tensor")
  u.same_list({ S }, big:narrow(1, 2 ^ 20, 1):cpu():tolist(), "async sum")
  local b = tn.arange(6, { device = "cuda" }):add(rank * 100)
  dist.broadcast(b, size - 1)
  u.same_list({ (size - 1) * 100, (size - 1) * 100 + 5 }, { b:cpu():tolist()[1], b:cpu():tolist()[6] },
    "broadcast")
  local g = dist.allgather(tn.full({ 2 }, rank, { dtype = "i64", device = "cuda" }))
  u.check(g:size(1) == 2 * size, "allgather size")
  local gl = g:cpu():tolist()
  for r = 0, size - 1 do u.check(gl[2 * r + 1] == r and gl[2 * r + 2] == r, "allgather order") end
  dist.barrier()
  print(string.format("rank %d: ok (%s, %d ranks)", rank, backend, size))
  io.stdout:flush()
  dist.finalize()
end)
