-- spec/helpers/resume_train.lua: the small training run that spec/checkpoint_spec.lua and its
-- child process (spec/helpers/resume_child.lua) share, so both run exactly the same steps.
--
--   local R = require "helpers.resume_train"
--   local run = R.setup(seed)    -- {model =, optimizer =, lr =, scaler =}: the checkpoint components
--   R.train(run, steps)          -- data and dropout masks drawn from tn's global RNG
--
-- The model: Linear -> tanh -> LSTM -> Dropout -> Linear, an MSE loss on random targets;
-- tn.optim.Adam with an exp_decay LR policy (warm-up) and a backoff loss scaler whose scale
-- grows during the run, so every component's state matters for the resumed steps.
local tn = require "tern"

local M = {}

local Net = tn.nn.Module:extend("ResumeNet")

function Net:init()
  self:add_module("inp", tn.nn.Linear(6, 8))
  self:add_module("lstm", tn.nn.LSTM(8, 8))
  self:add_module("drop", tn.nn.Dropout(0.25))
  self:add_module("out", tn.nn.Linear(8, 3))
end

function Net:forward(x) -- x (L, B, 6) -> (L, B, 3)
  local h = self.lstm(self.inp(x):tanh())
  return self.out(self.drop(h))
end

local function make_optimizer(model)
  return tn.optim.Adam(model, { lr = 0.05 })
end

function M.setup(seed)
  tn.manual_seed(seed)
  local model = Net()
  model:flat_buffers()
  return {
    model = model,
    optimizer = make_optimizer(model),
    lr = tn.optim.lr.exp_decay { lr = 0.05, decay_steps = 4, decay_rate = 0.5, warmup_steps = 2 },
    scaler = tn.amp.backoff { init_scale = 2 ^ 8, growth_interval = 2 },
  }
end

function M.train(run, steps)
  for _ = 1, steps do
    local x, y = tn.randn(5, 4, 6), tn.randn(5, 4, 3)
    run.lr:step(run.optimizer)
    run.optimizer:zero_grad()
    local loss = (run.model(x) - y):square():mean()
    run.scaler:scale(loss):backward()
    run.scaler:step(run.optimizer)
  end
end

return M
