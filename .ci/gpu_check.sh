#!/bin/sh
# .ci/gpu_check.sh — the GPU checks in one call on a lent GPU machine (the `device` tool), where
# nothing can be installed: prepare .gpu/ here first (sh .ci/gpu_prepare.sh) and carry it.
#
#   device run: command "sh .ci/gpu_check.sh", carry [".gpu"], timeout_s 540
#
# 1. shows the GPU and whether the carried Open MPI starts; 2. builds tern with CUDA for sm_90
# into build-gpu/, with MPI and NCCL (OpenBLAS, FFTW and libsndfile are absent there: the CPU
# side uses its plain loops, which the #gpu specs compare against); 3. runs the C tests (ctest),
# the #gpu specs and the other #mpi specs (mpirun -np 2 on this one machine; not run when the
# carried MPI does not start here); 4. the GPU benchmarks that exist. Logs go to $OUT (fetched
# back); the summary lines come last in the output.
#
# The environment (tern_env below) is all from .gpu/root: luajit and busted (PATH, LUA_PATH,
# LUA_CPATH) and Open MPI 4.1 from Debian 12, relocated there:
#   PATH, LD_LIBRARY_PATH     .gpu/root/usr/bin, .gpu/root/usr/lib/x86_64-linux-gnu
#   OPAL_PREFIX               .gpu/root/usr (Open MPI's relocation: plugins, headers, help files)
#   OPAL_SYSCONFDIR           .gpu/root/etc/openmpi (Debian's openmpi-mca-params.conf)
#   PMIX_PREFIX, PMIX_MCA_mca_base_component_path   the same for PMIx (its conf names /usr/...)
#   OMPI_MCA_plm=isolated     mpirun starts the ranks on this machine only (there is no ssh)
#   OMPI_MCA_pml=ob1, OMPI_MCA_btl=self,vader,tcp, OMPI_MCA_btl_vader_single_copy_mechanism=none
#                             shared memory and tcp only (UCX/OFI/verbs are not carried; no CMA,
#                             which a container may forbid)
#   OMPI_MCA_hwloc_base_binding_policy=none   ranks are not bound to cores (a container's
#                             cpuset may refuse it; the specs oversubscribe anyway)
#   OMPI_ALLOW_RUN_AS_ROOT=1, OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1   the device runs as root
# and TERN_GPU_CMAKE_ARGS, the configure options but for CUDA: Release, TERN_BLAS=OFF,
# TERN_COPY_TO_SOURCE=OFF, and -DMPI_C_COMPILER=<carried mpicc> (what FindMPI needs) when
# `mpirun -np 2 true` works with it, else -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON (a build without
# MPI and NCCL, as before; e.g. on glibc older than 2.36, which the carried libevent needs).
# With MPI, CMake looks for NCCL in the CUDA toolkit (or NCCL_HOME) for the NCCL backend.
#
#   sh .ci/gpu_check.sh env [CMD [ARG...]]   runs CMD in that environment (without CMD: prints
#                                            it), e.g. to check the carried MPI without a GPU:
#   sh .ci/gpu_check.sh env sh -c 'cmake -S . -B build-cpu $TERN_GPU_CMAKE_ARGS -DTERN_CUDA=OFF'
set -u
cd "$(dirname "$0")/.."
R=$(pwd)/.gpu/root
[ -x "$R/usr/bin/luajit" ] || { echo "gpu_check: .gpu/root is missing: run sh .ci/gpu_prepare.sh here and carry .gpu"; exit 2; }

tern_env() {
    L=$R/usr/lib/x86_64-linux-gnu
    export PATH="$R/usr/bin:$PATH"
    export LD_LIBRARY_PATH="$L${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LUA_PATH="$R/usr/share/lua/5.1/?.lua;$R/usr/share/lua/5.1/?/init.lua;;"
    export LUA_CPATH="$L/lua/5.1/?.so;;"
    export OPAL_PREFIX="$R/usr" OPAL_SYSCONFDIR="$R/etc/openmpi"
    export PMIX_PREFIX="$L/pmix2" PMIX_MCA_mca_base_component_path="$L/pmix2/lib/pmix"
    export OMPI_MCA_plm=isolated OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp \
        OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_hwloc_base_binding_policy=none
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    # does the carried Open MPI start here? (its output, e.g. a loader error, in MPI_PROBE)
    if [ -x "$R/usr/bin/mpicc" ] &&
        MPI_PROBE=$(timeout 60 mpirun --oversubscribe -np 2 true 2>&1 && mpicc --showme:version 2>&1); then
        MPI_OK=1
        MPI_CMAKE="-DMPI_C_COMPILER=$R/usr/bin/mpicc -DCMAKE_DISABLE_FIND_PACKAGE_MPI=OFF"
    else
        MPI_OK=0
        MPI_CMAKE="-DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON"
    fi
    export TERN_GPU_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DTERN_BLAS=OFF -DTERN_COPY_TO_SOURCE=OFF $MPI_CMAKE"
}
tern_env
if [ "${1:-}" = env ]; then
    shift
    [ $# -gt 0 ] && exec "$@"
    env | grep -E "^(PATH|LD_LIBRARY_PATH|LUA_C?PATH|OPAL_|PMIX_|OMPI_|TERN_GPU_)" | sort
    echo "carried MPI starts: $MPI_OK"
    exit 0
fi
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
BUSTED="$R/usr/bin/busted"
T0=$(date +%s)
stamp() { echo "gpu_check: [$(( $(date +%s) - T0 )) s] $*"; }

nvidia-smi -L || { echo "gpu_check: no GPU here"; exit 2; }
nvcc --version | tail -n 2
if [ "$MPI_OK" = 1 ]; then
    echo "gpu_check: carried $(mpirun --version 2>&1 | head -n 1)"
else
    echo "gpu_check: the carried Open MPI does not start here; building without MPI and NCCL:"
    echo "$MPI_PROBE" | head -n 5
    ldd --version 2>&1 | head -n 1
fi
stamp "configure"
# shellcheck disable=SC2086 # TERN_GPU_CMAKE_ARGS is a list of options
cmake -S . -B build-gpu $TERN_GPU_CMAKE_ARGS -DTERN_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    >"$OUT/configure.log" 2>&1 || { tail -n 40 "$OUT/configure.log"; exit 1; }
grep -E "^-- +(CUDA|BLAS|OpenMP|MPI|NCCL) " "$OUT/configure.log"
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

m_rc=0
if grep -qE "^-- +MPI +on" "$OUT/configure.log"; then
    stamp "#mpi specs"
    # the ones tagged #gpu too ran above
    luajit "$BUSTED" --tags=mpi --exclude-tags=gpu -o TAP >"$OUT/mpi_specs.log" 2>&1
    m_rc=$?
    grep -E "^not ok" "$OUT/mpi_specs.log" | head -n 40
    grep -A6 -E "^not ok" "$OUT/mpi_specs.log" | head -n 120 >"$OUT/mpi_failures.log"
    mpi_summary="#mpi specs: $(grep -c '^ok' "$OUT/mpi_specs.log") ok, $(grep -c '^not ok' "$OUT/mpi_specs.log") not ok (busted exit $m_rc)"
else
    mpi_summary="#mpi specs: not run (build without MPI)"
fi

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
echo "ctest exit $c_rc; #gpu specs: $(grep -c '^ok' "$OUT/gpu_specs.log") ok, $(grep -c '^not ok' "$OUT/gpu_specs.log") not ok (busted exit $b_rc); $mpi_summary"
[ "$c_rc" -eq 0 ] && [ "$b_rc" -eq 0 ] && [ "$m_rc" -eq 0 ]
