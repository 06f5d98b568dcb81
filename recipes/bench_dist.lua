-- recipes/bench_dist.lua: allreduce bandwidth of tn.dist per message size.
--
--   mpirun -np 2 luajit recipes/bench_dist.lua [--backend=mpi|nccl|auto] [--min=4096]
--                                               [--max=268435456] [--repeat=5] [--check=0]
--                                               [--case=allreduce|fusion] [--layers=200 --width=64]
--   luajit recipes/bench_dist.lua --np=2 ...   (re-launches itself under mpirun)
--
-- For each size from --min to --max bytes (powers of 4), f32 tensors of that size are summed
-- over the ranks (dist.allreduce, in place) --repeat times a batch of iterations (the batch
-- moves about 64 MiB, at least one call); the median batch gives the time of one call. Rank 0
-- prints one JSON line per size:
--   algbw_GBps = bytes / time, busbw_GBps = algbw * 2 (n - 1) / n
-- (NCCL-tests' definitions: bus bandwidth is what each link carries in a ring allreduce, so it is
-- comparable across rank counts.) Backends: "mpi" on CPU tensors, "nccl" on CUDA tensors (one GPU
-- per rank, local_rank selects it; each call waits for the GPU, so the time includes the launch).
-- --check=1 keeps tn.dist's cross-rank shape check (one small allgather per call); it is off
-- here so that the figures are the collective's alone.
-- --case: "allreduce" (this sweep) or "fusion" (DistributedOptimizer's fusion buffer and overlap
-- on a model of --layers=200 Linear(--width=64) layers: 400 small parameters; see fusion_case).

local script = arg and arg[0] or "recipes/bench_dist.lua"
local here = script:match("^(.*)/[^/]*$") or "."
package.path = here .. "/lib/?.lua;" .. package.path
local lib = require "bench"
lib.use_tree(here)

local json, emit_line = lib.json, lib.emit_line

local usage = "usage: [mpirun -np N] luajit recipes/bench_dist.lua [--np=2] [--backend=mpi|nccl|auto]"
  .. " [--min=4096] [--max=268435456] [--repeat=5] [--check=0] [--case=allreduce]\n"
local opts = lib.parse_args("bench_dist",
  { np = "2", backend = "mpi", min = "4096", max = "268435456", ["repeat"] = "5", check = "0",
    case = "allreduce", layers = "200", width = "64" }, usage)

-- Started plainly: re-launch under mpirun with --np ranks (when mpirun exists).
local launched = os.getenv("OMPI_COMM_WORLD_SIZE") or os.getenv("PMI_SIZE") or os.getenv("PMIX_RANK")
if not launched then
  local np = assert(tonumber(opts.np), "--np")
  if os.execute("command -v mpirun >/dev/null 2>&1") == 0 then
    local root = io.popen("id -u"):read("*l") == "0"
    local cmd = { "mpirun", "--oversubscribe", "-np", tostring(np) }
    if root then table.insert(cmd, 2, "--allow-run-as-root") end
    cmd[#cmd + 1] = "luajit"
    cmd[#cmd + 1] = "'" .. script .. "'"
    for _, a in ipairs(arg) do cmd[#cmd + 1] = "'" .. a .. "'" end
    io.stderr:write("bench_dist: " .. table.concat(cmd, " ") .. "\n")
    local ok = os.execute(table.concat(cmd, " "))
    os.exit((ok == 0 or ok == true) and 0 or 1)
  end
  io.stderr:write("bench_dist: no mpirun on PATH: running a single rank\n")
end

local tn = require "tern"
local dist = tn.dist
local ok_avail, why = dist.available()
if not ok_avail then
  io.stderr:write("bench_dist: " .. why .. "\n")
  os.exit(1)
end
dist.init{ backend = opts.backend, check = opts.check ~= "0" }
local rank, size = dist.rank(), dist.size()
local backend = dist.backend()
local device = backend == "nccl" and "cuda" or "cpu"
local REPEAT = math.max(1, tonumber(opts["repeat"]) or 5)
local now_ms = lib.now_ms

local function allreduce_sweep()
  local lo, hi = assert(tonumber(opts.min), "--min"), assert(tonumber(opts.max), "--max")
  local bytes = lo
  while bytes <= hi do
    local n = math.floor(bytes / 4)
    local t = tn.ones(n, { device = device })
    local iters = math.max(1, math.min(1000, math.floor(64 * 2 ^ 20 / bytes)))
    for _ = 1, math.min(iters, 3) do dist.allreduce(t) end -- warm-up
    local times = {}
    for r = 1, REPEAT do
      dist.barrier()
      local t0 = now_ms()
      for _ = 1, iters do dist.allreduce(t) end
      if device == "cuda" then tn.cuda.synchronize() end
      times[r] = (now_ms() - t0) / iters
    end
    -- the slowest rank's median decides
    local med = tn.tensor({ lib.median(times) }, { dtype = "f64" })
    dist.allreduce(med, { op = "max" })
    local ms = med:item()
    local algbw = bytes / (ms * 1e-3) / 1e9
    if rank == 0 then
      emit_line(json({
        { "op", "allreduce" }, { "backend", backend }, { "device", device }, { "dtype", "f32" },
        { "ranks", size }, { "bytes", bytes }, { "shape", tostring(n) }, { "iters", iters },
        { "median_ms", ms }, { "algbw_GBps", algbw },
        { "busbw_GBps", algbw * 2 * (size - 1) / size }, { "check", opts.check ~= "0" },
      }))
    end
    t = nil
    collectgarbage("collect")
    bytes = bytes * 4
  end
end

-- The fusion buffer on a model of many small parameters: --layers Linear(--width, --width)
-- layers (2 parameters each), one training step = forward on a batch of 16, backward, and
-- DistributedOptimizer(SGD):step(). For fusion_mb 0 (one allreduce per parameter), 1 and 64
-- (one bucket here), with and without overlap (buckets started from the grad-ready hooks during
-- backward): the median step and the median of the gradient averaging alone
-- (dopt:synchronize() after a backward without overlap), the slowest rank's.
local function fusion_case()
  local L, W = tonumber(opts.layers), tonumber(opts.width)
  tn.manual_seed(1)
  local layers = {}
  for i = 1, L do
    layers[#layers + 1] = tn.nn.Linear(W, W)
    layers[#layers + 1] = tn.nn.Tanh()
  end
  local model = tn.nn.Sequential(unpack(layers))
  if device == "cuda" then model:to("cuda") end
  local x = tn.randn(16, W, { device = device })
  local nparams = model:num_parameters()
  local function slowest(ms)
    local t = tn.tensor({ ms }, { dtype = "f64" })
    dist.allreduce(t, { op = "max" })
    return t:item()
  end
  local function sync_dev() if device == "cuda" then tn.cuda.synchronize() end end
  for _, cfg in ipairs({ { 0, false }, { 0, true }, { 1, false }, { 1, true }, { 64, false }, { 64, true } }) do
    local dopt = dist.DistributedOptimizer(tn.optim.SGD(model, { lr = 1e-4 }), { fusion_mb = cfg[1], overlap = cfg[2] })
    local steps, syncs = {}, {}
    for r = 1, REPEAT + 1 do
      dist.barrier()
      local t0 = now_ms()
      dopt:zero_grad()
      model(x):sum():backward()
      sync_dev()
      local t1 = now_ms()
      dopt:synchronize()
      sync_dev()
      local t2 = now_ms()
      dopt:step()
      sync_dev()
      if r > 1 then -- the first is warm-up
        steps[r - 1] = now_ms() - t0
        syncs[r - 1] = t2 - t1
      end
    end
    local step_ms, wait_ms = slowest(lib.median(steps)), slowest(lib.median(syncs))
    if rank == 0 then
      emit_line(json({
        { "op", "fusion" }, { "backend", backend }, { "device", device }, { "ranks", size },
        { "layers", L }, { "width", W }, { "params", nparams }, { "tensors", 2 * L },
        { "fusion_mb", cfg[1] }, { "overlap", cfg[2] }, { "buckets", #dopt:buckets() },
        { "step_ms", step_ms }, { "sync_wait_ms", wait_ms },
      }))
    end
    -- the hooks of this optimizer stay on the parameters: drop them before the next one
    for _, p in ipairs(model:parameters()) do require("tern.autograd").on_grad_ready(p, nil) end
  end
end

local CASES = { allreduce = allreduce_sweep, fusion = fusion_case }
local case = CASES[opts.case]
if not case then
  io.stderr:write("bench_dist: unknown case " .. opts.case .. "\n" .. usage)
  os.exit(2)
end
case()
dist.finalize()
