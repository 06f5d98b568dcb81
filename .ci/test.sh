#!/bin/sh
# .ci/test.sh — run every test of tern: the C tests (ctest) and the busted specs under LuaJIT.
# Ends with exactly one summary line, counting ctest tests and busted tests together:
#
#   N passed, N failed, N skipped
#
# and exits non-zero when anything failed. Failed = failing tests + errors (a spec file that
# does not load, a failing before_each, busted or ctest dying). Skipped = specs filtered out by
# tag + pending specs + C tests that returned 77.
#
# Tags filtered out when this machine cannot run them (and counted as skipped):
#   #gpu   unless `nvidia-smi -L` succeeds and the build has CUDA
#   #mpi   unless `mpirun` is on PATH and the build has MPI
#   #slow  unless TERN_SLOW=1
#
# Environment:
#   TERN_BUILD_DIR      build tree to test (default build); a sanitizer build (cmake
#                       -DTERN_SANITIZE=...) is run with its runtime preloaded into LuaJIT
#   TERN_SLOW=1         run #slow specs too
#   TERN_BUSTED_OUTPUT  busted output handler for the display (default: utfTerminal on a
#                       terminal, plainTerminal otherwise; e.g. TAP)
#   BUSTED              the busted script (default: `command -v busted`)
#   TERN_TEST_NO_BUILD=1  do not bring the build up to date first
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd -P)
BUILD=${TERN_BUILD_DIR:-build}
case $BUILD in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac

say() { printf 'test: %s\n' "$*"; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/tern-test.XXXXXX") || exit 2
trap 'rm -rf "$TMP"' EXIT INT TERM

passed=0
failed=0
skipped=0

summary() {
    echo "$passed passed, $failed failed, $skipped skipped"
    [ "$failed" -eq 0 ]
    exit $?
}

cache_value() { # cache_value NAME -> value of NAME in the build's CMakeCache.txt
    sed -n "s/^$1:[A-Z]*=//p" "$BUILD/CMakeCache.txt" | head -n 1
}

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    say "no configured build in $BUILD: run 'sh .ci/setup.sh' first"
    failed=1
    summary
fi

# ---- bring the build up to date (a no-op after .ci/setup.sh) ---------------------------------
if [ "${TERN_TEST_NO_BUILD:-0}" != 1 ]; then
    jobs=$(nproc 2>/dev/null || echo 2)
    say "cmake --build $BUILD -j$jobs"
    if ! cmake --build "$BUILD" -j"$jobs" >"$TMP/build.log" 2>&1; then
        cat "$TMP/build.log"
        say "the build failed; not running tests"
        failed=1
        summary
    fi
fi

# ---- sanitizer builds ---------------------------------------------------------------------------
# The C tests are instrumented executables. LuaJIT is not instrumented, so for the specs the
# sanitizer runtimes are preloaded (ASan must come first in the library list), and libtern.so
# too: kept mapped until exit, its globals stay visible to LeakSanitizer, which would otherwise
# report what they point to once LuaJIT has dlclose()d the library. Leak detection stays on:
# lua_close runs every ffi.gc finalizer, so what is left at exit is a real leak.
# allocator_may_return_null: the out-of-memory specs ask for absurd sizes and expect an error.
sanitize=$(cache_value TERN_SANITIZE)
preload=""
if [ -n "$sanitize" ]; then
    cc=$(cache_value CMAKE_C_COMPILER)
    for san in $(echo "$sanitize" | tr ',' ' '); do
        case $san in
            address) rt=libasan.so ;;
            undefined) rt=libubsan.so ;;
            thread) rt=libtsan.so ;;
            leak) rt=liblsan.so ;;
            *) continue ;;
        esac
        preload="$preload $("${cc:-cc}" -print-file-name="$rt")"
    done
    export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}"
    export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
    say "sanitizer build ($sanitize): ASAN_OPTIONS=$ASAN_OPTIONS UBSAN_OPTIONS=$UBSAN_OPTIONS"
fi

# ---- C tests -----------------------------------------------------------------------------------
# Each result line reads "  1/3 Test #1: c/test_tensor ......   Passed    0.01 sec".
say "ctest --test-dir $BUILD"
ctest --test-dir "$BUILD" --output-on-failure -j"${jobs:-2}" >"$TMP/ctest.log" 2>&1
ctest_rc=$?
cat "$TMP/ctest.log"
grep -E 'Test +#[0-9]+: ' "$TMP/ctest.log" >"$TMP/ctest.results"
c_pass=$(grep -c -E ' Passed +[0-9.]+ sec' "$TMP/ctest.results")
c_skip=$(grep -c -E '\*\*\*Skipped|Not Run \(Disabled\)' "$TMP/ctest.results")
c_total=$(grep -c . "$TMP/ctest.results")
c_fail=$((c_total - c_pass - c_skip))
if [ "$ctest_rc" -ne 0 ] && [ "$c_fail" -eq 0 ]; then
    say "ctest exited with status $ctest_rc without a failing test: counting 1 failure"
    c_fail=1
fi
say "C tests: $c_pass passed, $c_fail failed, $c_skip skipped"
passed=$((passed + c_pass))
failed=$((failed + c_fail))
skipped=$((skipped + c_skip))

# ---- busted specs --------------------------------------------------------------------------------
BUSTED=${BUSTED:-$(command -v busted || echo /usr/bin/busted)}
if ! command -v luajit >/dev/null 2>&1 || [ ! -f "$BUSTED" ]; then
    say "luajit or busted is missing: run 'sh .ci/setup.sh' first"
    failed=$((failed + 1))
    summary
fi

exclude=""
add_exclude() { exclude="${exclude:+$exclude,}$1"; say "skipping #$1 specs: $2"; }

if [ "$(cache_value TERN_BUILT_CUDA)" != ON ]; then
    add_exclude gpu "tern was built without CUDA"
elif ! nvidia-smi -L >/dev/null 2>&1; then
    add_exclude gpu "no GPU ('nvidia-smi -L' failed)"
fi
if ! command -v mpirun >/dev/null 2>&1; then
    add_exclude mpi "no mpirun on PATH"
elif [ "$(cache_value TERN_BUILT_MPI)" != ON ]; then
    add_exclude mpi "tern was built without MPI"
fi
if [ "${TERN_SLOW:-0}" != 1 ]; then
    add_exclude slow "set TERN_SLOW=1 to run them"
fi

if [ -z "${TERN_LIB:-}" ] && [ "$(cache_value TERN_COPY_TO_SOURCE)" != ON ]; then
    export TERN_LIB="$BUILD/libtern.so"
fi
[ -n "${TERN_LIB:-}" ] && say "TERN_LIB=$TERN_LIB"
if [ -n "$preload" ]; then
    preload="${preload# } ${TERN_LIB:-$ROOT/lua/tern/libtern.so}"
    say "LD_PRELOAD=$preload"
    # Only LuaJIT may have the preload: the other programs the specs start (pkill, espeak-ng,
    # mpirun, gnuplot) are not instrumented and can hang at start or exit with the sanitizer
    # runtimes in them. A `luajit` first on PATH preloads, and then removes LD_PRELOAD from its
    # own environment before the script runs, so that what it starts runs plain, except luajit
    # itself (through this wrapper again).
    real_luajit=$(command -v luajit)
    mkdir -p "$TMP/bin"
    cat >"$TMP/bin/luajit" <<EOF
#!/bin/sh
LD_PRELOAD="$preload" exec "$real_luajit" -e "local ffi = require 'ffi'; pcall(ffi.cdef, 'int unsetenv(const char *name);'); ffi.C.unsetenv('LD_PRELOAD')" "\$@"
EOF
    chmod +x "$TMP/bin/luajit"
    PATH="$TMP/bin:$PATH"
    export PATH
fi

run_busted() { # run_busted TALLY_FILE ARGS... (TERN_BUSTED_OUTPUT etc. pass through)
    tally=$1
    shift
    TERN_TALLY="$tally" luajit "$BUSTED" -o .ci/busted_tally.lua "$@" # the wrapper above when sanitizing
}

tally_field() { # tally_field FILE NAME
    sed -n "s/.*$2=\([0-9]*\).*/\1/p" "$1"
}

# Count the specs the tag filter leaves out: busted --list with only those tags.
tag_skip=0
if [ -n "$exclude" ]; then
    run_busted "$TMP/listed" --list --tags="$exclude" >"$TMP/list.log" 2>&1
    if [ -f "$TMP/listed" ]; then
        tag_skip=$(tally_field "$TMP/listed" registered)
    else
        cat "$TMP/list.log"
        say "could not list the specs tagged $exclude (busted died); the run below will tell why"
    fi
fi

say "luajit $BUSTED${exclude:+ --exclude-tags=$exclude}"
if [ -n "$exclude" ]; then
    run_busted "$TMP/tally" --exclude-tags="$exclude"
else
    run_busted "$TMP/tally"
fi
busted_rc=$?
echo
if [ -f "$TMP/tally" ]; then
    b_pass=$(tally_field "$TMP/tally" successes)
    b_fail=$(( $(tally_field "$TMP/tally" failures) + $(tally_field "$TMP/tally" errors) ))
    b_pend=$(tally_field "$TMP/tally" pendings)
else
    b_pass=0 b_fail=0 b_pend=0
fi
if [ "$(tally_field "$TMP/tally" complete 2>/dev/null)" != 1 ]; then
    say "busted did not finish (exit status $busted_rc: crashed, killed or a sanitizer report): counting 1 failure"
    b_fail=$((b_fail + 1))
elif [ "$busted_rc" -ne 0 ] && [ "$b_fail" -eq 0 ]; then
    say "busted exited with status $busted_rc without a failing spec: counting 1 failure"
    b_fail=1
fi
say "specs: $b_pass passed, $b_fail failed, $((tag_skip + b_pend)) skipped ($tag_skip by tag${exclude:+ $exclude}, $b_pend pending)"
passed=$((passed + b_pass))
failed=$((failed + b_fail))
skipped=$((skipped + tag_skip + b_pend))

summary
