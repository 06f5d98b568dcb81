-- LuaRocks package of tern. From a checkout (no network needed; LuaJIT, CMake, a C compiler
-- and OpenBLAS must be installed, see .ci/setup.sh):
--   luarocks --lua-version=5.1 make                  (system tree, as root)
--   luarocks --lua-version=5.1 make --local          (~/.luarocks)
--   luarocks --lua-version=5.1 make --tree=/tmp/rt   (any tree)
-- CMake builds libtern.so and installs lua/tern/*.lua, the generated cdef.lua and libtern.so
-- side by side into the rock's Lua directory, where `require "tern"` finds the library.
rockspec_format = "3.0"
package = "tern"
version = "scm-1"
source = {
  url = "git+file://./", -- `luarocks make` builds the working tree and never fetches this
}
description = {
  summary = "LuaJIT-scriptable neural toolkit for fast speech models",
  detailed = [[
A C tensor core with SRU and LSTM cells, the pruned RNN-T loss family and FP16
loss-scaling optimizers, exposed through LuaJIT FFI, with Lua recipes that train
speech models on a CPU, a GPU or many GPUs.]],
}
supported_platforms = { "linux" }
dependencies = {
  "lua == 5.1", -- LuaJIT 2.1
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    LUA_MODDIR = "$(LUADIR)",
    TERN_BUILD_TESTS = "OFF",
    TERN_COPY_TO_SOURCE = "OFF",
  },
}
