-- tern.dist: collectives between the ranks of an MPI job, Horovod-style (core/dist.c,
-- cuda/dist.cu). Launch one process per rank with mpirun:
--
--   mpirun -np 2 luajit train.lua
--
--   local tn = require "tern"
--   local dist = tn.dist.init{backend = "auto", timeout = 300}
--   print(dist.rank(), dist.size(), dist.local_rank())
--   dist.allreduce(grad, {op = "avg"})           -- in place, returns grad
--   local h = dist.allreduce_async(grad2, {op = "sum"})
--   ...                                          -- overlap other work
--   h:wait()                                     -- grad2 holds the sum now
--   dist.broadcast(w, 0)                         -- every rank gets rank 0's w
--   local all = dist.allgather(x)                -- (size * x:size(1), ...), in rank order
--   dist.finalize()
--
-- Ranks and roots are 0-based numbers (as mpirun, Horovod and CUDA_VISIBLE_DEVICES count them).
-- Backends: "mpi" (CPU tensors; CUDA tensors go through host memory), "nccl" (CUDA tensors
-- through NCCL on the GPU local_rank selects; CPU tensors still through MPI), "auto" (nccl when
-- tern was built with it and a GPU is present, else mpi). Without mpirun, init makes a single
-- rank (size 1). Every collective is bounded by a timeout (init{timeout=s}, set_timeout, or
-- TERN_DIST_TIMEOUT; default 300 s): past it the call raises an error naming the op, the shape,
-- the rank and the time waited, and the job should end (dist.abort(), or let the error end the
-- process: mpirun then ends the other ranks). A rank that mpirun ends while it waits in a
-- collective (because another rank failed) prints which collective it was in.
--
-- Overlap: on MPI a started allreduce advances only inside MPI calls, so call handle:test() now
-- and then (e.g. after each layer's backward) to keep it moving; NCCL runs it on its own stream.
-- Before each collective the ranks compare op, dtype and shape (one small allgather, which also
-- makes allreduce_async wait for the other ranks to start it); init{check=false} turns that off.
-- Scripts should end normally or call dist.finalize() before os.exit (LuaJIT's os.exit does not
-- close the Lua state, and OpenMPI reports a rank that exits without MPI_Finalize).
local lib = require "tern.lib"

local ffi, C, check = lib.ffi, lib.C, lib.check

local M = {}

local backends = { auto = 0, mpi = 1, nccl = 2 }
local backend_names = { [1] = "mpi", [2] = "nccl" }
local ops = { sum = 0, avg = 1, max = 2 }

local i32_out = ffi.new("int32_t[1]")

-- dist.available() -> bool, reason: built with MPI? launched by mpirun?
function M.available()
  local buf = ffi.new("char[512]")
  local ok = C.tn_dist_available(buf, 512) ~= 0
  return ok, ffi.string(buf)
end

function M.is_initialized() return C.tn_dist_is_initialized() ~= 0 end

-- Finalises MPI when the Lua state closes (the normal end of a script) if the user did not.
local closer
local function arm_closer()
  if closer then return end
  closer = newproxy(true)
  getmetatable(closer).__gc = function()
    if C.tn_dist_is_initialized() ~= 0 then C.tn_dist_finalize() end
  end
end

-- dist.init{backend="auto"|"nccl"|"mpi", timeout=seconds, check=true}: idempotent; returns dist.
-- check=false skips the cross-rank comparison of op, dtype and shape before each collective.
function M.init(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("dist.init: expected an options table, got " .. type(opts), 2) end
  local b = opts.backend or "auto"
  local bi = backends[b]
  if not bi then
    error("dist.init: unknown backend " .. tostring(b) .. " (expected \"auto\", \"nccl\" or \"mpi\")", 2)
  end
  local timeout = opts.timeout
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0) then
    error("dist.init: timeout must be a number of seconds > 0, got " .. tostring(timeout), 2)
  end
  if opts.check ~= nil then C.tn_dist_set_checks(opts.check and 1 or 0) end
  check(C.tn_dist_init(bi, timeout or 0), 2)
  arm_closer()
  return M
end

function M.finalize() check(C.tn_dist_finalize(), 2) end

-- "mpi" or "nccl"; nil before init
function M.backend() return backend_names[C.tn_dist_get_backend()] end

-- (the C functions are looked up at call time, so that requiring tern never fails on them)
local function query(name)
  return function()
    check(C[name](i32_out), 2)
    return i32_out[0]
  end
end
M.rank = query("tn_dist_rank")
M.size = query("tn_dist_size")
M.local_rank = query("tn_dist_local_rank")
M.local_size = query("tn_dist_local_size")

function M.set_timeout(seconds)
  if type(seconds) ~= "number" then error("dist.set_timeout: expected seconds, got " .. type(seconds), 2) end
  check(C.tn_dist_set_timeout(seconds), 2)
end
function M.get_timeout() return C.tn_dist_get_timeout() end

-- Ends every rank of the job now (MPI_Abort) with exit code code (default 1).
function M.abort(code)
  io.stdout:flush()
  io.stderr:flush()
  check(C.tn_dist_abort(code or 1), 2)
end

function M.barrier() check(C.tn_dist_barrier(), 2) end

local function tensor_arg(t, name)
  if type(t) ~= "table" or not t._c then
    error("dist." .. name .. ": expected a tensor, got " .. type(t), 3)
  end
  return t._c
end

local function op_arg(opts, name)
  local op = "sum"
  if opts ~= nil then
    if type(opts) ~= "table" then error("dist." .. name .. ": expected an options table {op=...}", 3) end
    op = opts.op or "sum"
  end
  local v = ops[op]
  if not v then
    error("dist." .. name .. ": unknown op " .. tostring(op) .. " (expected \"sum\", \"avg\" or \"max\")", 3)
  end
  return v
end

-- dist.allreduce(t, {op="sum"|"avg"|"max"}): in place over the ranks; returns t.
function M.allreduce(t, opts)
  local c = tensor_arg(t, "allreduce")
  check(C.tn_dist_allreduce(c, op_arg(opts, "allreduce")), 2)
  return t
end

-- Handles of started allreduces ------------------------------------------------------------------

local Handle = {}
Handle.__index = Handle

local function free_work(p) C.tn_dist_work_free(p) end

-- dist.allreduce_async(t, {op=...}) -> handle; handle:wait() returns t, handle:test() -> bool.
-- t must stay untouched until the handle completed.
function M.allreduce_async(t, opts)
  local c = tensor_arg(t, "allreduce_async")
  local op = op_arg(opts, "allreduce_async")
  local out = ffi.new("tn_dist_work_t *[1]")
  check(C.tn_dist_allreduce_start(out, c, op), 2)
  return setmetatable({ _c = ffi.gc(out[0], free_work), tensor = t }, Handle)
end

function Handle:wait()
  if not self.done then
    check(C.tn_dist_work_wait(self._c), 2)
    self.done = true
  end
  return self.tensor
end

function Handle:test()
  if self.done then return true end
  check(C.tn_dist_work_test(self._c, i32_out), 2)
  self.done = i32_out[0] ~= 0
  return self.done
end

-- dist.broadcast(t, root): t = root's t on every rank (root: 0-based rank); returns t.
function M.broadcast(t, root)
  local c = tensor_arg(t, "broadcast")
  root = root or 0
  if type(root) ~= "number" or root % 1 ~= 0 then
    error("dist.broadcast: root must be a rank number (0-based), got " .. tostring(root), 2)
  end
  check(C.tn_dist_broadcast(c, root), 2)
  return t
end

-- dist.allgather(t) -> a new tensor (size * t:size(1), t:size(2), ...), the ranks' t in rank order.
function M.allgather(t)
  local c = tensor_arg(t, "allgather")
  local out = ffi.new("tn_tensor *[1]")
  check(C.tn_dist_allgather(out, c), 2)
  return lib.wrap(out[0])
end

-- Horovod's layer over the collectives: lua/tern/dist/optimizer.lua and broadcast.lua
local broadcasts = require "tern.dist.broadcast"
M.broadcast_parameters = broadcasts.broadcast_parameters
M.broadcast_optimizer_state = broadcasts.broadcast_optimizer_state
M.DistributedOptimizer = require("tern.dist.optimizer").new

return M
