-- recipes/scaling_model.lua: expected data-parallel efficiency from an alpha-beta cost model of
-- ring allreduce (Patarasuk & Yuan; the model behind Horovod's and NCCL-tests' bus bandwidth).
--
--   luajit recipes/scaling_model.lua --fit=bench.jsonl --grad_mb=14.95 --step_ms=434
--   luajit recipes/scaling_model.lua --alpha_us=10 --busbw_GBps=50 --grad_mb=14.95 --step_ms=50
--
-- A ring allreduce of G bytes over N ranks takes
--   T(N) = 2 (N - 1) alpha + 2 (N - 1) / N * G / busbw
-- (2 (N - 1) steps, each paying the latency alpha; every rank sends and receives 2 (N - 1) / N
-- of the buffer at the link's bus bandwidth). A step of compute time C (forward + backward +
-- update, per rank, at a fixed per-rank batch) then runs at efficiency
--   no overlap:  C / (C + T)
--   overlap:     C / (C + exposed)             (buckets averaged while backward, a fraction f
--                                                of C, still runs; the last bucket cannot hide)
-- With buckets of at most F bytes (DistributedOptimizer's fusion_mb) the gradient is k =
-- ceil(G / F) allreduces in a row, each paying the latency: T = k T_b, T_b the time of one
-- bucket, and overlap hides all of it but the last bucket: exposed = max(T_b, T - f C).
-- fp16 compression halves G. --fit reads recipes/bench_dist.lua's allreduce JSON lines and
-- takes alpha and busbw by least squares of the relative error of t = 2 (n-1) alpha +
-- 2 (n-1)/n * bytes / busbw over the sizes up to --fit_max bytes. Prints one JSON line per rank count.
local script = arg and arg[0] or "recipes/scaling_model.lua"
local here = script:match("^(.*)/[^/]*$") or "."
package.path = here .. "/lib/?.lua;" .. package.path
local lib = require "bench"

local usage = "usage: luajit recipes/scaling_model.lua [--fit=bench.jsonl [--fit_max=16777216]] "
  .. "[--alpha_us=10] [--busbw_GBps=1] --grad_mb=MB --step_ms=MS [--fusion_mb=64] [--backward_frac=0.63] "
  .. "[--ranks=8,64,512]\n"
local opts = lib.parse_args("scaling_model", { fit = "", fit_max = "16777216", alpha_us = "10", busbw_GBps = "1",
  grad_mb = "", step_ms = "", fusion_mb = "64", backward_frac = "0.63", ranks = "8,64,512" }, usage)

local function num(name)
  local v = tonumber(opts[name])
  if not v or v < 0 then
    io.stderr:write("scaling_model: --" .. name .. " must be a non-negative number, got '" .. opts[name] .. "'\n"
      .. usage)
    os.exit(2)
  end
  return v
end

local alpha, busbw = num("alpha_us") * 1e-6, num("busbw_GBps") * 1e9
local source = "given"
if opts.fit ~= "" then
  local f = io.open(opts.fit)
  if not f then
    io.stderr:write("scaling_model: cannot read " .. opts.fit .. "\n")
    os.exit(2)
  end
  -- least squares of t = a * x1 + b * x2, x1 = 2 (n - 1), x2 = 2 (n - 1) / n * bytes
  local s11, s12, s22, s1t, s2t, m = 0, 0, 0, 0, 0, 0
  local fit_max = num("fit_max")
  for line in f:lines() do
    local bytes = tonumber(line:match('"bytes":([%d.eE+-]+)'))
    local ms = tonumber(line:match('"median_ms":([%d.eE+-]+)'))
    local n = tonumber(line:match('"ranks":(%d+)'))
    if line:find('"op":"allreduce"', 1, true) and bytes and ms and n and n > 1 and bytes <= fit_max then
      local x1, x2, t = 2 * (n - 1), 2 * (n - 1) / n * bytes, ms * 1e-3
      local w = 1 / (t * t) -- relative errors: the small sizes decide alpha, the large ones busbw
      s11, s12, s22 = s11 + w * x1 * x1, s12 + w * x1 * x2, s22 + w * x2 * x2
      s1t, s2t, m = s1t + w * x1 * t, s2t + w * x2 * t, m + 1
    end
  end
  f:close()
  local det = s11 * s22 - s12 * s12
  if m < 2 or det == 0 then
    io.stderr:write("scaling_model: " .. opts.fit .. " holds fewer than 2 allreduce sizes of 2+ ranks up to "
      .. opts.fit_max .. " bytes\n")
    os.exit(2)
  end
  local a = (s1t * s22 - s2t * s12) / det
  local b = (s11 * s2t - s12 * s1t) / det
  alpha, busbw = math.max(a, 0), b > 0 and 1 / b or math.huge
  source = "fit of " .. m .. " sizes in " .. opts.fit
end

local G = num("grad_mb") * 1e6
local C = num("step_ms") * 1e-3
local fb = num("backward_frac")
local F = num("fusion_mb") * 2 ^ 20
local function eff(N, bytes)
  local k = F > 0 and math.max(1, math.ceil(bytes / F)) or 1
  local Tb = 2 * (N - 1) * alpha + 2 * (N - 1) / N * (bytes / k) / busbw
  local T = k * Tb
  return T, C / (C + T), C / (C + math.max(Tb, T - fb * C)), k
end
for r in opts.ranks:gmatch("%d+") do
  local N = tonumber(r)
  local T, e, eo, k = eff(N, G)
  local T16, e16, eo16 = eff(N, G / 2)
  lib.emit_line(lib.json({
    { "ranks", N }, { "alpha_us", alpha * 1e6 }, { "busbw_GBps", busbw / 1e9 }, { "params_from", source },
    { "grad_MB", G / 1e6 }, { "step_ms", C * 1e3 }, { "buckets", k }, { "allreduce_ms", T * 1e3 },
    { "efficiency", e }, { "efficiency_overlap", eo },
    { "allreduce_fp16_ms", T16 * 1e3 }, { "efficiency_fp16_overlap", eo16 },
  }))
end
