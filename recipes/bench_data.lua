-- recipes/bench_data.lua: the data pipeline's speed on a manifest (by default the quick
-- synthetic set: luajit recipes/make_synth_data.lua --dir=data/synth_quick --n_train=120
-- --n_test=12 --seed=42 makes it).
--
--   luajit recipes/bench_data.lua [--manifest=data/synth_quick/train.jsonl] [--threads=2]
--        [--speeds=1] [--max_frames=20000] [--prefetch=4] [--work_ms=50] [--epochs=3] [--keep]
--
-- One JSON line per case:
--   features_compute  Kaldi fbank (80 bins) of every utterance into a fresh cache (in a temporary
--                     directory, removed unless --keep): utt/s and seconds of audio per second
--   features_reuse    a second FeatureCache on the same directory finding everything (ms)
--   cmvn              global statistics over the cached features (ms)
--   loader            one epoch of batches (CMVN, padding, SpecAugment) taken as fast as possible,
--                     prefetch 0 (assembled in next()) and --prefetch: batches/s, frames/s, MB/s
--   loader_overlap    the same with a consumer that computes for --work_ms per batch (a stand-in
--                     for a training step): the time next() waited, which prefetching should hide
-- No Python peer: torchaudio's Kaldi fbank speed is the audio benchmark's business; here the
-- figures are the pipeline's own.
local script = arg and arg[0] or "recipes/bench_data.lua"
local here = script:match("^(.*)/[^/]*$") or "."
package.path = here .. "/lib/?.lua;" .. package.path
local bench = require "bench"
bench.use_tree(here)
local tn = require "tern"

local USAGE = [[
usage: luajit recipes/bench_data.lua [--manifest=data/synth_quick/train.jsonl] [--threads=2]
         [--speeds=1] [--max_frames=20000] [--prefetch=4] [--work_ms=50] [--epochs=3] [--keep]
]]
local opts = bench.parse_args("bench_data", { manifest = "data/synth_quick/train.jsonl", threads = "2",
  speeds = "1", max_frames = "20000", prefetch = "4", work_ms = "50", epochs = "3", keep = "0", child = "0" }, USAGE)
local threads = tonumber(opts.threads)
tn.set_num_threads(threads)

local function emit(case, fields)
  local f = { { "bench", "data" }, { "case", case }, { "threads", threads } }
  for _, kv in ipairs(fields) do f[#f + 1] = kv end
  bench.add_load_note(f, bench.load1())
  bench.emit_line(bench.json(f))
end

local items, summary = tn.data.read_manifest(opts.manifest, { quiet = true })
local dir = os.tmpname()
os.remove(dir)
local speeds = bench.numbers(opts.speeds, "--speeds must be numbers")

-- features
local t0 = bench.now_ms()
local cache = tn.data.FeatureCache{ dir = dir, quiet = true }
local entries, info = cache:add(items, { speeds = speeds, progress = false })
local ms = bench.now_ms() - t0
emit("features_compute", { { "utterances", info.computed }, { "audio_s", info.audio_seconds }, { "ms", ms },
  { "utt_per_s", info.computed / ms * 1e3 }, { "x_realtime", info.audio_seconds / ms * 1e3 },
  { "manifest", opts.manifest }, { "hours", summary.hours * #speeds } })

t0 = bench.now_ms()
local again = tn.data.FeatureCache{ dir = dir, quiet = true }
local e2, info2 = again:add(items, { speeds = speeds, progress = false })
emit("features_reuse", { { "utterances", info2.reused }, { "computed", info2.computed },
  { "ms", bench.now_ms() - t0 } })
assert(#e2 == #entries)

t0 = bench.now_ms()
local cmvn = again:cmvn(e2)
emit("cmvn", { { "frames", cmvn.count }, { "ms", bench.now_ms() - t0 } })

-- loader
local batches = tn.data.Batches{ items = e2, max_frames = tonumber(opts.max_frames), seed = 1, cache = again,
  cmvn = cmvn, spec_augment = true }
local function run(prefetch, work_ms, epochs)
  local nb, frames, bytes, wait, work = 0, 0, 0, 0, 0
  local t = bench.now_ms()
  for ep = 1, epochs do
    local it = batches:iter(ep, { prefetch = prefetch })
    for b in it do
      nb = nb + 1
      frames = frames + b.feats:size(1) * b.feats:size(2)
      bytes = bytes + b.feats:numel() * 4
      if work_ms > 0 then -- a busy consumer on this thread
        local stop = bench.now_ms() + work_ms
        while bench.now_ms() < stop do end
      end
    end
    local s = it:stats()
    wait, work = wait + s.wait_s, work + s.work_s
  end
  return nb, frames, bytes, (bench.now_ms() - t) / 1e3, wait, work
end
local epochs = tonumber(opts.epochs)
for _, k in ipairs({ 0, tonumber(opts.prefetch) }) do
  bench.full_gc()
  local nb, frames, bytes, secs, _, work = run(k, 0, epochs)
  emit("loader", { { "prefetch", k }, { "batches", nb }, { "padded_frames", frames }, { "s", secs },
    { "batches_per_s", nb / secs }, { "frames_per_s", frames / secs }, { "MB_per_s", bytes / secs / 1e6 },
    { "assemble_ms_per_batch", work / nb * 1e3 } })
end
local work_ms = tonumber(opts.work_ms)
for _, k in ipairs({ 0, tonumber(opts.prefetch) }) do
  bench.full_gc()
  local nb, _, _, secs, wait, work = run(k, work_ms, 1)
  emit("loader_overlap", { { "prefetch", k }, { "work_ms", work_ms }, { "batches", nb }, { "s", secs },
    { "wait_ms_per_batch", wait / nb * 1e3 }, { "assemble_ms_per_batch", work / nb * 1e3 },
    { "overhead_pct", (secs - nb * work_ms / 1e3) / secs * 100 } })
end

if opts.keep == "0" then
  os.execute("rm -rf " .. tn.data._shell_quote(dir))
else
  io.stderr:write("bench_data: cache kept in " .. dir .. "\n")
end
