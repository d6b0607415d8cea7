# Warnings and sanitizers applied to every Airlock target through one
# interface library, so third-party code is never compiled with them.
add_library(airlock_build_flags INTERFACE)
# C and C++ only: CUDA sources get nvcc's own warning flags (engine/).
target_compile_options(airlock_build_flags INTERFACE
  $<$<COMPILE_LANGUAGE:C,CXX>:-Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion>
  $<$<AND:$<COMPILE_LANGUAGE:C,CXX>,$<BOOL:${AIRLOCK_WERROR}>>:-Werror>)

if(AIRLOCK_SANITIZE)
  string(REPLACE "," ";" _airlock_sanitizers "${AIRLOCK_SANITIZE}")
  foreach(_s IN LISTS _airlock_sanitizers)
    if(NOT _s MATCHES "^(address|undefined|thread)$")
      message(FATAL_ERROR "AIRLOCK_SANITIZE: unknown sanitizer '${_s}'")
    endif()
  endforeach()
  if("thread" IN_LIST _airlock_sanitizers AND "address" IN_LIST _airlock_sanitizers)
    message(FATAL_ERROR "AIRLOCK_SANITIZE: thread cannot be combined with address")
  endif()
  string(REPLACE ";" "," _airlock_san_flag "${_airlock_sanitizers}")
  target_compile_options(airlock_build_flags INTERFACE
    -fsanitize=${_airlock_san_flag} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  target_link_options(airlock_build_flags INTERFACE -fsanitize=${_airlock_san_flag})
endif()

if(AIRLOCK_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "AIRLOCK_FUZZ=ON needs clang (CC=clang CXX=clang++)")
  endif()
  # Instrument the libraries for coverage; the fuzz executables add the
  # libFuzzer main themselves.
  target_compile_options(airlock_build_flags INTERFACE -fsanitize=fuzzer-no-link,address,undefined)
  target_link_options(airlock_build_flags INTERFACE -fsanitize=address,undefined)
endif()
