-- Worker: mpirun -np N luajit spec/mpi/collectives.lua
-- allreduce sum / avg / max for every dtype, async allreduce, broadcast, allgather order,
-- barrier, and the errors of bad arguments. Prints "rank <r>: ok" on success.
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
local u = require "mpi.util"
local tn = require "tern"
local dist = tn.dist

u.run(function()
  dist.init{ backend = "mpi", timeout = 60 }
  local rank, size = dist.rank(), dist.size()
  u.set_rank(rank)
  u.check(dist.is_initialized(), "is_initialized() is false after init")
  u.check(dist.backend() == "mpi", "backend() is " .. tostring(dist.backend()))
  u.check(dist.local_rank() >= 0 and dist.local_rank() < dist.local_size(), "local_rank out of range")
  u.check(dist.init() == dist, "a second init does not return dist")
  local n = 7

  -- rank r holds (r + 1) * i at position i
  local function values(dtype)
    local v = {}
    for i = 1, n do v[i] = (rank + 1) * i end
    return tn.tensor(v, { dtype = dtype })
  end
  local S = size * (size + 1) / 2 -- sum of (r + 1)
  for _, dtype in ipairs({ "f32", "f64", "f16", "bf16", "i32", "i64" }) do
    local exp_sum, exp_avg, exp_max = {}, {}, {}
    for i = 1, n do exp_sum[i] = S * i; exp_avg[i] = S * i / size; exp_max[i] = size * i end
    local t = values(dtype)
    u.check(dist.allreduce(t, { op = "sum" }) == t, "allreduce does not return its tensor")
    u.same_list(exp_sum, t:tolist(), dtype .. " sum")
    t = values(dtype)
    dist.allreduce(t, { op = "max" })
    u.same_list(exp_max, t:tolist(), dtype .. " max")
    if dtype ~= "i32" and dtype ~= "i64" then
      t = values(dtype)
      dist.allreduce(t, { op = "avg" })
      if dtype == "f16" or dtype == "bf16" then -- avg rounded back to 16 bits
        local r = t:tolist()
        for i = 1, n do
          u.check(math.abs(r[i] - exp_avg[i]) <= 0.01 * exp_avg[i], dtype .. " avg at " .. i)
        end
      else
        u.same_list(exp_avg, t:tolist(), dtype .. " avg")
      end
    else
      local msg = u.error_of(function() dist.allreduce(values(dtype), { op = "avg" }) end, dtype .. " avg")
      u.check(msg:find("avg needs a float tensor", 1, true), "int avg error: " .. msg)
    end
    -- default op is sum, on a 2-D tensor
    t = tn.full({ 2, 3 }, rank + 1, { dtype = dtype })
    dist.allreduce(t)
    u.same_list({ S, S, S, S, S, S }, t:reshape(6):tolist(), dtype .. " 2-D sum")
  end

  -- async: several in flight, waited in order; test() polls
  local hs, ts = {}, {}
  for k = 1, 4 do
    ts[k] = tn.full({ 1000 * k }, rank + k, { dtype = "f32" })
    hs[k] = dist.allreduce_async(ts[k], { op = "avg" })
  end
  local spins = 0
  while not hs[4]:test() do spins = spins + 1 end
  u.check(hs[4]:test() == true, "test() after completion is not true")
  for k = 1, 4 do
    u.check(hs[k]:wait() == ts[k], "wait() does not return the tensor")
    local expect = (S - size) / size + k -- avg of r + k
    local v = ts[k]:tolist()
    u.check(#v == 1000 * k and math.abs(v[1] - expect) < 1e-5 and math.abs(v[#v] - expect) < 1e-5,
      string.format("async %d: expected %g, got %g", k, expect, v[1]))
  end

  -- broadcast from every root makes the ranks identical
  for root = 0, size - 1 do
    local t = tn.arange(5, { dtype = "f64" }):add(rank * 10)
    dist.broadcast(t, root)
    u.same_list({ root * 10, root * 10 + 1, root * 10 + 2, root * 10 + 3, root * 10 + 4 }, t:tolist(),
      "broadcast from " .. root)
    local h = tn.full({ 3 }, rank, { dtype = "f16" })
    dist.broadcast(h, root)
    u.same_list({ root, root, root }, h:tolist(), "f16 broadcast from " .. root)
  end
  local msg = u.error_of(function() dist.broadcast(tn.zeros(2), size) end, "root out of range")
  u.check(msg:find("root " .. size .. " is out of range", 1, true), "root error: " .. msg)

  -- allgather: leading dim size * n, rank order
  local g = dist.allgather(tn.full({ 2, 3 }, rank, { dtype = "i64" }))
  u.same_list({ 2 * size, 3 }, g:size(), "allgather shape")
  local flat = g:reshape(6 * size):tolist()
  for r = 0, size - 1 do
    for j = 1, 6 do u.check(flat[r * 6 + j] == r, "allgather order at rank block " .. r) end
  end
  local g0 = dist.allgather(tn.tensor(rank + 0.5, { dtype = "f32" }))
  u.same_list({ size }, g0:size(), "allgather of a scalar")

  -- non-contiguous tensors are refused
  msg = u.error_of(function() dist.allreduce(tn.zeros(3, 4):transpose(1, 2)) end, "non-contiguous")
  u.check(msg:find("contiguous", 1, true), "non-contiguous error: " .. msg)
  msg = u.error_of(function() dist.allreduce(tn.zeros(3), { op = "min" }) end, "bad op")
  u.check(msg:find("unknown op", 1, true), "bad op error: " .. msg)

  dist.barrier()
  print(string.format("rank %d: ok (size %d, local_rank %d, local_size %d)", rank, size,
    dist.local_rank(), dist.local_size()))
  io.stdout:flush()
  dist.finalize()
  u.check(not dist.is_initialized(), "is_initialized() after finalize")
end)
