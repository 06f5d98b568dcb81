-- tern.data: speech corpora in, padded feature batches out.
--
--   local items = tn.data.read_manifest("data/train.jsonl")           -- manifest.lua
--   local cache = tn.data.FeatureCache{ dir = "exp/feats" }            -- features.lua
--   local train = cache:add(items, { speeds = { 0.9, 1.0, 1.1 } })
--   local batches = tn.data.Batches{ items = train, cache = cache, cmvn = cache:cmvn(train),
--     max_frames = 20000, seed = 1 }                                    -- batches.lua
--   for batch in batches:iter(epoch) do ... batch.feats (B, T, 80), batch.feat_lens ... end
--   local sp = tn.data.SentencePiece("m.model"); sp:encode(text); sp:decode(ids)  -- spm.lua
--
-- The submodules load on first use (tn.data.X), so `require "tern"` stays cheap. The few
-- helpers shared by them (files, logging) live here.
local lib = require "tern.lib"

local ffi, C = lib.ffi, lib.C
local fmt = string.format

local M = {}

local lazy = {
  read_manifest = { "tern.data.manifest", "read_manifest" },
  normalize_text = { "tern.data.manifest", "normalize_text" },
  FeatureCache = { "tern.data.features", "FeatureCache" },
  fbank_opts = { "tern.data.features", "fbank_opts" },
  Batches = { "tern.data.batches", "Batches" },
  frames_of = { "tern.data.batches", "frames_of" },
  SentencePiece = { "tern.data.spm", nil },
}
setmetatable(M, {
  __index = function(t, k)
    local where = lazy[k]
    if not where then return nil end
    local mod = require(where[1])
    local v = where[2] and mod[where[2]] or mod
    rawset(t, k, v)
    return v
  end,
})

-- files ----------------------------------------------------------------------------------------

local stat_size, stat_mtime, stat_dir = ffi.new("int64_t[1]"), ffi.new("int64_t[1]"), ffi.new("int32_t[1]")

-- stat(path): nil, message when it fails; else {size=, mtime_ns=, is_dir=} (numbers/boolean).
function M._stat(path)
  if C.tn_file_stat(path, stat_size, stat_mtime, stat_dir) ~= 0 then
    return nil, lib.last_error()
  end
  return { size = tonumber(stat_size[0]), mtime_ns = tonumber(stat_mtime[0]), is_dir = stat_dir[0] ~= 0 }
end

function M._shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Regular files under dir (recursively) whose name matches the shell glob `pattern`, sorted.
function M._find(dir, pattern, maxdepth)
  local cmd = fmt("find %s %s-type f -name %s 2>/dev/null", M._shell_quote(dir),
    maxdepth and fmt("-maxdepth %d ", maxdepth) or "", M._shell_quote(pattern))
  local p = io.popen(cmd)
  if not p then error("tn.data: cannot run find on " .. dir, 2) end
  local out = {}
  for line in p:lines() do out[#out + 1] = line end
  p:close()
  table.sort(out)
  return out
end

function M._dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

function M._basename(path)
  return path:match("([^/]*)$")
end

-- path made absolute against the working directory (no normalisation of . and ..).
local cwd
function M._abspath(path)
  if path:sub(1, 1) == "/" then return path end
  if not cwd then
    cwd = os.getenv("PWD")
    if not cwd or not M._stat(cwd) then
      local p = io.popen("pwd")
      cwd = p and p:read("*l") or "."
      if p then p:close() end
    end
  end
  return cwd .. "/" .. path:gsub("^%./", "")
end

function M._mkdir_p(dir)
  local st = M._stat(dir)
  if st and st.is_dir then return end
  os.execute("mkdir -p " .. M._shell_quote(dir))
  st = M._stat(dir)
  if not st or not st.is_dir then error("tn.data: cannot create directory " .. dir, 3) end
end

-- 16 hex digits of tn_data_checksum(s).
function M._hash(s)
  local h = C.tn_data_checksum(s, #s)
  return fmt("%08x%08x", tonumber(bit.rshift(h, 32)), tonumber(bit.band(h, 0xffffffffULL)))
end

-- logging ----------------------------------------------------------------------------------------

-- Where tn.data's messages go: a function taking one line (default: stderr). quiet = true
-- in the options of a call silences it.
function M._logger(opts)
  if opts and opts.quiet then return function() end end
  if opts and type(opts.log) == "function" then return opts.log end
  return function(line) io.stderr:write(line, "\n") end
end

-- Seconds, as a monotonic-enough wall clock (os.clock is CPU time; os.time has 1 s steps).
-- (declared under a private name: other modules declare clock_gettime with their own types)
ffi.cdef [[
  typedef struct tn_data_timespec { long tv_sec; long tv_nsec; } tn_data_timespec;
  int tn_data_clock_gettime(int clk_id, tn_data_timespec *tp) __asm__("clock_gettime");
]]
local ts = ffi.new("tn_data_timespec")
function M._now()
  ffi.C.tn_data_clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + 1e-9 * tonumber(ts.tv_nsec)
end

function M._hms(s)
  s = math.max(0, math.floor(s + 0.5))
  if s >= 3600 then return fmt("%d:%02d:%02d", math.floor(s / 3600), math.floor(s / 60) % 60, s % 60) end
  return fmt("%d:%02d", math.floor(s / 60), s % 60)
end

return M
