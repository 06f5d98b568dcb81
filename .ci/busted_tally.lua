-- .ci/busted_tally.lua — a busted output handler for .ci/test.sh: the built-in terminal
-- output (utfTerminal on a terminal, plainTerminal otherwise, or $TERN_BUSTED_OUTPUT) plus a
-- machine-readable tally written to $TERN_TALLY when busted exits:
--
--   registered=<n> successes=<n> failures=<n> errors=<n> pendings=<n> complete=<0|1>
--
-- It is rewritten after every test (complete=0) and at exit (complete=1), so when LuaJIT dies
-- in the middle (a segfault, a sanitizer report) the counts up to the crash survive.
--
-- errors counts every error busted reports, inside a test or outside one (a spec file that
-- does not load, a failing before_each or describe body), so test.sh can count them failed.
-- registered counts the it/pending blocks that passed the tag filter; with --list it is the
-- number of tests listed, which is how test.sh counts the tests it filters out.
-- Usage: TERN_TALLY=/tmp/t luajit /usr/bin/busted -o .ci/busted_tally.lua [--list --tags=...]
return function(options)
  local busted = require 'busted'
  local name = os.getenv('TERN_BUSTED_OUTPUT')
  if not name or name == '' then name = options.defaultOutput end
  local handler = require('busted.outputHandlers.' .. name)(options)

  local registered = 0
  local function count_register()
    registered = registered + 1
    return nil, true
  end
  -- priority 1: ahead of busted's own register subscriber (which stops propagation) and, as
  -- the filters subscribe later with priority 1 too, behind the tag filters
  busted.subscribe({ 'register', 'it' }, count_register, { priority = 1 })
  busted.subscribe({ 'register', 'pending' }, count_register, { priority = 1 })

  local function write_tally(complete)
    local path = os.getenv('TERN_TALLY')
    if not path or path == '' then return nil, true end
    local f = assert(io.open(path .. '.part', 'w'))
    f:write(string.format(
      'registered=%d successes=%d failures=%d errors=%d pendings=%d complete=%d\n',
      registered, handler.successesCount, handler.failuresCount, handler.errorsCount,
      handler.pendingsCount, complete))
    f:close()
    assert(os.rename(path .. '.part', path))
    return nil, true
  end
  -- priority 1 on 'test end' puts this behind the base handler's own priority-1 counter,
  -- which subscribes later (handler:subscribe) and so runs first
  busted.subscribe({ 'test', 'end' }, function() return write_tally(0) end, { priority = 1 })
  busted.subscribe({ 'exit' }, function() return write_tally(1) end, { priority = 1 })

  return handler
end
