#!/bin/sh
# .ci/gpu_check.sh — the GPU checks in one call on a lent GPU machine (the `device` tool), where
# nothing can be installed: prepare .gpu/ here first (sh .ci/gpu_prepare.sh) and carry it.
#
#   device run: command "sh .ci/gpu_check.sh", carry [".gpu"], timeout_s 540
#
# 1. shows the GPU; 2. builds tern with CUDA for sm_90 into build-gpu/ (OpenBLAS, FFTW and
# libsndfile are absent there: the CPU side uses its plain loops, which the #gpu specs compare
# against); 3. runs the C tests (ctest) and the #gpu specs; 4. the GPU benchmarks that exist.
# Logs go to $OUT (fetched back); the summary lines come last in the output.
set -u
cd "$(dirname "$0")/.."
R=$(pwd)/.gpu/root
[ -x "$R/usr/bin/luajit" ] || { echo "gpu_check: .gpu/root is missing: run sh .ci/gpu_prepare.sh here and carry .gpu"; exit 2; }
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PATH="$R/usr/bin:$PATH"
export LD_LIBRARY_PATH="$R/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LUA_PATH="$R/usr/share/lua/5.1/?.lua;$R/usr/share/lua/5.1/?/init.lua;;"
export LUA_CPATH="$R/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;"
BUSTED="$R/usr/bin/busted"
T0=$(date +%s)
stamp() { echo "gpu_check: [$(( $(date +%s) - T0 )) s] $*"; }

nvidia-smi -L || { echo "gpu_check: no GPU here"; exit 2; }
nvcc --version | tail -n 2
stamp "configure"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DTERN_CUDA=ON -DTERN_BLAS=OFF \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DTERN_COPY_TO_SOURCE=OFF >"$OUT/configure.log" 2>&1 \
    || { tail -n 40 "$OUT/configure.log"; exit 1; }
grep -E "^-- +(CUDA|BLAS|OpenMP|NCCL)" "$OUT/configure.log"
stamp "build"
cmake --build build-gpu -j"$(nproc)" >"$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -n 40; exit 1; }
export TERN_LIB="$(pwd)/build-gpu/libtern.so"

stamp "C tests"
ctest --test-dir build-gpu --output-on-failure -j4 >"$OUT/ctest.log" 2>&1
c_rc=$?
grep -E "tests passed|Failed|\*\*\*" "$OUT/ctest.log" | tail -n 20

stamp "#gpu specs"
luajit "$BUSTED" --tags=gpu -o TAP >"$OUT/gpu_specs.log" 2>&1
b_rc=$?
grep -E "^not ok" "$OUT/gpu_specs.log" | head -n 40
grep -A6 -E "^not ok" "$OUT/gpu_specs.log" | head -n 120 >"$OUT/gpu_failures.log"

stamp "benchmarks"
# bench_tensor.lua --device=cuda with its torch peer (the plain python3 here holds torch; TERN_PYTHON
# overrides): JSON lines to bench.jsonl, progress (and any peer traceback) to bench.log
timeout 230 luajit recipes/bench_tensor.lua --device=cuda --peer=torch >>"$OUT/bench.jsonl" 2>>"$OUT/bench.log" \
    || echo "gpu_check: recipes/bench_tensor.lua failed or timed out (exit $?)"
tail -n 5 "$OUT/bench.log"
for b in recipes/bench_rnn.lua recipes/bench_rnnt.lua; do
    if grep -q -- "--device" "$b" 2>/dev/null; then
        timeout 120 luajit "$b" --device=cuda --peer=none >>"$OUT/bench.jsonl" 2>&1 || echo "gpu_check: $b failed or timed out"
    fi
done
[ -s "$OUT/bench.jsonl" ] && grep -E '"(compare|error)"' "$OUT/bench.jsonl" | tail -n 30

stamp "done"
echo "ctest exit $c_rc; #gpu specs: $(grep -c '^ok' "$OUT/gpu_specs.log") ok, $(grep -c '^not ok' "$OUT/gpu_specs.log") not ok (busted exit $b_rc)"
[ "$c_rc" -eq 0 ] && [ "$b_rc" -eq 0 ]
