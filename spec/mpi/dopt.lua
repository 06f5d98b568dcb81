-- spec/mpi/dopt.lua: a worker of spec/dist_optimizer_spec.lua, run under mpirun with N ranks:
--
--   mpirun -np 2 luajit spec/mpi/dopt.lua fusion_mb=64 compression=none overlap=true iter=1 \
--     amp=false clip=0 dtype=f64 steps=4 tol=1e-12
--
-- Every rank trains an MLP for `steps` steps with tn.dist.DistributedOptimizer(Adam) on its
-- share (B rows) of a global batch of N*B rows, and also, alone, a reference copy of the same
-- MLP with a plain Adam on the whole N*B batch. The parameters of the two must agree to tol on
-- every rank, and be identical across the ranks. The ranks start from different seeds: the
-- broadcast from rank 0 must make them alike. Prints "rank <r>: ok <max difference>".
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
local tn = require "tern"
local u = require "mpi.util"

local opts = { fusion_mb = 64, compression = "none", overlap = "true", iter = 1, amp = "false", clip = 0,
  dtype = "f64", steps = 4, tol = 1e-12, B = 3 }
for _, a in ipairs(arg) do
  local k, v = a:match("^([%w_]+)=(.*)$")
  u.check(k and opts[k] ~= nil, "bad argument " .. a)
  opts[k] = tonumber(v) or v
end

u.run(function()
  local dist = tn.dist.init{ backend = "mpi", timeout = 60 }
  local rank, size = dist.rank(), dist.size()
  u.set_rank(rank)
  local B, D_in, D_h, D_out = opts.B, 5, 7, 3
  local dt = opts.dtype
  local function mlp()
    return tn.nn.Sequential(tn.nn.Linear(D_in, D_h), tn.nn.Tanh(), tn.nn.Linear(D_h, 4), tn.nn.Tanh(),
      tn.nn.Linear(4, D_out))
  end
  -- the reference: same initial parameters as rank 0 (seed 1), alone, the whole batch
  tn.manual_seed(1)
  local ref = mlp():to(dt)
  tn.manual_seed(1 + rank) -- the model of this rank starts elsewhere unless rank 0
  local model = mlp():to(dt)
  tn.dist.broadcast_parameters(model, 0)
  do -- broadcast made the ranks alike, and equal to the reference
    local a, b = model:parameters(), ref:parameters()
    for i = 1, #a do
      u.check((a[i] - b[i]):abs():max():item() == 0, "parameter " .. i .. " differs from rank 0's after the broadcast")
    end
  end

  local iter = opts.iter
  local inner = tn.optim.Adam(model, { lr = 0.05, iter_size = iter })
  local dopt = tn.dist.DistributedOptimizer(inner, { fusion_mb = opts.fusion_mb, compression = opts.compression,
    overlap = opts.overlap == "true" })
  local ropt = tn.optim.Adam(ref, { lr = 0.05, iter_size = iter })
  local scaler = opts.amp == "true" and tn.amp.backoff{ init_scale = 2 ^ 10 } or nil
  local rscaler = opts.amp == "true" and tn.amp.backoff{ init_scale = 2 ^ 10 } or nil

  tn.manual_seed(100) -- the data: the same global batch on every rank
  local function step_of(m, o, sc, x, y)
    local d = m(x) - y
    local loss = (d * d):mean()
    if sc then
      sc:scale(loss):backward()
      sc:unscale_(o)
      if opts.clip > 0 then tn.optim.clip_grad_norm(o, opts.clip) end
      sc:step(o)
    else
      loss:backward()
      if o:will_step() and opts.clip > 0 then tn.optim.clip_grad_norm(o, opts.clip) end
      o:step()
    end
  end
  for _ = 1, opts.steps do
    for _ = 1, iter do
      local X = tn.randn(size * B, D_in, { dtype = dt })
      local Y = tn.randn(size * B, D_out, { dtype = dt })
      dopt:zero_grad()
      step_of(model, dopt, scaler, X:narrow(1, rank * B + 1, B), Y:narrow(1, rank * B + 1, B))
      ropt:zero_grad()
      step_of(ref, ropt, rscaler, X, Y)
    end
  end

  local worst = 0
  local a, b = model:parameters(), ref:parameters()
  for i = 1, #a do
    worst = math.max(worst, (a[i]:double() - b[i]:double()):abs():max():item())
  end
  u.check(worst <= opts.tol, string.format("parameters differ from the single-process run at batch %d by %g (tol %g)",
    size * B, worst, opts.tol))
  -- and every rank holds the same bits
  local flat = model:flat_buffers()[1].data:double()
  local all = dist.allgather(flat:view(1, -1))
  for r = 1, size - 1 do
    u.check((all:select(1, r + 1) - all:select(1, 1)):abs():max():item() == 0,
      "rank " .. r .. "'s parameters differ from rank 0's")
  end
  print(string.format("rank %d: ok %.3g buckets %d", rank, worst, #dopt:buckets()))
  dist.finalize()
end)
