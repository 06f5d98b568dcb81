-- spec/helpers/mpi.lua: launching worker scripts (spec/mpi/*.lua) under mpirun from a spec.
--
--   local mpi = require "helpers.mpi"
--   local out, code, secs = mpi.run_workers(2, "spec/mpi/dopt.lua fusion_mb=0")
--   local out, code, secs = mpi.run("any shell command")
--
-- Every launch is bounded by `timeout 120`, so a hung rank fails the spec instead of the run.
-- As root, OpenMPI needs its allow-run-as-root switches; --oversubscribe lets 2 ranks share a
-- machine with fewer cores. (In a sanitizer run the workers are LuaJIT with the ASan runtime, see
-- .ci/test.sh; OpenMPI's own allocations that live until exit are no findings of tern's, so leak
-- checks are off there.)
local M = {}

-- output (stdout and stderr), exit status and seconds of a shell command
function M.run(cmd)
  local t0 = os.time()
  local p = assert(io.popen(cmd .. " 2>&1; echo \"exit=$?\""))
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("exit=(%d+)%s*$"))
  return (out:gsub("exit=%d+%s*$", "")), code, os.time() - t0
end

M.ENV = "ASAN_OPTIONS=\"${ASAN_OPTIONS:-}:detect_leaks=0\" "
M.PREFIX = M.ENV .. "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 "
  .. "mpirun --allow-run-as-root --oversubscribe -np "

-- `mpirun -np n luajit <script and arguments>`: output, exit status, seconds
function M.run_workers(n, script_and_args)
  return M.run(M.PREFIX .. tostring(n) .. " luajit " .. script_and_args)
end

return M
