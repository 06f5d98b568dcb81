-- recipes/make_synth_data.lua: makes (or finds cached) the default data set of the ASR recipe:
-- espeak-ng speech of grammar sentences, 16 kHz WAV files and JSONL manifests.
--
--   luajit recipes/make_synth_data.lua [--dir=data/synth] [--seed=1] [--n_train=4000]
--        [--n_test=300] [--procs=2] [--quiet] [--noise.fraction=0.5] [--noise.snr_db=5,25]
--        [--test_noise.fraction=0.5] [--test_noise.snr_db=10,25] [--rate=130,210]
--        [--pitch=20,80]
--
-- Prints the train and test manifest paths (one a line) on stdout; progress goes to stderr.
-- A second run with the same options reuses the files at once (<dir>/stamp.json).
-- See recipes/data/synth.lua and README.md, "Default data set".

local script = arg and arg[0] or "recipes/make_synth_data.lua"
local here = script:match("^(.*)/[^/]*$") or "."
package.path = here .. "/../lua/?.lua;" .. here .. "/../lua/?/init.lua;" .. package.path
local synth = dofile(here .. "/data/synth.lua")

local USAGE = [[
usage: luajit recipes/make_synth_data.lua [--dir=data/synth] [--seed=1] [--n_train=4000]
         [--n_test=300] [--procs=2] [--quiet] [--noise.fraction=0.5] [--noise.snr_db=5,25]
         [--test_noise.fraction=0.5] [--test_noise.snr_db=10,25] [--rate=130,210]
         [--pitch=20,80] [--level_db=-32,-18] [--pad=0.05,0.35]
]]

local function fail(msg)
  io.stderr:write("make_synth_data: ", msg, "\n", USAGE)
  os.exit(2)
end

local NUMBER = { seed = true, n_train = true, n_test = true, procs = true, babble_bank = true,
  ["noise.fraction"] = true, ["test_noise.fraction"] = true }
local RANGE = { rate = true, pitch = true, level_db = true, pad = true,
  ["noise.snr_db"] = true, ["test_noise.snr_db"] = true }

local opts = {}
for _, a in ipairs(arg or {}) do
  if a == "--help" or a == "-h" then io.stdout:write(USAGE) os.exit(0) end
  local k, v = a:match("^%-%-([%w_.]+)=(.*)$")
  if not k then k = a:match("^%-%-([%w_.]+)$"); v = true end
  if not k then fail("unknown argument " .. a) end
  if NUMBER[k] then
    v = tonumber(v)
    if not v then fail(("--%s needs a number, got %s"):format(k, a)) end
  elseif RANGE[k] then
    local lo, hi = tostring(v):match("^([^,]+),([^,]+)$")
    lo, hi = tonumber(lo), tonumber(hi)
    if not lo or not hi then fail(("--%s needs min,max, got %s"):format(k, a)) end
    v = { lo, hi }
  elseif k == "quiet" then
    v = v == true or v == "1" or v == "true"
  elseif k ~= "dir" and k ~= "espeak" and k ~= "luajit" then
    fail("unknown option --" .. k)
  end
  local group, key = k:match("^([%w_]+)%.([%w_]+)$")
  if group then
    opts[group] = opts[group] or {}
    opts[group][key] = v
  else
    opts[k] = v
  end
end

local ok, train, test, info = pcall(synth.prepare, opts)
if not ok then
  io.stderr:write("make_synth_data: ", tostring(train), "\n")
  os.exit(1)
end
if info.cached and not opts.quiet then
  io.stderr:write(("synth: reusing %d train + %d test utterances in %s\n"):format(
    info.n_train, info.n_test, train:match("^(.*)/[^/]*$")))
end
print(train)
print(test)
