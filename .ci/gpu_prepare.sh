#!/bin/sh
# .ci/gpu_prepare.sh — run HERE (Debian 12, with network) before a device check: downloads the
# Debian packages of LuaJIT and busted (and their Lua modules) and unpacks them into .gpu/root,
# which the `device` tool then carries to the lent GPU machine (`carry: [".gpu"]`), where nothing
# can be installed. .gpu/ is ignored by git. Then, on the device: `sh .ci/gpu_check.sh`.
set -eu
cd "$(dirname "$0")/.."
PKGS="luajit libluajit-5.1-2 libluajit-5.1-common lua-busted lua-cliargs lua-dkjson lua-filesystem
lua-luassert lua-mediator lua-penlight lua-say lua-system lua-term"
rm -rf .gpu
mkdir -p .gpu/debs .gpu/root
(cd .gpu/debs && apt-get download $PKGS)
for f in .gpu/debs/*.deb; do dpkg -x "$f" .gpu/root; done
rm -rf .gpu/debs
du -sh .gpu
echo "gpu_prepare: .gpu/root holds luajit and busted; on the device run: sh .ci/gpu_check.sh"
