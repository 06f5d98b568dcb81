-- recipes/bench_audio.lua: audio feature benchmarks of tern (tn.audio) on the CPU, side by side
-- with torchaudio 0.13 (recipes/bench_audio_torch.py).
--
--   luajit recipes/bench_audio.lua [--threads=1,2] [--repeat=7] [--peer=torch|none]
--                                  [--seconds=60] [--cases=fbank,fbank_batch,resample,speed]
--
-- Cases (a seeded random signal of --seconds seconds; timing does not depend on the content):
--   fbank        tn.audio.fbank(x, {num_mel_bins=80}) of one 16 kHz waveform (parallel over
--                frames)                 peer: torchaudio.compliance.kaldi.fbank(x[None], num_mel_bins=80)
--   fbank_batch  tn.audio.fbank_batch of --seconds waveforms of 1 s (parallel over waveforms)
--                                        peer: kaldi.fbank in a Python loop over the same list
--   resample     44.1 kHz -> 16 kHz      peer: torchaudio.functional.resample (defaults)
--   speed        speed perturbation 1.1 of a 16 kHz waveform (resample 11 -> 10)
--                                        peer: torchaudio.functional.resample(x, 11, 10)
-- Each case: 2 warm-up calls, then the median wall time of --repeat calls (at least 5).
--
-- Output, one JSON line per case and implementation:
--   {"op":..,"impl":"tern"|"torch","audio_s":..,"threads":N,"median_ms":..,"min_ms":..,
--    "cpu_ms":..,"rtf":..,"x_realtime":..,"peak_bytes":..,"load1":..[,"load_note":..]}
-- (rtf = median seconds / audio seconds; x_realtime = its inverse) and one comparison line
-- per case: {"compare":<op>,"threads":N,"tern_ms":..,"torch_ms":..,"tern_speedup":..} (> 1:
-- tern is faster). Threads: the script re-runs itself once per thread count with
-- OMP_NUM_THREADS / OPENBLAS_NUM_THREADS set (recipes/lib/bench.lua); the peer gets the same.

local script = arg and arg[0] or "recipes/bench_audio.lua"
local here = script:match("^(.*)/[^/]*$") or "."
package.path = here .. "/lib/?.lua;" .. package.path
local lib = require "bench"
lib.use_tree(here)

local json, emit_line, load1, full_gc = lib.json, lib.emit_line, lib.load1, lib.full_gc

local opts, passthrough = lib.parse_args("bench_audio",
  { threads = "1,2", ["repeat"] = "7", peer = "torch", cases = "all", seconds = "60", child = "0" },
  "usage: luajit recipes/bench_audio.lua [--threads=1,2] [--repeat=7] [--peer=torch|none]"
  .. " [--seconds=60] [--cases=fbank,fbank_batch,resample,speed]\n")
local REPEAT = math.max(5, tonumber(opts["repeat"]) or 7)
local THREADS = lib.numbers(opts.threads, "--threads")
local SECONDS = assert(tonumber(opts.seconds), "--seconds must be a number")
lib.check_peer("bench_audio", opts)

local ALL = { "fbank", "fbank_batch", "resample", "speed" }
local _, wanted = lib.choices("bench_audio", "case", opts.cases == "all" and table.concat(ALL, ",") or opts.cases, ALL)

if opts.child ~= "1" then lib.reexec("bench_audio", script, THREADS, passthrough) end

local TH = THREADS[1]
local tn = require "tern"
tn.set_num_threads(TH)

local function bench(fn)
  local xs, cs = lib.timed(fn, { warmup = 2, rep = REPEAT, prep = full_gc })
  return lib.median(xs), lib.min(xs), lib.median(cs)
end

local function signal(rate, seconds)
  tn.manual_seed(0)
  return tn.randn(math.floor(rate * seconds)) * 0.1
end

local CASES = {}
CASES.fbank = function()
  local x = signal(16000, SECONDS)
  return function() local y = tn.audio.fbank(x, { num_mel_bins = 80 }); return y end
end
CASES.fbank_batch = function()
  local list = {}
  tn.manual_seed(0)
  for i = 1, math.floor(SECONDS) do list[i] = tn.randn(16000) * 0.1 end
  return function() local y = tn.audio.fbank_batch(list, { num_mel_bins = 80 }); return y end
end
CASES.resample = function()
  local x = signal(44100, SECONDS)
  return function() local y = tn.audio.resample(x, 44100, 16000); return y end
end
CASES.speed = function()
  local x = signal(16000, SECONDS)
  return function() local y = tn.audio.speed(x, 1.1); return y end
end

local function run_peer(op)
  if opts.peer ~= "torch" then return nil end
  local cmd = string.format("%s %s %s/bench_audio_torch.py --threads=%d --repeat=%d --seconds=%s --cases=%s 2>&1",
    lib.thread_env(TH), lib.PYTHON, here, TH, REPEAT, opts.seconds, op)
  local ms
  lib.echo_peer(cmd, TH, function(line)
    if lib.field(line, "op") == op then ms = lib.field(line, "median_ms") end
  end)
  return ms
end

for _, op in ipairs(ALL) do
  if wanted[op] then
    full_gc()
    tn.reset_peak_memory()
    local fn = CASES[op]()
    local med, mn, cpu = bench(fn)
    local ld = load1()
    local f = {
      { "op", op }, { "impl", "tern" }, { "audio_s", SECONDS }, { "threads", TH }, { "median_ms", med },
      { "min_ms", mn }, { "cpu_ms", cpu }, { "rtf", med / 1000 / SECONDS },
      { "x_realtime", SECONDS / (med / 1000) }, { "repeats", REPEAT },
      { "peak_bytes", tn.memory_stats().peak }, { "device", "cpu" }, { "dtype", "f32" }, { "load1", ld },
    }
    lib.add_load_note(f, ld)
    emit_line(json(f))
    local peer = run_peer(op)
    emit_line(json({ { "compare", op }, { "threads", TH }, { "tern_ms", med }, { "torch_ms", peer },
      { "tern_speedup", lib.ratio(peer, med) } }))
  end
end
