# gen_cdef.cmake — turn the region of core/tern.h between /* TN_CDEF_BEGIN */ and
# /* TN_CDEF_END */ into lua/tern/cdef.lua, a Lua chunk returning the string for ffi.cdef.
#
#   cmake -DIN=core/tern.h -DOUT=lua/tern/cdef.lua -P cmake/gen_cdef.cmake
#
# Comments (/* */ and //) and preprocessor lines are dropped, trailing blanks trimmed and runs
# of blank lines squeezed. The header keeps that region free of macros (constants are enums),
# so what remains is plain C declarations that LuaJIT's ffi.cdef parses.

cmake_minimum_required(VERSION 3.21)

if(NOT IN OR NOT OUT)
  message(FATAL_ERROR "gen_cdef.cmake: pass -DIN=<tern.h> -DOUT=<cdef.lua>")
endif()

file(READ "${IN}" text)
set(begin_marker "/* TN_CDEF_BEGIN */")
set(end_marker "/* TN_CDEF_END */")
string(FIND "${text}" "${begin_marker}" b)
string(FIND "${text}" "${end_marker}" e)
if(b EQUAL -1 OR e EQUAL -1 OR e LESS b)
  message(FATAL_ERROR "gen_cdef.cmake: ${IN} must contain '${begin_marker}' followed by '${end_marker}'")
endif()
string(LENGTH "${begin_marker}" blen)
math(EXPR start "${b} + ${blen}")
math(EXPR len "${e} - ${start}")
string(SUBSTRING "${text}" ${start} ${len} body)

# Drop block comments. CMake regexes are greedy and have no lazy quantifier, so walk the text.
set(out "")
while(TRUE)
  string(FIND "${body}" "/*" c)
  if(c EQUAL -1)
    string(APPEND out "${body}")
    break()
  endif()
  string(SUBSTRING "${body}" 0 ${c} pre)
  string(APPEND out "${pre}")
  math(EXPR c "${c} + 2")
  string(SUBSTRING "${body}" ${c} -1 body)
  string(FIND "${body}" "*/" d)
  if(d EQUAL -1)
    message(FATAL_ERROR "gen_cdef.cmake: unterminated /* comment in the cdef region of ${IN}")
  endif()
  math(EXPR d "${d} + 2")
  string(SUBSTRING "${body}" ${d} -1 body)
endwhile()

# Line comments, preprocessor lines (with backslash continuations), trailing blanks.
set(out "\n${out}\n")
string(REGEX REPLACE "//[^\n]*" "" out "${out}")
string(REGEX REPLACE "\n[ \t]*#([^\n]*\\\\\n)*[^\n]*" "\n" out "${out}")
string(REGEX REPLACE "[ \t]+\n" "\n" out "${out}")
string(REGEX REPLACE "\n\n\n+" "\n\n" out "${out}")
string(REGEX REPLACE "^\n+" "" out "${out}")
string(REGEX REPLACE "\n+$" "\n" out "${out}")

string(FIND "${out}" "]==]" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "gen_cdef.cmake: the cdef region of ${IN} contains ']==]'")
endif()

file(WRITE "${OUT}.tmp-gen"
  "-- Generated from core/tern.h by cmake/gen_cdef.cmake at build time. Do not edit.\n"
  "return [==[\n${out}]==]\n")
file(RENAME "${OUT}.tmp-gen" "${OUT}")
