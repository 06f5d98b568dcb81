-- luacheck configuration: LuaJIT 2.1 only, no globals.
std = "luajit"
max_line_length = 120
files["spec/"] = { std = "+busted" }
exclude_files = { "build/", "build-*/", "lua/tern/cdef.lua" }
