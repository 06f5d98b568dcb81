-- tern: a Lua-scriptable neural toolkit for fast speech models.
--
--   local tn = require "tern"
--   local x = tn.randn(2, 3):requires_grad(true)
--   local y = (x * x):sum()
--   y:backward()          -- x.grad == 2 * x
--
-- Modules load in dependency order: the FFI binding, autograd, the Tensor class, its math,
-- printing, safetensors I/O.
local lib = require "tern.lib"
local autograd = require "tern.autograd"
local Tensor = require "tern.tensor"
local ops = require "tern.ops"
require "tern.format"
local serialize = require "tern.serialize"

local ffi, C = lib.ffi, lib.C

local tn = {
  _VERSION = ffi.string(C.tn_version()),
  C = C,
  Tensor = Tensor,
  autograd = autograd,
  dtypes = { "f32", "f64", "f16", "bf16", "i32", "i64", "u8" },
}

-- creation
for _, name in ipairs({ "tensor", "empty", "zeros", "ones", "full", "arange", "eye", "rand",
  "randn", "randint", "manual_seed", "rng_state", "set_rng_state", "cat", "stack", "where" }) do
  tn[name] = Tensor[name]
end
for _, name in ipairs({ "empty_like", "zeros_like", "ones_like", "full_like", "rand_like",
  "randn_like" }) do
  tn[name] = Tensor[name]
end

-- functional forms of the methods: tn.add(a, b), tn.exp(a), tn.sum(a, dim), ...
for _, name in ipairs({ "add", "sub", "mul", "div", "pow", "maximum", "minimum", "atan2",
  "eq", "ne", "lt", "le", "gt", "ge", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh",
  "sigmoid", "relu", "sign", "log1p", "expm1", "sin", "cos", "reciprocal", "square", "floor",
  "ceil", "round", "logical_not", "clamp", "masked_fill", "sum", "mean", "var", "std",
  "logsumexp", "max", "min", "argmax", "argmin", "softmax", "log_softmax", "matmul", "mm",
  "bmm", "gather", "scatter_add", "index_select", "index_add", "allclose", "equal",
  "reshape", "view", "transpose", "permute", "narrow", "select", "unsqueeze", "squeeze",
  "expand", "contiguous", "clone", "detach", "sum_to" }) do
  tn[name] = Tensor[name]
end
tn.embedding = ops.embedding
tn.promote_types = function(a, b)
  return lib.dtype_names[ops.promote(lib.dtype_of(a, "a", 2), lib.dtype_of(b, "b", 2))]
end

function tn.is_tensor(x) return Tensor.is_tensor(x) end

-- autograd
tn.no_grad = autograd.no_grad
tn.enable_grad = autograd.enable_grad
tn.is_grad_enabled = autograd.is_enabled
tn.set_grad_enabled = autograd.set_enabled

-- files
tn.nn = require "tern.nn"
tn.rnnt = require "tern.rnnt"
tn.optim = require "tern.optim"
tn.checkpoint = require "tern.checkpoint"
tn.amp = require "tern.amp"
tn.data = require "tern.data" -- tern.data loads its submodules on first use
tn.cuda = require "tern.cuda"
tn.dist = require "tern.dist"

tn.save = serialize.save
tn.load = serialize.load

-- runtime
function tn.set_num_threads(n)
  if type(n) ~= "number" then error("set_num_threads: expected a number", 2) end
  C.tn_set_num_threads(n)
end
function tn.get_num_threads() return C.tn_get_num_threads() end
-- Ctrl-C / SIGTERM for long jobs: tn.signal_catch(true) makes them set a flag that
-- tn.signal_pending() returns (2 = SIGINT, 15 = SIGTERM, 0 = none) so a loop can save and exit;
-- a second Ctrl-C ends the process at once. tn.signal_catch(false) restores the handlers.
function tn.signal_catch(on)
  if C.tn_signal_catch((on and on ~= 0) and 1 or 0) ~= 0 then error("signal_catch: sigaction failed", 2) end
end
function tn.signal_pending() return C.tn_signal_pending() end
function tn.memory_stats(device)
  local d = lib.device_of(device, "memory_stats", 2)
  return {
    current = tonumber(C.tn_memory_current(d)),
    peak = tonumber(C.tn_memory_peak(d)),
    live = tonumber(C.tn_memory_live(d)),
    cached = tonumber(C.tn_memory_cached(d)),
  }
end
-- Bytes the CPU allocator keeps cached for reuse, and a way to return them to the system.
function tn.memory_cached(device) return tonumber(C.tn_memory_cached(lib.device_of(device, "memory_cached", 2))) end
function tn.empty_cache(device) C.tn_memory_empty_cache(lib.device_of(device, "empty_cache", 2)) end
function tn.set_cache_limit(bytes, device)
  if type(bytes) ~= "number" or bytes < 0 then error("set_cache_limit: bytes must be a non-negative number", 2) end
  C.tn_memory_set_cache_limit(lib.device_of(device, "set_cache_limit", 2), bytes)
end
function tn.reset_peak_memory(device) C.tn_memory_reset_peak(lib.device_of(device, "reset_peak_memory", 2)) end
function tn.has_cuda() return C.tn_has_cuda() ~= 0 end
function tn.has_mpi() return C.tn_has_mpi() ~= 0 end
function tn.has_nccl() return C.tn_has_nccl() ~= 0 end

setmetatable(tn, { __index = function(t, k) if k == "audio" then t.audio = require "tern.audio"; return t.audio end end }) -- tn.audio loads on first use

return tn
