-- recipes/lib/bench.lua: the plumbing shared by the benchmark recipes (bench_tensor.lua,
-- bench_rnn.lua, bench_rnnt.lua): command-line options, the per-thread-count child re-exec,
-- monotonic / process-CPU clocks, median timing, load average, JSON lines and the Python peer.
--
-- A recipe loads it from its own directory:
--   local script = arg and arg[0] or "recipes/bench_x.lua"
--   local here = script:match("^(.*)/[^/]*$") or "."
--   package.path = here .. "/lib/?.lua;" .. package.path
--   local lib = require "bench"
--   lib.use_tree(here)   -- package.path for <here>/../lua (tern)

local ffi = require "ffi"

local M = {}

M.PYTHON = "/usr/bin/python3"
M.LOAD_NOISY = 1.5

-- package.path for the tern sources of the tree that holds the recipes directory `here`
function M.use_tree(here)
  local root = here .. "/.."
  package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
  return root
end

-- options ------------------------------------------------------------------------------------

-- parses --key=value / --key into opts (whose keys are the known options, with defaults);
-- an unknown one prints "<name>: unknown argument ...\n" .. usage and exits 2.
-- Returns opts and the arguments other than --threads / --child (for the child re-exec).
function M.parse_args(name, opts, usage)
  local passthrough = {}
  for _, a in ipairs(arg or {}) do
    local k, v = a:match("^%-%-([%w_]+)=(.*)$")
    if not k then k = a:match("^%-%-([%w_]+)$"); v = "1" end
    if not k or opts[k] == nil then
      io.stderr:write(name .. ": unknown argument " .. a .. "\n" .. usage)
      os.exit(2)
    end
    opts[k] = v
    if k ~= "threads" and k ~= "child" then passthrough[#passthrough + 1] = a end
  end
  return opts, passthrough
end

-- "1,2" -> {1, 2}; a non-number fails with the message `what`
function M.numbers(s, what)
  local t = {}
  for n in s:gmatch("[^,]+") do t[#t + 1] = assert(tonumber(n), what) end
  return t
end

-- "a,b" -> {"a", "b"}, {a = true, b = true}. A name outside `allowed` (a list) ends the run:
-- "<name>: unknown <what> <value> (<allowed>)" and then `usage` (if given) on stderr, exit 2.
function M.choices(name, what, s, allowed, usage)
  local ok = {}
  for _, a in ipairs(allowed) do ok[a] = true end
  local list, set = {}, {}
  for v in s:gmatch("[^,]+") do
    if not ok[v] then
      io.stderr:write(("%s: unknown %s %s (%s)\n"):format(name, what, v, table.concat(allowed, ", ")) .. (usage or ""))
      os.exit(2)
    end
    list[#list + 1], set[v] = v, true
  end
  return list, set
end

function M.check_peer(name, opts)
  if opts.peer ~= "torch" and opts.peer ~= "none" then
    io.stderr:write(name .. ": --peer must be torch or none\n")
    os.exit(2)
  end
end

-- threads ------------------------------------------------------------------------------------

-- the environment that sets the thread count of libgomp / OpenBLAS when they load
function M.thread_env(th)
  return string.format("OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=%d OMP_NUM_THREADS=%d", th, th)
end

-- driver: re-runs `script` once per thread count as a child process (--child=1 --threads=N and
-- the passthrough arguments) with thread_env(N), echoes its output and exits (1 when a child
-- failed). Call it before tern (and so OpenMP / OpenBLAS) is loaded.
function M.reexec(name, script, threads, passthrough)
  local interp = "luajit"
  do -- the interpreter that runs this script (arg[-1], the lowest negative index)
    local i = -1
    while arg[i - 1] do i = i - 1 end
    if arg[i] then interp = arg[i] end
  end
  local marker = "__" .. name .. "_rc="
  local rc = 0
  for _, th in ipairs(threads) do
    -- the child's exit status comes back as a last line (LuaJIT's popen close does not report it)
    local cmd = string.format("%s %s %s --child=1 --threads=%d %s 2>&1; echo %s$?",
      M.thread_env(th), interp, script, th, table.concat(passthrough, " "), marker)
    local p = assert(io.popen(cmd))
    for line in p:lines() do
      local crc = line:match("^" .. marker .. "(%d+)$")
      if crc then
        if tonumber(crc) ~= 0 then rc = 1 end
      else
        io.write(line, "\n"); io.flush()
      end
    end
    p:close()
  end
  os.exit(rc)
end

-- clocks and timing ----------------------------------------------------------------------------

-- pcall: another module may have declared them already
pcall(ffi.cdef, [[
typedef struct { long tv_sec; long tv_nsec; } tern_bench_timespec;
int clock_gettime(int clk_id, tern_bench_timespec *tp);
]])
local CLOCK_MONOTONIC, CLOCK_PROCESS_CPUTIME_ID = 1, 2
local ts = ffi.new("tern_bench_timespec")
function M.now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) * 1e-6
end
-- process CPU time (all threads): cpu_ms / median_ms shows how many cores an op really used
function M.cpu_ms()
  ffi.C.clock_gettime(CLOCK_PROCESS_CPUTIME_ID, ts)
  return tonumber(ts.tv_sec) * 1e3 + tonumber(ts.tv_nsec) * 1e-6
end
local now_ms, cpu_ms = M.now_ms, M.cpu_ms

-- sorts xs in place
function M.median(xs)
  table.sort(xs)
  local n = #xs
  if n % 2 == 1 then return xs[(n + 1) / 2] end
  return 0.5 * (xs[n / 2] + xs[n / 2 + 1])
end
function M.min(xs)
  local mn = math.huge
  for _, x in ipairs(xs) do mn = math.min(mn, x) end
  return mn
end
function M.full_gc() collectgarbage("collect"); collectgarbage("collect") end

-- o.warmup (default 2) untimed calls fn(iters), then o.rep timed ones; o.iters (default 1)
-- calls per sample, fn gets it. Untimed around each timed call: o.prep(), o.pre(r), then after
-- it o.post(r). Returns the lists of per-call wall ms and process-CPU ms.
function M.timed(fn, o)
  local iters = o.iters or 1
  for _ = 1, o.warmup or 2 do
    if o.prep then o.prep() end
    fn(iters)
  end
  local xs, cs = {}, {}
  for r = 1, o.rep do
    if o.prep then o.prep() end
    if o.pre then o.pre(r) end
    local c0, t0 = cpu_ms(), now_ms()
    fn(iters)
    local t1, c1 = now_ms(), cpu_ms()
    if o.post then o.post(r) end
    xs[r], cs[r] = (t1 - t0) / iters, (c1 - c0) / iters
  end
  return xs, cs
end

-- a / b, nil when either is missing or b is 0
function M.ratio(a, b)
  if not a or not b or b == 0 then return nil end
  return a / b
end

-- load average -------------------------------------------------------------------------------

function M.load1()
  local f = io.open("/proc/loadavg")
  if not f then return nil end
  local s = f:read("*l")
  f:close()
  return tonumber(s:match("^(%S+)"))
end
function M.load_note(ld)
  return string.format("load1 %.2f > %.1f: shared machine, timing noisy", ld, M.LOAD_NOISY)
end
-- appends {"load_note", ...} to the fields f when the load ld is above LOAD_NOISY
function M.add_load_note(f, ld)
  if ld and ld > M.LOAD_NOISY then f[#f + 1] = { "load_note", M.load_note(ld) } end
  return f
end

-- output ---------------------------------------------------------------------------------------

function M.jnum(x)
  if x == nil then return "null" end
  if x ~= x or x == math.huge or x == -math.huge then return "null" end
  if x == math.floor(x) and math.abs(x) < 2 ^ 53 then return string.format("%d", x) end
  return string.format("%.6g", x)
end

-- fields: ordered list of {key, value}; strings are quoted, numbers formatted, nil -> null
function M.json(fields)
  local parts = {}
  for _, kv in ipairs(fields) do
    local k, v = kv[1], kv[2]
    local s
    if type(v) == "string" then s = string.format("%q", v)
    elseif type(v) == "boolean" then s = tostring(v)
    else s = M.jnum(v) end
    parts[#parts + 1] = string.format("%q:%s", k, s)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function M.emit_line(s)
  io.write(s, "\n")
  io.flush()
end

-- the value of key k in a flat JSON line (string or number), nil when absent
function M.field(line, k)
  local s = line:match('"' .. k .. '"%s*:%s*"([^"]*)"')
  if s then return s end
  local n = line:match('"' .. k .. '"%s*:%s*([-%d%.eE+]+)')
  return n and tonumber(n)
end

-- peer -------------------------------------------------------------------------------------------

-- runs the peer command line (stderr merged); returns its output lines, or nil and a note
function M.peer_lines(cmd)
  local p = io.popen(cmd)
  if not p then return nil, "cannot start " .. M.PYTHON end
  local lines = {}
  for line in p:lines() do lines[#lines + 1] = line end
  p:close()
  return lines
end

-- runs the peer command line and echoes its JSON lines (with a load_note when its load1 is
-- noisy), calling on_json(line) for each; other non-empty lines become {"impl":"torch",
-- "note":"peer output: ..."} lines. Returns false when the peer could not start.
function M.echo_peer(cmd, th, on_json)
  local p = io.popen(cmd)
  if not p then
    M.emit_line(M.json({ { "impl", "torch" }, { "threads", th }, { "note", "cannot start " .. M.PYTHON } }))
    return false
  end
  for line in p:lines() do
    if line:sub(1, 1) == "{" then
      local ld = M.field(line, "load1")
      if ld and ld > M.LOAD_NOISY then
        line = line:sub(1, -2) .. string.format(',"load_note":"%s"}', M.load_note(ld))
      end
      M.emit_line(line)
      on_json(line)
    elseif line ~= "" and not line:match("^No CUDA runtime") then
      M.emit_line(M.json({ { "impl", "torch" }, { "threads", th }, { "note", "peer output: " .. line } }))
    end
  end
  p:close()
  return true
end

return M
