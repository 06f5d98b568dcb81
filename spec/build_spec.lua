-- spec/build_spec.lua — the build products the Lua package depends on: the cdef generated from
-- core/tern.h (lua/tern/cdef.lua) and libtern.so (lua/tern/, or $TERN_LIB).
--
-- The cdef checks run in a child LuaJIT: ffi.cdef of the same declarations twice in one Lua
-- state is an error, and busted runs every spec file in one state (auto-insulate = false)
-- where `require "tern"` has already declared them.

-- Runs a Lua chunk in a fresh `luajit` (same environment, so TERN_LIB carries over, and in a
-- sanitizer run the same preloading `luajit` of .ci/test.sh) and returns everything it printed.
local function run_luajit(code)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  local p = assert(io.popen("luajit " .. path .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  os.remove(path)
  return out
end

local function read_file(path)
  local f = assert(io.open(path, "r"))
  local s = f:read("*a")
  f:close()
  return s
end

local libpath = os.getenv("TERN_LIB") or "lua/tern/libtern.so"

describe("build", function()
  describe("cdef.lua", function()
    it("is a Lua chunk returning the declarations of core/tern.h", function()
      local cdef = dofile("lua/tern/cdef.lua")
      assert.are.same("string", type(cdef))
      assert.is_truthy(cdef:find("tn_status tn_tensor_empty", 1, true))
      assert.is_falsy(cdef:find("/*", 1, true), "comments are stripped")
      assert.is_falsy(cdef:find("\n%s*#"), "preprocessor lines are stripped")
    end)

    it("is accepted by ffi.cdef in a fresh LuaJIT", function()
      local out = run_luajit([[
        local ffi = require "ffi"
        ffi.cdef(dofile("lua/tern/cdef.lua"))
        print("CDEF-OK")
      ]])
      assert.are.same("CDEF-OK\n", out)
    end)

    it("declares only functions that libtern.so exports", function()
      local out = run_luajit(string.format([[
        local ffi = require "ffi"
        local cdef = dofile("lua/tern/cdef.lua")
        ffi.cdef(cdef)
        local lib = ffi.load(%q)
        local missing = {}
        for name in cdef:gmatch("(tn_[%%w_]+)%%s*%%(") do
          if not pcall(function() return lib[name] end) then missing[#missing + 1] = name end
        end
        print(#missing == 0 and "SYMBOLS-OK" or ("missing: " .. table.concat(missing, " ")))
      ]], libpath))
      assert.are.same("SYMBOLS-OK\n", out)
    end)
  end)

  describe("libtern.so", function()
    it("reports the version of CMakeLists.txt through tn_version()", function()
      local tn = require "tern"
      local expected = read_file("CMakeLists.txt"):match("project%(tern VERSION ([%d%.]+)")
      assert.is_string(expected)
      assert.are.same(expected, tn._VERSION)
      assert.are.same(expected, require("ffi").string(tn.C.tn_version()))
    end)
  end)
end)
