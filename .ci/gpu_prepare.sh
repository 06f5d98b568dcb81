#!/bin/sh
# .ci/gpu_prepare.sh — run HERE (Debian 12, with network) before a device check: downloads the
# Debian packages of LuaJIT and busted (and their Lua modules) and of Open MPI 4.1 (with the
# runtime libraries it needs) and unpacks them into .gpu/root, which the `device` tool then
# carries to the lent GPU machine (`carry: [".gpu"]`), where nothing can be installed. .gpu/ is
# ignored by git. Then, on the device: `sh .ci/gpu_check.sh`.
#
# Open MPI there (no system MPI) is this unpacked copy of openmpi-bin, openmpi-common,
# libopenmpi3, libopenmpi-dev, libpmix2, libmunge2, libhwloc15, libevent-* and libudev1, plus the
# mpirun/mpiexec/mpicc links that update-alternatives would make; gpu_check.sh relocates it with
# OPAL_PREFIX and the rest (see its header; `sh .ci/gpu_check.sh env CMD` runs CMD in that
# environment). Left out, with the plugins that need them: the fast-interconnect transports
# (UCX, libfabric/OFI, verbs/openib, PSM/PSM2, netlink), since one machine's ranks talk over
# shared memory (vader) and tcp, which gpu_check.sh selects (pml ob1, btl self,vader,tcp); and
# Fortran, Java, docs. The last step checks that every shared library the carried programs and
# plugins need is carried or is the base system's (glibc, libz, libstdc++, libgcc_s), and that
# .gpu stays under the device tool's 64 MiB (it is about 21 MiB).
#
# Needs on the device: x86_64 glibc >= 2.36 for the carried libevent (Debian 12's; arc4random);
# LuaJIT and busted need >= 2.34. Where the carried MPI cannot start, gpu_check.sh says so and
# builds without MPI (and NCCL) as before.
set -eu
cd "$(dirname "$0")/.."
PKGS="luajit libluajit-5.1-2 libluajit-5.1-common lua-busted lua-cliargs lua-dkjson lua-filesystem
lua-luassert lua-mediator lua-penlight lua-say lua-system lua-term"
MPI_PKGS="openmpi-bin openmpi-common libopenmpi3 libopenmpi-dev libpmix2 libmunge2 libhwloc15
libevent-2.1-7 libevent-core-2.1-7 libevent-pthreads-2.1-7 libudev1"
rm -rf .gpu
mkdir -p .gpu/debs .gpu/root
# shellcheck disable=SC2086 # lists of package names
(cd .gpu/debs && apt-get download $PKGS $MPI_PKGS)
for f in .gpu/debs/*.deb; do dpkg -x "$f" .gpu/root; done
rm -rf .gpu/debs

# ---- Open MPI: the names update-alternatives would make, then the trimming --------------------
U=.gpu/root/usr
L=$U/lib/x86_64-linux-gnu
for n in mpirun mpiexec mpicc; do ln -sf "$n.openmpi" "$U/bin/$n"; done
# transports whose libraries are not carried (UCX, OFI, verbs, PSM, netlink) and their plugins
rm -f "$L"/openmpi/lib/openmpi3/mca_*_ucx.so "$L"/openmpi/lib/openmpi3/mca_*_ofi.so \
    "$L"/openmpi/lib/openmpi3/mca_btl_openib.so "$L"/openmpi/lib/openmpi3/mca_mtl_psm*.so \
    "$L"/openmpi/lib/openmpi3/mca_reachable_netlink.so \
    "$L"/libmca_common_ucx.so* "$L"/libmca_common_ofi.so* "$L"/libmca_common_verbs.so* \
    "$L"/openmpi/lib/libmca_common_ucx.so "$L"/openmpi/lib/libmca_common_ofi.so \
    "$L"/openmpi/lib/libmca_common_verbs.so
# Fortran, Java and the docs
rm -rf "$L"/fortran "$L"/libmpi_mpifh* "$L"/libmpi_usempi* "$L"/libmpi_java* \
    "$L"/openmpi/lib/libmpi_mpifh.so "$L"/openmpi/lib/libmpi_usempi* "$L"/openmpi/lib/libmpi_java.so \
    "$U"/share/doc "$U"/share/man "$U"/share/lintian
rm -f "$U"/bin/mpif* "$U"/bin/*fort "$U"/bin/mpijavac* "$L"/openmpi/include/mpif*.h
rm -rf "$L"/openmpi/include/openmpi/mpiext/pmpi_f08 "$L"/openmpi/lib/*.mod

# every NEEDED library of the carried ELF files is carried, or is the base system's
base=" ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libz.so.1 libgcc_s.so.1 libstdc++.so.6 "
have=$(find .gpu/root \( -type f -o -type l \) -name '*.so*' -printf '%f\n' | sort -u)
missing=$(find .gpu/root -type f \( -name '*.so*' -o -perm -u+x \) -exec sh -c \
    'readelf -d "$1" 2>/dev/null | sed -n "s/.*(NEEDED).*\[\(.*\)\]/\1/p" | sed "s|^|$1 |"' _ {} \; |
    while read -r file lib; do
        case $base in *" $lib "*) continue ;; esac
        echo "$have" | grep -qxF "$lib" || echo "$file needs $lib"
    done)
[ -z "$missing" ] || { echo "$missing"; echo "gpu_prepare: libraries above are not carried"; exit 1; }

du -sh .gpu
kib=$(du -sk .gpu | cut -f1)
[ "$kib" -lt 65536 ] || { echo "gpu_prepare: .gpu is over the device tool's 64 MiB"; exit 1; }
echo "gpu_prepare: .gpu/root holds luajit, busted and Open MPI; on the device run: sh .ci/gpu_check.sh"
