-- Worker run WITHOUT mpirun (MPI singleton init): one rank of size 1.
-- Prints "rank 0: ok" on success.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
local u = require "mpi.util"
local tn = require "tern"
local dist = tn.dist

u.run(function()
  local ok, why = dist.available()
  u.check(ok, "dist.available() is false: " .. why)
  u.check(why:find("not launched by mpirun", 1, true), "available() reason: " .. why)
  dist.init{ backend = "auto", timeout = 20 }
  u.set_rank(dist.rank())
  u.check(dist.rank() == 0 and dist.size() == 1, "rank/size " .. dist.rank() .. "/" .. dist.size())
  u.check(dist.local_rank() == 0 and dist.local_size() == 1, "local rank/size")
  local t = tn.tensor({ 1, 2, 3 })
  dist.allreduce(t, { op = "avg" })
  u.same_list({ 1, 2, 3 }, t:tolist(), "avg over one rank")
  local h = dist.allreduce_async(tn.tensor({ 4, 5 }, { dtype = "bf16" }), { op = "sum" })
  u.same_list({ 4, 5 }, h:wait():tolist(), "async over one rank")
  dist.broadcast(t, 0)
  u.same_list({ 1, 2, 3 }, t:tolist(), "broadcast over one rank")
  u.same_list({ 1, 3 }, dist.allgather(tn.zeros(1, 3)):size(), "allgather shape")
  dist.barrier()
  print("rank 0: ok (backend " .. dist.backend() .. ")")
  io.stdout:flush()
  dist.finalize()
  local msg = u.error_of(function() dist.init() end, "init after finalize")
  u.check(msg:find("cannot be initialised again", 1, true), "re-init error: " .. msg)
end)
