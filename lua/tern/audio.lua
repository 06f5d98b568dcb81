-- tern.audio: audio files, resampling, Kaldi-compatible filterbanks and SpecAugment over the C
-- core (core/audio.c, resample.c, fbank.c, augment.c). Loaded on first use of tn.audio.
--
--   tn.audio.load(path, {sample_rate=nil}) -> x (samples) f32 mono, sample_rate
--   tn.audio.info(path) -> {sample_rate=, frames=, channels=, duration=}
--   tn.audio.save(path, x, sample_rate)          16-bit PCM; .flac -> FLAC, else WAV; atomic
--   tn.audio.resample(x, from_rate, to_rate, {lowpass_filter_width=6, rolloff=0.99,
--       resampling_method="sinc_interpolation" | "kaiser_window", beta=nil}) -> y
--   tn.audio.speed(x, factor) -> y               speed perturbation (tempo and pitch), ~n / factor
--   tn.audio.fbank(x, {num_mel_bins=80, ...}) -> (frames, num_mel_bins) f32
--   tn.audio.fbank_batch({x1, x2, ...}, opts) -> {f1, f2, ...}   (OpenMP over waveforms)
--   tn.audio.num_frames(num_samples, opts) -> frames
--   tn.audio.spec_augment(feats, {time_masks=2, time_width=0.1, freq_masks=2, freq_width=27,
--       value=0, lengths=nil, inplace=false}) -> masked feats
--   tn.audio.cmvn_stats({feats1, feats2, ...}) -> mean (F), std (F) f32
--   tn.audio.apply_cmvn(feats, mean, std) -> (feats - mean) / std
--   tn.audio.available() -> {sndfile = bool, fftw = bool}
--
-- Waveforms are f32 in [-1, 1] as libsndfile decodes them (torchaudio.load's convention). fbank
-- takes any float dtype (converted to f32) as a 1-D tensor or (1, samples).
local ffi = require "ffi"
local lib = require "tern.lib"
local Tensor = require "tern.tensor"

local C = lib.C
local fmt = string.format
local is_tensor = Tensor.is_tensor
local OUT = lib.OUT

local M = {}

-- Raise the C error of fname at the caller of the public function (level counted from here).
local function ccheck(fname, status, level)
  if status ~= 0 then
    local msg = ffi.string(C.tn_last_error()):gsub("^[%w_%.]+: ", "", 1)
    error("tn.audio." .. fname .. ": " .. msg, (level or 2) + 1)
  end
end

local function fail(fname, level, msg, ...)
  error("tn.audio." .. fname .. ": " .. fmt(msg, ...), level + 1)
end

local function describe(v)
  if is_tensor(v) then return "a tensor of shape {" .. table.concat(v:shape(), ", ") .. "}" end
  if type(v) == "table" then return fmt("a table of %d elements", #v) end
  return type(v) == "string" and fmt("%q", v) or tostring(v)
end

-- Checks opts (nil or a table) against spec = {name = "number" | "boolean" | "string" | ...}.
local function check_opts(fname, opts, spec, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" or is_tensor(opts) then
    fail(fname, level + 1, "options must be a table, got %s", describe(opts))
  end
  for k, v in pairs(opts) do
    local want = spec[k]
    if not want then
      local names = {}
      for n in pairs(spec) do names[#names + 1] = n end
      table.sort(names)
      fail(fname, level + 1, "unknown option '%s' (expected %s)", tostring(k), table.concat(names, ", "))
    end
    if want ~= "any" and type(v) ~= want then
      fail(fname, level + 1, "option %s must be a %s, got %s", k, want, describe(v))
    end
  end
  return opts
end

local function check_path(fname, path, level)
  if type(path) ~= "string" or path == "" then
    fail(fname, level + 1, "path must be a non-empty string, got %s", describe(path))
  end
end

local function check_rate(fname, name, r, level)
  if type(r) ~= "number" or r <= 0 or r ~= math.floor(r) or r ~= r then
    fail(fname, level + 1, "%s must be a positive integer (Hz), got %s", name, describe(r))
  end
end

-- x as a contiguous f32 tensor (float dtypes converted), for the C calls.
local function as_f32(fname, x, argname, level)
  if not is_tensor(x) then fail(fname, level + 1, "%s must be a tensor, got %s", argname, describe(x)) end
  if x:device() ~= "cpu" then x = x:cpu() end
  local d = x:dtype()
  if not (d == "f32" or d == "f64" or d == "f16" or d == "bf16") then
    fail(fname, level + 1, "%s must be a float tensor, got %s of shape {%s}", argname, d,
      table.concat(x:shape(), ", "))
  end
  if d ~= "f32" then x = x:float() end
  return x:detach():contiguous()
end

local function wrap_out(fname, status, level)
  ccheck(fname, status, level + 1)
  return lib.wrap(OUT[0])
end

-- availability ----------------------------------------------------------------------------------

function M.available()
  return { sndfile = C.tn_audio_has_sndfile() ~= 0, fftw = C.tn_audio_has_fftw() ~= 0 }
end

-- files -------------------------------------------------------------------------------------------

local rate_box = ffi.new("int64_t[2]")
local ch_box = ffi.new("int32_t[1]")

function M.info(path)
  check_path("info", path, 2)
  ccheck("info", C.tn_audio_info(path, rate_box, rate_box + 1, ch_box), 2)
  local sr, frames = tonumber(rate_box[0]), tonumber(rate_box[1])
  return { sample_rate = sr, frames = frames, channels = tonumber(ch_box[0]), duration = frames / sr }
end

local LOAD_OPTS = { sample_rate = "number" }
function M.load(path, opts)
  check_path("load", path, 2)
  opts = check_opts("load", opts, LOAD_OPTS, 2)
  local target = opts.sample_rate or 0
  if opts.sample_rate ~= nil then check_rate("load", "sample_rate", target, 2) end
  OUT[0] = nil
  local x = wrap_out("load", C.tn_audio_load(OUT, rate_box, path, target), 2)
  return x, tonumber(rate_box[0])
end

function M.save(path, x, sample_rate)
  check_path("save", path, 2)
  if not is_tensor(x) then fail("save", 2, "x must be a tensor, got %s", describe(x)) end
  check_rate("save", "sample_rate", sample_rate, 2)
  if x:device() ~= "cpu" then x = x:cpu() end
  ccheck("save", C.tn_audio_save(path, x._c, sample_rate), 2)
end

-- resampling ----------------------------------------------------------------------------------------

local METHODS = { sinc_interpolation = 0, sinc_interp_hann = 0, hann = 0, kaiser_window = 1,
  sinc_interp_kaiser = 1, kaiser = 1 }
local RESAMPLE_OPTS = { lowpass_filter_width = "number", rolloff = "number",
  resampling_method = "string", beta = "number" }

function M.resample(x, from_rate, to_rate, opts)
  local xf = as_f32("resample", x, "x", 2)
  check_rate("resample", "from_rate", from_rate, 2)
  check_rate("resample", "to_rate", to_rate, 2)
  opts = check_opts("resample", opts, RESAMPLE_OPTS, 2)
  local method = METHODS[opts.resampling_method or "sinc_interpolation"]
  if not method then
    fail("resample", 2, "resampling_method must be \"sinc_interpolation\" or \"kaiser_window\", got %q",
      opts.resampling_method)
  end
  local lpw = opts.lowpass_filter_width or 6
  if lpw ~= math.floor(lpw) then fail("resample", 2, "lowpass_filter_width must be an integer, got %s", lpw) end
  OUT[0] = nil
  local r = wrap_out("resample", C.tn_audio_resample(OUT, xf._c, from_rate, to_rate, lpw,
    opts.rolloff or 0.99, method, opts.beta or 0), 2)
  return r
end

function M.speed(x, factor)
  local xf = as_f32("speed", x, "x", 2)
  if type(factor) ~= "number" then fail("speed", 2, "factor must be a number, got %s", describe(factor)) end
  OUT[0] = nil
  local r = wrap_out("speed", C.tn_audio_speed(OUT, xf._c, factor), 2)
  return r
end

-- filterbanks ----------------------------------------------------------------------------------------

local WINDOWS = { hamming = 0, hanning = 1, povey = 2, rectangular = 3, blackman = 4 }
local FBANK_NUM = { "sample_frequency", "frame_length", "frame_shift", "dither",
  "preemphasis_coefficient", "low_freq", "high_freq", "energy_floor", "blackman_coeff" }
local FBANK_BOOL = { "remove_dc_offset", "round_to_power_of_two", "snip_edges", "raw_energy",
  "use_energy", "htk_compat", "use_log_fbank", "use_power" }
local FBANK_OPTS = { num_mel_bins = "number", window_type = "string" }
for _, k in ipairs(FBANK_NUM) do FBANK_OPTS[k] = "number" end
for _, k in ipairs(FBANK_BOOL) do FBANK_OPTS[k] = "boolean" end

-- A filled tn_fbank_opts from a Lua options table.
local function fbank_opts(fname, opts, level)
  opts = check_opts(fname, opts, FBANK_OPTS, level + 1)
  local o = ffi.new("tn_fbank_opts")
  C.tn_fbank_opts_init(o)
  for _, k in ipairs(FBANK_NUM) do
    if opts[k] ~= nil then o[k] = opts[k] end
  end
  for _, k in ipairs(FBANK_BOOL) do
    if opts[k] ~= nil then o[k] = opts[k] and 1 or 0 end
  end
  if opts.num_mel_bins ~= nil then
    local n = opts.num_mel_bins
    if n ~= math.floor(n) or n <= 3 or n > 100000 then
      fail(fname, level + 1, "num_mel_bins must be an integer > 3, got %s", tostring(n))
    end
    o.num_mel_bins = n
  end
  if opts.window_type ~= nil then
    local w = WINDOWS[opts.window_type]
    if not w then
      fail(fname, level + 1, "window_type must be one of hamming, hanning, povey, rectangular, "
        .. "blackman, got %q", opts.window_type)
    end
    o.window_type = w
  end
  return o
end

local function wave_1d(fname, x, argname, level)
  local xf = as_f32(fname, x, argname, level + 1)
  if xf:dim() == 2 and xf:size(1) == 1 then xf = xf:select(1, 1):contiguous() end
  if xf:dim() ~= 1 then
    fail(fname, level + 1, "%s must be 1-D (samples) or (1, samples), got shape {%s}", argname,
      table.concat(xf:shape(), ", "))
  end
  return xf
end

function M.fbank(x, opts)
  local xf = wave_1d("fbank", x, "x", 2)
  local o = fbank_opts("fbank", opts, 2)
  OUT[0] = nil
  local r = wrap_out("fbank", C.tn_fbank(OUT, xf._c, o), 2)
  return r
end

function M.fbank_batch(list, opts)
  if type(list) ~= "table" or is_tensor(list) then
    fail("fbank_batch", 2, "expected a list of waveforms, got %s", describe(list))
  end
  local n = #list
  local keep, ptrs = {}, ffi.new("const tn_tensor *[?]", math.max(n, 1))
  for i = 1, n do
    keep[i] = wave_1d("fbank_batch", list[i], "waveform " .. i, 2)
    ptrs[i - 1] = keep[i]._c
  end
  local o = fbank_opts("fbank_batch", opts, 2)
  local outs = ffi.new("tn_tensor *[?]", math.max(n, 1))
  ccheck("fbank_batch", C.tn_fbank_batch(outs, ptrs, n, o), 2)
  local r = {}
  for i = 1, n do r[i] = lib.wrap(outs[i - 1]) end
  return r
end

local frames_box = ffi.new("int64_t[1]")
function M.num_frames(num_samples, opts)
  if type(num_samples) ~= "number" or num_samples < 0 then
    fail("num_frames", 2, "num_samples must be a non-negative number, got %s", describe(num_samples))
  end
  local o = fbank_opts("num_frames", opts, 2)
  ccheck("num_frames", C.tn_fbank_num_frames(frames_box, num_samples, o), 2)
  return tonumber(frames_box[0])
end

-- SpecAugment and normalisation ------------------------------------------------------------------------

local SA_OPTS = { time_masks = "number", time_width = "number", freq_masks = "number",
  freq_width = "number", value = "number", lengths = "any", inplace = "boolean" }

function M.spec_augment(feats, opts)
  if not is_tensor(feats) then fail("spec_augment", 2, "feats must be a tensor, got %s", describe(feats)) end
  opts = check_opts("spec_augment", opts, SA_OPTS, 2)
  local lengths = opts.lengths
  if lengths ~= nil then
    if type(lengths) == "table" and not is_tensor(lengths) then lengths = Tensor.tensor(lengths, { dtype = "i64" }) end
    if not is_tensor(lengths) then
      fail("spec_augment", 2, "option lengths must be a tensor or a list, got %s", describe(lengths))
    end
    lengths = lengths:cpu():contiguous()
  end
  for _, k in ipairs({ "time_masks", "freq_masks", "freq_width" }) do
    local v = opts[k]
    if v ~= nil and (v < 0 or v ~= math.floor(v)) then
      fail("spec_augment", 2, "%s must be a non-negative integer, got %s", k, tostring(v))
    end
  end
  local target = feats
  if not opts.inplace then
    target = feats:detach():cpu():float():contiguous()
    if target:data_ptr() == feats:data_ptr() then target = target:clone() end
  end
  ccheck("spec_augment", C.tn_spec_augment(target._c, lengths and lengths._c or nil,
    opts.time_masks or 2, opts.time_width or 0.1, opts.freq_masks or 2, opts.freq_width or 27,
    opts.value or 0), 2)
  return target
end

function M.cmvn_stats(list)
  if is_tensor(list) then list = { list } end
  if type(list) ~= "table" or #list == 0 then
    fail("cmvn_stats", 2, "expected a non-empty list of (T, F) feature tensors, got %s", describe(list))
  end
  local first = list[1]
  if not is_tensor(first) or first:dim() ~= 2 then
    fail("cmvn_stats", 2, "feature 1 must be a (T, F) tensor, got %s", describe(first))
  end
  local F = first:size(2)
  local stats = Tensor.zeros(2, F, { dtype = "f64" })
  local count = ffi.new("int64_t[1]")
  for i, f in ipairs(list) do
    if not is_tensor(f) then fail("cmvn_stats", 2, "feature %d must be a tensor, got %s", i, describe(f)) end
    if f:device() ~= "cpu" then f = f:cpu() end
    if f:dim() ~= 2 or f:size(2) ~= F then
      fail("cmvn_stats", 2, "feature %d must be (T, %d) like feature 1, got shape {%s}", i, F,
        table.concat(f:shape(), ", "))
    end
    local st = C.tn_cmvn_accumulate(stats._c, count, f._c)
    if st ~= 0 then
      local msg = ffi.string(C.tn_last_error()):gsub("^[%w_%.]+: ", "", 1)
      error(fmt("tn.audio.cmvn_stats: feature %d: %s", i, msg), 2)
    end
  end
  local n = tonumber(count[0])
  if n == 0 then fail("cmvn_stats", 2, "the features have no frames") end
  local mean = stats:select(1, 1) / n
  local var = (stats:select(1, 2) / n - mean * mean):clamp(0, math.huge)
  local std = var:sqrt():clamp(1e-5, math.huge)
  return mean:float(), std:float()
end

function M.apply_cmvn(feats, mean, std)
  for _, a in ipairs({ { feats, "feats" }, { mean, "mean" }, { std, "std" } }) do
    if not is_tensor(a[1]) then fail("apply_cmvn", 2, "%s must be a tensor, got %s", a[2], describe(a[1])) end
  end
  local F = feats:size(-1)
  if mean:numel() ~= F or std:numel() ~= F then
    fail("apply_cmvn", 2, "mean and std must have %d elements (feats {%s}), got {%s} and {%s}", F,
      table.concat(feats:shape(), ", "), table.concat(mean:shape(), ", "), table.concat(std:shape(), ", "))
  end
  return (feats - mean:reshape(F):to(feats:dtype())) / std:reshape(F):to(feats:dtype())
end

return M
