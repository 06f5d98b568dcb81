-- Worker: mpirun -np 2 luajit spec/mpi/dies.lua <exit|hang> [timeout]
-- Rank 1 does not reach the allreduce: "exit" ends it with os.exit(3) first, "hang" makes it
-- sleep past rank 0's timeout. Rank 0 must not hang: with "hang" it raises the timeout error
-- (printed to stderr, exit 1); with "exit" mpirun usually ends it first.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
local tn = require "tern"
local dist = tn.dist
local mode, timeout = arg[1] or "exit", tonumber(arg[2] or "5")

dist.init{ backend = "mpi", timeout = timeout }
local rank = dist.rank()
dist.barrier()
if rank == 1 then
  if mode == "exit" then
    io.stderr:write("rank 1: exiting with status 3 before the allreduce\n")
    io.stderr:flush()
    os.exit(3)
  end
  io.stderr:write("rank 1: sleeping instead of calling allreduce\n")
  io.stderr:flush()
  for _ = 1, 3 * timeout + 10 do os.execute("sleep 1") end -- short children: none outlives the job
  os.exit(0)
end
local t0 = os.time()
local ok, err = pcall(dist.allreduce, tn.ones(1000), { op = "sum" })
io.stderr:write(string.format("rank %d: allreduce returned after %d s: %s\n", rank,
  os.time() - t0, ok and "ok" or tostring(err)))
io.stderr:flush()
os.exit(ok and 0 or 1)
