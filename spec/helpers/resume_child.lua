-- spec/helpers/resume_child.lua: the fresh process of checkpoint_spec.lua's exact-resume spec.
--   luajit spec/helpers/resume_child.lua <checkpoint> <steps> <out> [norng]
-- Builds the run of helpers/resume_train.lua, restores <checkpoint> into it (the RNG too,
-- unless "norng"), trains <steps> more steps and writes the result to <out> as a checkpoint.
-- Needs LUA_PATH with ./lua and ./spec (as .busted sets lpath) and TERN_LIB when not installed.
local tn = require "tern"
local R = require "helpers.resume_train"

local src, steps, out, flag = arg[1], tonumber(arg[2]), arg[3], arg[4]
assert(src and steps and out, "usage: resume_child.lua <checkpoint> <steps> <out> [norng]")

local run = R.setup(999) -- a different seed: everything must come from the checkpoint
local step, epoch = tn.checkpoint.restore(src, run, { rng = flag ~= "norng" })
R.train(run, steps)
run.step, run.epoch = step + steps, epoch
tn.checkpoint.save(out, run)
