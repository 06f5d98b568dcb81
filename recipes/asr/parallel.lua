-- recipes/asr/parallel.lua — what the ASR recipe does differently with --dist=true (one
-- process per rank under mpirun; Horovod's recipe): rank 0 prepares the data, features and
-- tokenizer while the others wait, then each rank trains on its shard with gradients averaged
-- by tn.dist.DistributedOptimizer; rank 0 alone prints, logs and writes checkpoints; every
-- rank decodes a share of the test set and the error counts are summed.
--
-- Without --dist every function here is the single-process case (rank 0 of 1), so the recipe
-- has one code path.
local tn = require "tern"

local M = {}
local fmt = string.format

-- Set up from cfg: tn.dist.init for --dist=true, the GPU of this rank for --device=cuda.
-- Returns { on, rank, size, local_rank, main }.
function M.setup(cfg)
  local P = { on = false, rank = 0, size = 1, local_rank = 0, main = true }
  if cfg.dist then
    local ok, why = tn.dist.available()
    if not ok then error("asr_train: --dist=true: " .. tostring(why), 0) end
    tn.dist.init{ backend = cfg.dist_backend, timeout = cfg.dist_timeout }
    P.on = true
    P.rank, P.size, P.local_rank = tn.dist.rank(), tn.dist.size(), tn.dist.local_rank()
    P.main = P.rank == 0
  end
  if cfg.device == "cuda" then
    if not tn.cuda.is_available() then
      error("asr_train: --device=cuda but no CUDA device is available (tern built without CUDA, or no GPU)", 0)
    end
    local n = tn.cuda.device_count()
    if P.on and P.local_rank >= n then
      error(fmt("asr_train: rank %d is local rank %d of its node, which has only %d GPU%s: start at most %d "
        .. "ranks per node", P.rank, P.local_rank, n, n == 1 and "" or "s", n), 0)
    end
    tn.cuda.set_device(P.local_rank)
  elseif cfg.device ~= "cpu" then
    error("asr_train: --device must be cpu or cuda, got " .. tostring(cfg.device), 0)
  end
  return P
end

-- fn() on rank 0 first, then on the others (data preparation, caches, a tokenizer model: files
-- the other ranks then read). The wait may be long (the default data set takes minutes), so it
-- is not bounded by the collectives' timeout.
function M.main_first(P, fn)
  if not P.on then return fn() end
  local r
  if P.main then r = { fn() } end
  local prev = tn.dist.get_timeout()
  tn.dist.set_timeout(7 * 24 * 3600) -- rank 0 may take long; a failure there aborts the job
  tn.dist.barrier()
  tn.dist.set_timeout(prev)
  if not P.main then r = { fn() } end
  return unpack(r)
end

-- Do all ranks stop? (any rank interrupted or past the deadline: all stop at the same step,
-- so no rank is left waiting in a collective). Returns sig (the largest), past_deadline.
function M.agree_stop(P, sig, past)
  if not P.on then return sig, past end
  local t = tn.tensor({ sig, past and 1 or 0 }, { dtype = "f64" })
  tn.dist.allreduce(t, { op = "max" })
  local v = t:tolist()
  return v[1], v[2] ~= 0
end

-- The share of a list this rank decodes: items rank+1, rank+1+size, ...
function M.shard(P, list)
  if not P.on then return list end
  local r = {}
  for i = P.rank + 1, #list, P.size do r[#r + 1] = list[i] end
  return r
end

-- Sums of numbers over the ranks (a list of numbers; returned summed).
function M.sum(P, nums)
  if not P.on or #nums == 0 then return nums end
  local t = tn.tensor(nums, { dtype = "f64" })
  tn.dist.allreduce(t, { op = "sum" })
  return t:tolist()
end

-- Every rank's string, in rank order, on every rank (an allgather of the lengths, then of the
-- bytes padded to the longest).
function M.gather_strings(P, s)
  if not P.on then return { s } end
  local lens = tn.dist.allgather(tn.tensor({ #s }, { dtype = "i64" })):tolist()
  local width = 1
  for _, n in ipairs(lens) do width = math.max(width, n) end
  local bytes = {}
  for i = 1, width do bytes[i] = i <= #s and s:byte(i) or 0 end
  local all = tn.dist.allgather(tn.tensor(bytes, { dtype = "i32" })):tolist()
  local out = {}
  for k = 1, #lens do
    local chars = {}
    for i = 1, lens[k] do chars[i] = string.char(all[(k - 1) * width + i]) end
    out[k] = table.concat(chars)
  end
  return out
end

-- A word-error scorer's counts summed over the ranks (rank 0 reports them).
function M.sum_scorer(P, sc)
  if not P.on then return sc end
  local keys = { "we", "wn", "ce", "cn", "sub", "del", "ins", "sents", "sent_err" }
  local v = {}
  for i, k in ipairs(keys) do v[i] = sc[k] end
  v = M.sum(P, v)
  for i, k in ipairs(keys) do sc[k] = v[i] end
  return sc
end

return M
