-- .ci/busted_tally.lua — a busted output handler for .ci/test.sh: the built-in terminal
-- output (utfTerminal on a terminal, plainTerminal otherwise, or $TERN_BUSTED_OUTPUT) plus a
-- machine-readable tally written to $TERN_TALLY when busted exits:
--
--   registered=<n> successes=<n> failures=<n> errors=<n> pendings=<n>
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

  local function write_tally()
    local path = os.getenv('TERN_TALLY')
    if not path or path == '' then return nil, true end
    local f = assert(io.open(path .. '.part', 'w'))
    f:write(string.format('registered=%d successes=%d failures=%d errors=%d pendings=%d\n',
      registered, handler.successesCount, handler.failuresCount, handler.errorsCount,
      handler.pendingsCount))
    f:close()
    assert(os.rename(path .. '.part', path))
    return nil, true
  end
  busted.subscribe({ 'exit' }, write_tally, { priority = 1 })

  return handler
end
