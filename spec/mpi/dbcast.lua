-- spec/mpi/dbcast.lua: a worker of spec/dist_optimizer_spec.lua under `mpirun -np 2`:
-- broadcast_parameters (from rank 1) and broadcast_optimizer_state (from rank 0) make the
-- ranks' models and optimizers identical; a model of another layout and a bad root raise on
-- every rank with a message naming the problem. Prints "rank <r>: ok".
package.path = "./lua/?.lua;./lua/?/init.lua;./spec/?.lua;" .. package.path
local tn = require "tern"
local u = require "mpi.util"

u.run(function()
  local dist = tn.dist.init{ backend = "mpi", timeout = 60 }
  local rank, size = dist.rank(), dist.size()
  u.set_rank(rank)
  local function same_on_all(t, what)
    local all = dist.allgather(t:double():reshape(1, -1))
    for r = 1, size - 1 do
      u.check((all:select(1, r + 1) - all:select(1, 1)):abs():max():item() == 0,
        what .. ": rank " .. r .. " differs from rank 0")
    end
  end
  local function differs(t)
    local all = dist.allgather(t:double():reshape(1, -1))
    return (all:select(1, 2) - all:select(1, 1)):abs():max():item() > 0
  end

  tn.manual_seed(10 + rank)
  local m = tn.nn.Sequential(tn.nn.Linear(4, 6), tn.nn.LayerNorm(6), tn.nn.Linear(6, 2))
  u.check(differs(m:flat_buffers()[1].data), "the ranks should start from different parameters")
  local mine = m:flat_buffers()[1].data:clone()
  tn.dist.broadcast_parameters(m, 1)
  same_on_all(m:flat_buffers()[1].data, "parameters")
  if rank == 1 then
    u.check((m:flat_buffers()[1].data - mine):abs():max():item() == 0, "root's own parameters changed")
  end

  -- different data on each rank: the Adam states differ, then the broadcast makes them equal
  local opt = tn.optim.Adam(m, { lr = 0.01 })
  for _ = 1, 1 + rank do -- and a different number of steps
    opt:zero_grad()
    local y = m(tn.randn(3, 4))
    ;(y * y):sum():backward()
    opt:step()
  end
  local sd = opt:state_dict()
  u.check(differs(sd.state[1].exp_avg), "the optimizer states should differ before the broadcast")
  opt.param_groups[1].lr = rank == 0 and 0.5 or 0.01
  tn.dist.broadcast_optimizer_state(opt, 0)
  sd = opt:state_dict()
  same_on_all(sd.state[1].exp_avg, "exp_avg")
  same_on_all(sd.state[1].exp_avg_sq, "exp_avg_sq")
  u.check(sd.state[1].step == 1, "step count: expected rank 0's 1, got " .. tostring(sd.state[1].step))
  u.check(opt.param_groups[1].lr == 0.5, "lr: expected rank 0's 0.5, got " .. tostring(opt.param_groups[1].lr))

  -- a model of another layout on rank 1: an error on every rank, not a hang
  local other = rank == 0 and tn.nn.Linear(4, 6) or tn.nn.Linear(4, 7)
  local msg = u.error_of(function() tn.dist.broadcast_parameters(other, 0) end, "layout mismatch")
  u.check(msg:find("the ranks do not hold the same layout", 1, true) ~= nil, msg)
  msg = u.error_of(function() tn.dist.broadcast_parameters(m, size) end, "bad root")
  u.check(msg:find(string.format("root must be a rank number in [0, %d), got %d", size, size), 1, true) ~= nil, msg)
  print(string.format("rank %d: ok", rank))
  dist.finalize()
end)
