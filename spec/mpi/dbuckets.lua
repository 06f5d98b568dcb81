-- spec/mpi/dbuckets.lua: a size-1 job (no mpirun) for spec/dist_optimizer_spec.lua: the bucket
-- layout of tn.dist.DistributedOptimizer for several fusion sizes, and that a one-rank
-- DistributedOptimizer steps exactly as the optimizer it wraps. Prints "buckets ok".
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
local tn = require "tern"
local u = require "mpi.util"

u.run(function()
  tn.dist.init{ backend = "mpi" }
  u.check(tn.dist.size() == 1, "expected a single rank")
  local function mlp()
    tn.manual_seed(3)
    -- f32 parameters: 35 + 7, 28 + 4, 12 + 3 elements
    return tn.nn.Sequential(tn.nn.Linear(5, 7), tn.nn.Tanh(), tn.nn.Linear(7, 4), tn.nn.Tanh(), tn.nn.Linear(4, 3))
  end
  local function layout(fusion_mb)
    local m = mlp()
    local d = tn.dist.DistributedOptimizer(tn.optim.SGD(m, { lr = 0.1 }), { fusion_mb = fusion_mb })
    return table.concat(d:buckets(), ",")
  end
  u.check(layout(64) == "89", "fusion_mb=64: " .. layout(64))
  u.check(layout(0) == "35,7,28,4,12,3", "fusion_mb=0: " .. layout(0))
  -- 100 bytes: a parameter of 100 bytes or more is a bucket of its own, the small ones share
  u.check(layout(100 / 2 ^ 20) == "35,7,28,19", "fusion_mb=100 B: " .. layout(100 / 2 ^ 20))

  -- one rank: the same steps as the wrapped optimizer, bit for bit
  local a, b = mlp(), mlp()
  local da = tn.dist.DistributedOptimizer(tn.optim.Adam(a, { lr = 0.01 }), { fusion_mb = 0 })
  local ob = tn.optim.Adam(b, { lr = 0.01 })
  tn.manual_seed(5)
  for _ = 1, 3 do
    local x, y = tn.randn(4, 5), tn.randn(4, 3)
    for _, pair in ipairs({ { a, da }, { b, ob } }) do
      pair[2]:zero_grad()
      local d = pair[1](x) - y
      ;(d * d):mean():backward()
      pair[2]:step()
    end
  end
  local pa, pb = a:parameters(), b:parameters()
  for i = 1, #pa do
    u.check((pa[i] - pb[i]):abs():max():item() == 0, "parameter " .. i .. " differs from the plain optimizer's")
  end
  u.check(tostring(da):find("DistributedOptimizer(1 ranks, 6 buckets", 1, true) ~= nil, tostring(da))
  print("buckets ok")
  tn.dist.finalize()
end)
