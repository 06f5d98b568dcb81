#!/bin/sh
# .ci/setup.sh — the set-up both README command lines share: install what is missing on
# Debian 12 (as root, or through sudo), then configure and build tern into build/ (Release).
# Idempotent: a second run finds every package present (no apt at all), reuses build/ and
# rebuilds only what changed.
#
# Environment:
#   TERN_CMAKE_ARGS  extra cmake arguments, e.g. "-DTERN_CUDA=OFF" (re-configures build/)
#   TERN_BUILD_DIR   build tree (default build)
#   TERN_NO_APT=1    never call apt-get (report what is missing and fail)
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
BUILD=${TERN_BUILD_DIR:-build}

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# What building and testing needs. gcc's OpenMP (libgomp) comes with build-essential; the CUDA
# toolkit is optional and never installed here; OpenMPI is installed so that the #mpi specs run
# (CMake enables CUDA, MPI and NCCL when present).
PACKAGES="build-essential cmake pkg-config luajit lua-busted libopenblas-dev libfftw3-dev libsndfile1-dev libsentencepiece-dev espeak-ng gnuplot-nox openmpi-bin libopenmpi-dev"

# ---- packages ----------------------------------------------------------------------------------
command -v dpkg-query >/dev/null 2>&1 || die "this script needs Debian (dpkg-query not found)"
missing=""
for p in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing="$missing $p"
done
missing=${missing# }

if [ -z "$missing" ]; then
    say "packages present: $PACKAGES"
else
    [ "${TERN_NO_APT:-0}" = 1 ] && die "missing packages: $missing (TERN_NO_APT=1)"
    if [ "$(id -u)" = 0 ]; then
        as_root=""
    elif command -v sudo >/dev/null 2>&1; then
        as_root="sudo"
    else
        die "missing packages: $missing; run this script as root (or install sudo)"
    fi
    say "missing packages: $missing"
    say "apt-get update"
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    say "apt-get install --no-install-recommends $missing"
    # shellcheck disable=SC2086
    $as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends $missing
fi

# ---- configure and build -------------------------------------------------------------------------
case $BUILD in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
if [ -f "$BUILD/CMakeCache.txt" ]; then
    home=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$BUILD/CMakeCache.txt")
    if [ "$home" != "$ROOT" ] && [ "$(cd "$home" 2>/dev/null && pwd -P)" != "$ROOT" ]; then
        say "$BUILD was configured for another source tree ($home): starting it afresh"
        rm -rf "$BUILD"
    fi
fi
if [ ! -f "$BUILD/CMakeCache.txt" ] || [ -n "${TERN_CMAKE_ARGS:-}" ]; then
    say "cmake -S . -B $BUILD -DCMAKE_BUILD_TYPE=Release ${TERN_CMAKE_ARGS:-}"
    # shellcheck disable=SC2086
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release ${TERN_CMAKE_ARGS:-}
else
    say "reusing $BUILD (cmake re-configures itself when CMakeLists.txt or the sources change)"
fi
jobs=$(nproc 2>/dev/null || echo 2)
say "cmake --build $BUILD -j$jobs"
cmake --build "$BUILD" -j"$jobs"
say "done: libtern.so built, lua/tern/libtern.so and lua/tern/cdef.lua in place"
