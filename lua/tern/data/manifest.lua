-- tern.data.manifest: read a corpus description into a list of utterances.
--
--   items, summary = tn.data.read_manifest(path_or_dir, {sample_rate = 16000, ...})
--
-- Formats (detected from the path):
--   directory        LibriSpeech layout: */*/<spk>-<chapter>.trans.txt (searched recursively)
--                    with lines "<id> <TEXT>", audio <id>.flac (or <id>.wav) beside it
--   *.csv            OpenSeq2Seq: header wav_filename,wav_filesize,transcript (any column order;
--                    wav_filesize optional; RFC 4180 quoting)
--   *.jsonl, *.json  one JSON object per line: audio_filepath, text, duration (optional), id
--                    (optional)
-- Relative audio paths are resolved against the manifest's directory. Each item is
-- {audio = path, duration = seconds, text = normalised text, id = string, sample_rate = the
-- file's rate}.
--
-- Every audio file is checked with its header (libsndfile): a file that is missing, empty,
-- unreadable or shorter than one 25 ms frame is reported by path and skipped; a file of another
-- sample rate is kept and marked (the feature cache resamples it while loading) unless
-- resample = false, in which case it is skipped too. A malformed line is an error naming
-- file:line. The call logs one summary line:
--   "<path>: N utterances, H hours, K skipped (reasons), R resampled".
local lib = require "tern.lib"
local data = require "tern.data"
local serialize = require "tern.serialize"

local ffi, C = lib.ffi, lib.C
local fmt = string.format

local M = {}

-- text ------------------------------------------------------------------------------------------

-- Lower case; keep letters, apostrophes and spaces; everything else (digits, punctuation,
-- tabs) becomes a space; runs of spaces collapse; no leading or trailing space. ASCII letters
-- are lowered; other UTF-8 letters are kept as they are (only ASCII has a case mapping here),
-- typographic apostrophes (U+2018, U+2019) become "'", and Latin-1 / general punctuation
-- (U+0080..U+00BF, U+2000..U+206F) becomes a space.
function M.normalize_text(s)
  if type(s) ~= "string" then
    error("tn.data.normalize_text: expected a string, got " .. type(s), 2)
  end
  s = s:gsub("\226\128[\152\153]", "'")
  s = s:gsub("\226[\128\129][\128-\191]", " ")
  s = s:gsub("\194[\128-\191]", " ")
  s = s:lower():gsub("[^a-z' \128-\255]", " ")
  s = s:gsub(" +", " "):gsub("^ ", ""):gsub(" $", "")
  return s
end

-- parsers ---------------------------------------------------------------------------------------

local function resolve(base_dir, p)
  if p:sub(1, 1) == "/" then return p end
  if base_dir == "." then return p end
  return base_dir .. "/" .. p
end

local function strip_ext(name)
  return (name:gsub("%.[^./]*$", ""))
end

local function read_lines(path, level)
  local f, err = io.open(path, "rb")
  if not f then error("tn.data.read_manifest: cannot open " .. tostring(err), level + 1) end
  local text = f:read("*a")
  f:close()
  local lines, n = {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    lines[n] = line:gsub("\r$", "")
  end
  if text:sub(-1) == "\n" or text == "" then lines[n] = nil end
  return lines
end

local function bad_line(path, lineno, msg, level)
  error(fmt("tn.data.read_manifest: %s:%d: %s", path, lineno, msg), level + 1)
end

-- LibriSpeech: every *.trans.txt under dir.
local function parse_librispeech(dir, level)
  local entries = {}
  local files = data._find(dir, "*.trans.txt")
  if #files == 0 then
    error(fmt("tn.data.read_manifest: %s: no *.trans.txt files found (expected a LibriSpeech-layout "
      .. "directory: <spk>/<chapter>/<spk>-<chapter>.trans.txt with <id>.flac beside it)", dir), level + 1)
  end
  for _, tpath in ipairs(files) do
    local tdir = data._dirname(tpath)
    for lineno, line in ipairs(read_lines(tpath, level + 1)) do
      if line:find("%S") then
        local id, text = line:match("^%s*(%S+)%s+(.-)%s*$")
        if not id then
          id = line:match("^%s*(%S+)%s*$")
          if not id then bad_line(tpath, lineno, "expected '<utterance id> <transcript>'", level + 1) end
          bad_line(tpath, lineno, fmt("utterance '%s' has no transcript", id), level + 1)
        end
        local audio = tdir .. "/" .. id .. ".flac"
        if not data._stat(audio) then
          local wav = tdir .. "/" .. id .. ".wav"
          if data._stat(wav) then audio = wav end
        end
        entries[#entries + 1] = { audio = audio, text = text, id = id, where = tpath .. ":" .. lineno }
      end
    end
  end
  return entries
end

-- One CSV record (RFC 4180: fields may be quoted, "" inside quotes is a quote).
local function split_csv(line)
  local fields, pos = {}, 1
  while true do
    local c = line:sub(pos, pos)
    if c == '"' then
      local buf, i = {}, pos + 1
      while true do
        local q = line:find('"', i, true)
        if not q then return nil, "unterminated quoted field" end
        buf[#buf + 1] = line:sub(i, q - 1)
        if line:sub(q + 1, q + 1) == '"' then
          buf[#buf + 1] = '"'
          i = q + 2
        else
          pos = q + 1
          break
        end
      end
      fields[#fields + 1] = table.concat(buf)
      local d = line:sub(pos, pos)
      if d == "" then return fields end
      if d ~= "," then return nil, "text after a closing quote" end
      pos = pos + 1
    else
      local comma = line:find(",", pos, true)
      if not comma then
        fields[#fields + 1] = line:sub(pos)
        return fields
      end
      fields[#fields + 1] = line:sub(pos, comma - 1)
      pos = comma + 1
    end
  end
end

local function parse_csv(path, level)
  local lines = read_lines(path, level + 1)
  local base = data._dirname(path)
  local header = lines[1] and split_csv(lines[1])
  local col = {}
  for i, name in ipairs(header or {}) do col[name:match("^%s*(.-)%s*$")] = i end
  if not col.wav_filename or not col.transcript then
    bad_line(path, 1, "expected the OpenSeq2Seq header wav_filename,wav_filesize,transcript, got '"
      .. tostring(lines[1]) .. "'", level + 1)
  end
  local entries = {}
  for lineno = 2, #lines do
    local line = lines[lineno]
    if line:find("%S") then
      local f, err = split_csv(line)
      if not f then bad_line(path, lineno, err, level + 1) end
      if #f ~= #header then
        bad_line(path, lineno, fmt("expected %d fields (%s), got %d", #header, lines[1], #f), level + 1)
      end
      local wav = f[col.wav_filename]
      if wav == "" then bad_line(path, lineno, "empty wav_filename", level + 1) end
      if col.wav_filesize and f[col.wav_filesize] ~= "" and not tonumber(f[col.wav_filesize]) then
        bad_line(path, lineno, "wav_filesize '" .. f[col.wav_filesize] .. "' is not a number", level + 1)
      end
      entries[#entries + 1] = { audio = resolve(base, wav), text = f[col.transcript],
        id = strip_ext(data._basename(wav)), where = path .. ":" .. lineno }
    end
  end
  return entries
end

local function parse_jsonl(path, level)
  local base = data._dirname(path)
  local entries = {}
  for lineno, line in ipairs(read_lines(path, level + 1)) do
    if line:find("%S") then
      local ok, obj = pcall(serialize._json_decode, line, path)
      if not ok then
        local why = tostring(obj):match("malformed safetensors header: (.*)$") or tostring(obj)
        bad_line(path, lineno, "malformed JSON: " .. why, level + 1)
      end
      if type(obj) ~= "table" or obj[1] ~= nil then bad_line(path, lineno, "expected a JSON object", level + 1) end
      if type(obj.audio_filepath) ~= "string" or obj.audio_filepath == "" then
        bad_line(path, lineno, "missing or non-string 'audio_filepath'", level + 1)
      end
      if type(obj.text) ~= "string" then bad_line(path, lineno, "missing or non-string 'text'", level + 1) end
      if obj.duration ~= nil and (type(obj.duration) ~= "number" or obj.duration < 0) then
        bad_line(path, lineno, "'duration' must be a non-negative number, got " .. tostring(obj.duration), level + 1)
      end
      entries[#entries + 1] = { audio = resolve(base, obj.audio_filepath), text = obj.text,
        duration = obj.duration, id = obj.id and tostring(obj.id) or strip_ext(data._basename(obj.audio_filepath)),
        where = path .. ":" .. lineno }
    end
  end
  return entries
end

-- audio checks ----------------------------------------------------------------------------------

local info_rate, info_frames, info_ch = ffi.new("int64_t[1]"), ffi.new("int64_t[1]"), ffi.new("int32_t[1]")

-- nil, reason, detail when the file cannot be used; else rate, frames.
local function probe(path, have_sndfile)
  local st, err = data._stat(path)
  if not st then return nil, "missing", err end
  if st.is_dir then return nil, "unreadable", "a directory" end
  if st.size == 0 then return nil, "empty", "0 bytes" end
  if not have_sndfile then return false end
  if C.tn_audio_info(path, info_rate, info_frames, info_ch) ~= 0 then
    return nil, "unreadable", lib.last_error()
  end
  local frames = tonumber(info_frames[0])
  if frames <= 0 then return nil, "empty", "no samples" end
  return tonumber(info_rate[0]), frames
end

local reason_order = { "missing", "empty", "unreadable", "too short", "wrong sample rate", "no duration",
  "shorter than min_duration", "longer than max_duration" }

local known_opts = { max_duration = true, min_duration = true, sample_rate = true, resample = true,
  normalize = true, quiet = true, log = true, max_reports = true }

-- read_manifest(path, opts) -> items, summary
function M.read_manifest(path, opts)
  opts = opts or {}
  if type(path) ~= "string" then
    error("tn.data.read_manifest: path must be a string (a directory, .csv or .jsonl file), got " .. type(path), 2)
  end
  if type(opts) ~= "table" then error("tn.data.read_manifest: opts must be a table, got " .. type(opts), 2) end
  for k in pairs(opts) do
    if not known_opts[k] then
      error(fmt("tn.data.read_manifest: unknown option '%s' (expected max_duration, min_duration, sample_rate, "
        .. "resample, normalize, quiet, log, max_reports)", tostring(k)), 2)
    end
  end
  local sample_rate = opts.sample_rate or 16000
  if type(sample_rate) ~= "number" or sample_rate <= 0 then
    error("tn.data.read_manifest: sample_rate must be a positive number, got " .. tostring(sample_rate), 2)
  end
  for _, k in ipairs({ "max_duration", "min_duration" }) do
    if opts[k] ~= nil and (type(opts[k]) ~= "number" or opts[k] < 0) then
      error(fmt("tn.data.read_manifest: %s must be a non-negative number, got %s", k, tostring(opts[k])), 2)
    end
  end
  local log = data._logger(opts)
  local max_reports = opts.max_reports or 10

  local st, err = data._stat(path)
  if not st then error("tn.data.read_manifest: " .. err, 2) end
  local entries
  if st.is_dir then
    entries = parse_librispeech(path, 2)
  elseif path:lower():match("%.csv$") then
    entries = parse_csv(path, 2)
  elseif path:lower():match("%.jsonl$") or path:lower():match("%.json$") then
    entries = parse_jsonl(path, 2)
  else
    error(fmt("tn.data.read_manifest: %s: unknown manifest format (expected a LibriSpeech-layout directory, "
      .. "an OpenSeq2Seq .csv or a .jsonl manifest)", path), 2)
  end

  local have_sndfile = C.tn_audio_has_sndfile() ~= 0
  local min_samples = math.ceil(0.025 * sample_rate) -- one 25 ms frame
  local items, skipped, counts, reported = {}, 0, {}, {}
  local resampled, seconds = 0, 0
  local function skip(e, reason, detail)
    skipped = skipped + 1
    counts[reason] = (counts[reason] or 0) + 1
    reported[reason] = (reported[reason] or 0) + 1
    if reported[reason] <= max_reports then
      log(fmt("read_manifest: skipping %s (%s): %s%s", e.audio, e.where, reason, detail and (": " .. detail) or ""))
    end
  end
  for _, e in ipairs(entries) do
    local rate, frames, detail = probe(e.audio, have_sndfile)
    local duration = e.duration
    if rate == nil then
      skip(e, frames, detail)
    else
      local ok = true
      if rate then
        duration = frames / rate
        if rate ~= sample_rate then
          if opts.resample == false then
            skip(e, "wrong sample rate", fmt("%d Hz, expected %d Hz", rate, sample_rate))
            ok = false
          else
            resampled = resampled + 1
            if resampled <= max_reports then
              log(fmt("read_manifest: %s is %d Hz: resampled to %d Hz when its features are computed",
                e.audio, rate, sample_rate))
            end
          end
        end
        if ok and frames / rate * sample_rate < min_samples then
          skip(e, "too short", fmt("%d samples at %d Hz", frames, rate))
          ok = false
        end
      elseif duration == nil then
        skip(e, "no duration", "this build has no libsndfile to read the header")
        ok = false
      end
      if ok and opts.min_duration and duration < opts.min_duration then
        skip(e, "shorter than min_duration", fmt("%.2f s", duration))
        ok = false
      end
      if ok and opts.max_duration and duration > opts.max_duration then
        skip(e, "longer than max_duration", fmt("%.2f s", duration))
        ok = false
      end
      if ok then
        local text = e.text
        if opts.normalize ~= false then text = M.normalize_text(text) end
        items[#items + 1] = { audio = e.audio, duration = duration, text = text, id = e.id,
          sample_rate = rate or sample_rate }
        seconds = seconds + duration
      end
    end
  end
  for reason, n in pairs(reported) do
    if n > max_reports then log(fmt("read_manifest: ... and %d more skipped as %s", n - max_reports, reason)) end
  end

  local parts = {}
  for _, r in ipairs(reason_order) do
    if counts[r] then parts[#parts + 1] = fmt("%d %s", counts[r], r) end
  end
  local summary = { path = path, utterances = #items, hours = seconds / 3600, seconds = seconds,
    skipped = skipped, reasons = counts, resampled = resampled }
  summary.line = fmt("%s: %d utterances, %.2f hours, %d skipped%s%s", path, #items, seconds / 3600, skipped,
    #parts > 0 and (" (" .. table.concat(parts, ", ") .. ")") or "",
    resampled > 0 and fmt(", %d resampled", resampled) or "")
  log(summary.line)
  return items, summary
end

return M
