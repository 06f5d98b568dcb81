# TernOptions.cmake — helpers for tern's build options.

# tern_tristate(<var> <default> <doc>): a cache variable holding AUTO, ON or OFF (any case;
# also accepts the usual CMake booleans such as 1/0/YES/NO), normalised to upper-case AUTO/ON/OFF.
function(tern_tristate var default doc)
  set(${var} "${default}" CACHE STRING "${doc}")
  set_property(CACHE ${var} PROPERTY STRINGS AUTO ON OFF)
  string(TOUPPER "${${var}}" value)
  if(value STREQUAL "AUTO")
    set(norm AUTO)
  elseif(value MATCHES "^(ON|YES|TRUE|Y|1)$")
    set(norm ON)
  elseif(value MATCHES "^(OFF|NO|FALSE|N|0)$")
    set(norm OFF)
  else()
    message(FATAL_ERROR "${var}=${${var}}: expected AUTO, ON or OFF")
  endif()
  set(${var} "${norm}" PARENT_SCOPE)
endfunction()
