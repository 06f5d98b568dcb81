-- recipes/data/synth_worker.lua: one worker process of synth.prepare (recipes/data/synth.lua).
--   luajit synth_worker.lua <work file> <part> <parts> <parent pid>
-- synthesises the jobs part, part + parts, ... of the work file and writes done-<part>.tsv;
-- prepare() starts these, one per process, and polls their progress.
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/../../lua/?.lua;" .. here .. "/../../lua/?/init.lua;" .. package.path
local synth = dofile(here .. "/synth.lua")
local ok, err = pcall(synth.worker_main, arg[1], arg[2], arg[3], arg[4])
if not ok then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
