-- tern.dist broadcasts of whole models and optimizers (Horovod's broadcast_parameters and
-- broadcast_optimizer_state): after them every rank holds root's values, so ranks that were
-- initialised with different seeds, or only rank 0 restored from a checkpoint, start alike.
--
--   dist.broadcast_parameters(model, root)   -- a module (its flat buffers, then its buffers),
--                                            -- a list of tensors or a {name = tensor} table
--   dist.broadcast_optimizer_state(opt, root) -- every state tensor and the step counts
--
-- Each rank must pass a model of the same layout: the number of tensors, their dtypes and sizes
-- are checked across the ranks first (one small allgather), and a mismatch raises on every rank
-- naming the first difference, rather than leaving a collective to hang or mix bytes.
local Tensor = require "tern.tensor"
local Module = require "tern.nn.Module"

local fmt = string.format
local M = {}

local function dist() return require "tern.dist" end

-- The keys of a table in one order on every rank: numbers first, then the rest by value.
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) then return a < b end
    return type(a) == "number"
  end)
  return keys
end

-- The tensors of x in a fixed order: a module's flat parameter buffers then its named buffers
-- (sorted by name); a list as it is; a {name = tensor} table sorted by name.
local function tensors_of(x, what, level)
  local r, names = {}, {}
  if Module.is_module(x) then
    for _, g in ipairs(x:flat_buffers()) do
      r[#r + 1] = g.data
      names[#names + 1] = fmt("flat %s %s buffer", g.dtype, g.device)
    end
    local bufs = {}
    for name, b in x:named_buffers() do bufs[#bufs + 1] = { name, b } end
    table.sort(bufs, function(a, b) return a[1] < b[1] end)
    for _, e in ipairs(bufs) do
      r[#r + 1] = e[2]
      names[#names + 1] = e[1]
    end
  elseif Tensor.is_tensor(x) then
    r[1], names[1] = x, "the tensor"
  elseif type(x) == "table" then
    if #x > 0 then
      for i, t in ipairs(x) do r[i], names[i] = t, fmt("[%d]", i) end
    else
      for _, k in ipairs(sorted_keys(x)) do r[#r + 1], names[#names + 1] = x[k], tostring(k) end
    end
  else
    error(fmt("tn.dist.%s: expected a module, a tensor or a table of tensors, got %s", what, type(x)), level + 1)
  end
  for i, t in ipairs(r) do
    if not Tensor.is_tensor(t) then
      error(fmt("tn.dist.%s: %s is not a tensor (%s)", what, names[i], type(t)), level + 1)
    end
  end
  return r, names
end

-- Same number of tensors, dtypes and sizes on every rank? (an allgather of a short signature)
local function check_layout(ts, names, what, level)
  local d = dist()
  if d.size() == 1 then return end
  local sig = { #ts }
  for _, t in ipairs(ts) do
    sig[#sig + 1] = t._c.dtype
    sig[#sig + 1] = t:numel()
  end
  -- a fixed-size signature: count, then (dtype, numel) pairs folded into 3 checksums
  local a, b, c = #ts, 0, 0
  for i = 2, #sig, 2 do
    a = (a * 31 + sig[i]) % 2147483647
    b = (b * 131 + sig[i + 1]) % 2147483647
    c = c + sig[i + 1]
  end
  local mine = Tensor.tensor({ #ts, a, b, c }, { dtype = "f64" })
  local all = d.allgather(mine):tolist()
  local r = d.rank()
  for k = 0, d.size() - 1 do
    local row = { all[4 * k + 1], all[4 * k + 2], all[4 * k + 3], all[4 * k + 4] }
    if row[1] ~= #ts or row[2] ~= a or row[3] ~= b or row[4] ~= c then
      local first = ""
      if row[1] ~= #ts then
        first = fmt(": rank %d has %d tensors, rank %d has %d", k, row[1], r, #ts)
      else
        first = fmt(": rank %d and rank %d differ in the dtypes or sizes of their tensors (rank %d: %s)", k, r, r,
          (function()
            local parts = {}
            for i, t in ipairs(ts) do
              if i > 4 then parts[#parts + 1] = "..."; break end
              parts[#parts + 1] = fmt("%s %s[%d]", names[i], t:dtype(), t:numel())
            end
            return table.concat(parts, ", ")
          end)())
      end
      error(fmt("tn.dist.%s: the ranks do not hold the same layout%s", what, first), level + 1)
    end
  end
end

local function check_root(root, what, level)
  local d = dist()
  if type(root) ~= "number" or root ~= math.floor(root) or root < 0 or root >= d.size() then
    error(fmt("tn.dist.%s: root must be a rank number in [0, %d), got %s", what, d.size(), tostring(root)), level + 1)
  end
end

local function need_init(what, level)
  if not dist().is_initialized() then
    error(fmt("tn.dist.%s: call tn.dist.init() first", what), level + 1)
  end
end

-- Both broadcasts start here: initialised, and root (default 0) a rank. Returns root; errors
-- name the broadcast's caller.
local function start(what, root)
  need_init(what, 3)
  root = root or 0
  check_root(root, what, 3)
  return root
end

function M.broadcast_parameters(model, root)
  root = start("broadcast_parameters", root)
  local ts, names = tensors_of(model, "broadcast_parameters", 2)
  check_layout(ts, names, "broadcast_parameters", 2)
  local d = dist()
  for _, t in ipairs(ts) do
    if t:numel() > 0 then
      if t:is_contiguous() then
        d.broadcast(t:detach(), root)
      else
        local tmp = t:contiguous()
        d.broadcast(tmp, root)
        t:detach():copy_(tmp)
      end
    end
  end
end

-- Walk an optimizer's state_dict in that order: its tensors into ts (their paths into names),
-- its numbers (step counts, hyperparameters) as {table, key} places into nums.
local function walk_state(x, path, ts, names, nums)
  if Tensor.is_tensor(x) then
    ts[#ts + 1], names[#names + 1] = x, path
  elseif type(x) == "table" then
    for _, k in ipairs(sorted_keys(x)) do
      local v = x[k]
      if type(v) == "number" then
        nums[#nums + 1] = { x, k }
      else
        walk_state(v, path .. "." .. tostring(k), ts, names, nums)
      end
    end
  end
end

function M.broadcast_optimizer_state(opt, root)
  root = start("broadcast_optimizer_state", root)
  if type(opt) ~= "table" or type(opt.state_dict) ~= "function" or type(opt.load_state_dict) ~= "function" then
    error(fmt("tn.dist.broadcast_optimizer_state: expected an optimizer, got %s", type(opt)), 2)
  end
  local sd = opt:state_dict()
  local ts, names, places = {}, {}, {}
  walk_state(sd, "state", ts, names, places)
  check_layout(ts, names, "broadcast_optimizer_state", 2)
  local d = dist()
  for _, t in ipairs(ts) do
    if t:numel() > 0 then d.broadcast(t, root) end -- the state tensors themselves (state_dict shares them)
  end
  -- the numbers: step counts, hyperparameters (an lr policy may have moved them on root)
  if #places > 0 then
    local nums = {}
    for i, w in ipairs(places) do nums[i] = w[1][w[2]] end
    local t = Tensor.tensor(nums, { dtype = "f64" })
    d.broadcast(t, root)
    local v = t:tolist()
    for i, w in ipairs(places) do w[1][w[2]] = v[i] end
    opt:load_state_dict(sd) -- copies the tensors onto themselves and takes the numbers
  end
end

return M
