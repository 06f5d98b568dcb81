-- recipes/asr/report.lua: what the user sees while the recipe runs.
--
--   local bar = M.Progress{total=, label=}   bar:update(done, {loss=, lr=, scale=, ups=})
--       one line rewritten in place on a terminal (a line every `every` seconds otherwise):
--       epoch, step, percentage, loss, learning rate, loss scale, utterances/s and ETA
--   local log = M.JsonLog(path)               log:write{...} appends one JSON object per line
--   M.plot_curves(dir, rows)                  PNG plots with gnuplot (loss, WER per epoch)
--   M.plot_lattice(dir, occ, ranges, title)   the occupation of one utterance's RNN-T lattice
--                                             with its pruning band (PNG)
-- Plots need gnuplot (Debian gnuplot-nox); without it they are skipped with one note.
local M = {}

local ffi = require "ffi"
pcall(ffi.cdef, "int isatty(int fd);")
-- (a private name for clock_gettime: other modules declare it with their own struct types)
pcall(ffi.cdef, [[typedef struct { long tv_sec; long tv_nsec; } asr_timespec;
int asr_clock_gettime(int, asr_timespec *) __asm__("clock_gettime");]])
local ts = ffi.new("asr_timespec")

-- monotonic seconds
local function now()
  ffi.C.asr_clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
M.now = now

local function hms(s)
  if s ~= s or s == math.huge then return "--:--" end
  s = math.floor(s + 0.5)
  local h, m = math.floor(s / 3600), math.floor(s % 3600 / 60)
  if h > 0 then return string.format("%d:%02d:%02d", h, m, s % 60) end
  return string.format("%02d:%02d", m, s % 60)
end
M.hms = hms

local Progress = {}
Progress.__index = Progress

function M.Progress(o)
  local tty = ffi.C.isatty(2) == 1
  return setmetatable({ total = o.total, label = o.label or "", t0 = now(), last = -1e9, every = o.every or 10,
    tty = tty, width = 20 }, Progress)
end

-- done: units finished (of total); info: {epoch=, step=, loss=, lr=, scale=, ups=, eta=}
function Progress:update(done, info, force)
  local t = now()
  if not force and not self.tty and t - self.last < self.every then return end
  if not force and self.tty and t - self.last < 0.2 then return end
  self.last = t
  local frac = self.total > 0 and math.min(1, done / self.total) or 0
  local fill = math.floor(frac * self.width + 0.5)
  local eta = info.eta or (frac > 0 and (t - self.t0) * (1 - frac) / frac or math.huge)
  local parts = { self.label, "[" .. string.rep("#", fill) .. string.rep(".", self.width - fill) .. "]",
    string.format("%3d%%", math.floor(frac * 100)) }
  if info.epoch then parts[#parts + 1] = "epoch " .. info.epoch end
  if info.step then parts[#parts + 1] = "step " .. info.step end
  if info.loss then parts[#parts + 1] = string.format("loss %.3f", info.loss) end
  if info.lr then parts[#parts + 1] = string.format("lr %.2e", info.lr) end
  if info.scale then parts[#parts + 1] = string.format("scale %g", info.scale) end
  if info.ups then parts[#parts + 1] = string.format("%.1f utt/s", info.ups) end
  parts[#parts + 1] = "ETA " .. hms(eta)
  local line = table.concat(parts, " ")
  if self.tty then
    io.stderr:write("\r", line, "\27[K")
  else
    io.stderr:write(line, "\n")
  end
  io.stderr:flush()
end

function Progress:finish(msg)
  if self.tty then io.stderr:write("\n") end
  if msg then io.stderr:write(msg, "\n") end
end

-- JSON of plain values (numbers, strings, booleans, nested tables with string keys or lists)
local function json(v)
  local ty = type(v)
  if ty == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
    return string.format("%.6g", v)
  elseif ty == "string" then
    return '"' .. v:gsub('[%c"\\]', function(c)
      if c == '"' then return '\\"' elseif c == "\\" then return "\\\\" end
      return string.format("\\u%04x", c:byte())
    end) .. '"'
  elseif ty == "boolean" then
    return tostring(v)
  elseif ty == "table" then
    if #v > 0 or next(v) == nil then
      local p = {}
      for i = 1, #v do p[i] = json(v[i]) end
      return "[" .. table.concat(p, ",") .. "]"
    end
    local ks = {}
    for k in pairs(v) do ks[#ks + 1] = tostring(k) end
    table.sort(ks)
    local p = {}
    for _, k in ipairs(ks) do p[#p + 1] = json(k) .. ":" .. json(v[k]) end
    return "{" .. table.concat(p, ",") .. "}"
  end
  return "null"
end
M.json = json

local JsonLog = {}
JsonLog.__index = JsonLog

function M.JsonLog(path)
  local f = assert(io.open(path, "a"))
  return setmetatable({ f = f, path = path }, JsonLog)
end

function JsonLog:write(rec)
  self.f:write(json(rec), "\n")
  self.f:flush()
end

function JsonLog:close() self.f:close() end

local have_gnuplot
local function gnuplot(script)
  if have_gnuplot == nil then
    have_gnuplot = os.execute("command -v gnuplot >/dev/null 2>&1") == 0
    if not have_gnuplot then io.stderr:write("asr: gnuplot not found: plots skipped (apt-get install gnuplot-nox)\n") end
  end
  if not have_gnuplot then return false end
  local p = io.popen("gnuplot 2>&1", "w")
  p:write(script)
  return p:close()
end

-- rows: list of {epoch=, train_loss=, valid_loss=, wer=} -> dir/loss.png, dir/wer.png
function M.plot_curves(dir, rows)
  if #rows == 0 then return end
  local dat = dir .. "/curves.dat"
  local f = assert(io.open(dat, "w"))
  f:write("# epoch train_loss valid_loss wer\n")
  for _, r in ipairs(rows) do
    f:write(string.format("%d %s %s %s\n", r.epoch, r.train_loss or "NaN", r.valid_loss or "NaN", r.wer or "NaN"))
  end
  f:close()
  gnuplot(string.format([[
set terminal pngcairo size 800,500 noenhanced
set output '%s/loss.png'
set xlabel 'epoch'; set ylabel 'loss per utterance'; set grid
plot '%s' using 1:2 with linespoints title 'training', '' using 1:3 with linespoints title 'validation'
set output '%s/wer.png'
set ylabel 'WER %%'
plot '%s' using 1:4 with linespoints title 'test WER'
]], dir, dat, dir, dat))
end

-- occ: 2-d Lua table occ[s][t] (symbol position x frame, e.g. the simple loss's occupation
-- probabilities), ranges: list over frames of {lo, hi} (the pruning band) -> dir/lattice.png
function M.plot_lattice(dir, occ, ranges, title)
  local dat = dir .. "/lattice.dat"
  local f = assert(io.open(dat, "w"))
  for s = 1, #occ do
    local row = occ[s]
    for t = 1, #row do f:write(string.format("%d %d %.6g\n", t - 1, s - 1, row[t])) end
    f:write("\n")
  end
  f:close()
  local band = dir .. "/band.dat"
  f = assert(io.open(band, "w"))
  for t, r in ipairs(ranges) do f:write(string.format("%d %d %d\n", t - 1, r[1], r[2])) end
  f:close()
  gnuplot(string.format([[
set terminal pngcairo size 900,450 noenhanced
set output '%s/lattice.png'
set title '%s'
set xlabel 'frame t'; set ylabel 'symbol position s'
set palette defined (0 'white', 1 'blue')
plot '%s' using 1:2:3 with image title '', '%s' using 1:2 with lines lc 'red' title 'band', '' using 1:3 with lines lc 'red' title ''
]], dir, title or "RNN-T lattice occupation", dat, band))
end

return M
