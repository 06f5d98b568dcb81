-- Worker: mpirun -np 2 luajit spec/mpi/mismatch.lua
-- The ranks pass different sizes / dtypes; every rank must get an error naming both calls and
-- still be usable after it. Prints "rank <r>: ok" on success.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
local u = require "mpi.util"
local tn = require "tern"
local dist = tn.dist

u.run(function()
  dist.init{ backend = "mpi", timeout = 30 }
  local rank = dist.rank()
  u.set_rank(rank)
  local msg = u.error_of(function() dist.allreduce(tn.zeros(4 + rank)) end, "size mismatch")
  u.check(msg:find("does not match rank", 1, true) and msg:find("f32[4]", 1, true)
    and msg:find("f32[5]", 1, true), "size mismatch error: " .. msg)
  msg = u.error_of(function() dist.broadcast(tn.zeros(3, { dtype = rank == 0 and "f32" or "f64" }), 0) end,
    "dtype mismatch")
  u.check(msg:find("does not match rank", 1, true), "dtype mismatch error: " .. msg)
  msg = u.error_of(function() dist.allgather(tn.zeros(2, 1 + rank)) end, "allgather mismatch")
  u.check(msg:find("does not match rank", 1, true), "allgather mismatch error: " .. msg)
  -- still usable
  local t = tn.ones(3)
  dist.allreduce(t)
  u.same_list({ dist.size(), dist.size(), dist.size() }, t:tolist(), "sum after the errors")
  print(string.format("rank %d: ok", rank))
  io.stdout:flush()
  dist.finalize()
end)
