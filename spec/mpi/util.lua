-- spec/mpi/util.lua: shared by the worker scripts that spec/dist_spec.lua launches under
-- mpirun (or plainly, as a single rank). A worker checks its results and ends non-zero with a
-- message naming its rank on the first failure; it prints "rank <r>: ok" when all passed.
local M = {}

local rank = "?"
function M.set_rank(r) rank = r end

function M.fail(msg)
  io.stderr:write(string.format("rank %s: FAIL: %s\n", tostring(rank), msg))
  io.stderr:flush()
  os.exit(1)
end

function M.check(cond, msg) if not cond then M.fail(msg) end end

function M.same_list(expected, actual, what)
  if #expected ~= #actual then
    M.fail(string.format("%s: expected %d values, got %d", what, #expected, #actual))
  end
  for i = 1, #expected do
    if math.abs(expected[i] - actual[i]) > 1e-6 * math.max(1, math.abs(expected[i])) then
      M.fail(string.format("%s: at %d expected %s, got %s", what, i, tostring(expected[i]),
        tostring(actual[i])))
    end
  end
end

-- Runs fn(); a Lua error becomes a failure with its traceback.
function M.run(fn)
  local ok, err = xpcall(fn, debug.traceback)
  if not ok then M.fail(tostring(err)) end
end

-- the error fn raises (a failure when it raises none)
function M.error_of(fn, what)
  local ok, err = pcall(fn)
  if ok then M.fail(what .. ": expected an error") end
  return tostring(err)
end

return M
