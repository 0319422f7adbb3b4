# xcpipe_module: declares one module (= one folder): a library `xcpipe_<NAME>` with the alias
# `xcpipe::<NAME>`, its public headers in include/, and its tests.
#
#   xcpipe_module(NAME base
#     SOURCES src/a.cpp ...            # library sources (omit for a header-only module)
#     DEPS xcpipe::other ...           # public link dependencies
#     PRIVATE_DEPS ...                 # private link dependencies
#   )
#   xcpipe_test(NAME base_unit LABELS unit SOURCES tests/a_test.cpp DEPS xcpipe::base)
#
# Test labels: unit (fast, in-process), integration (real processes/sockets), fault (fault
# injection), gpu (skips without a device). `ctest -L unit` runs one tier.
include_guard(GLOBAL)

set(XCPIPE_WARNINGS -Wall -Wextra -Wno-unused-parameter)

# Tests find the tree, the build and the shared fixtures through xcpipe::testing
# (tests/support), the one small file compiled with those absolute paths.
set(XCPIPE_FIXTURES_DIR "${CMAKE_SOURCE_DIR}/../shared/fixtures" CACHE PATH
    "Folder of golden fixtures (../shared/fixtures beside the checkout)")

function(xcpipe_module)
  cmake_parse_arguments(M "" "NAME" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  set(target xcpipe_${M_NAME})
  if(M_SOURCES)
    add_library(${target} STATIC ${M_SOURCES})
    target_include_directories(${target} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
    target_link_libraries(${target} PUBLIC ${M_DEPS} PRIVATE ${M_PRIVATE_DEPS})
    target_compile_options(${target} PRIVATE ${XCPIPE_WARNINGS})
  else()
    add_library(${target} INTERFACE)
    target_include_directories(${target} INTERFACE ${CMAKE_CURRENT_SOURCE_DIR}/include)
    target_link_libraries(${target} INTERFACE ${M_DEPS})
  endif()
  add_library(xcpipe::${M_NAME} ALIAS ${target})
endfunction()

# One GoogleTest binary; each TEST becomes a ctest case carrying LABELS. Discovery runs just
# before the tests (PRE_TEST), so building never executes a test binary.
function(xcpipe_test)
  # RUN_SERIAL: the cases measure time or memory on a live cluster; nothing else may run beside them.
  cmake_parse_arguments(T "RUN_SERIAL" "NAME;TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  if(NOT XCPIPE_BUILD_TESTS)
    return()
  endif()
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  set(target xcpipe_${T_NAME}_test)
  add_executable(${target} ${T_SOURCES})
  target_link_libraries(${target} PRIVATE ${T_DEPS} xcpipe::testing GTest::gtest GTest::gtest_main)
  target_compile_options(${target} PRIVATE ${XCPIPE_WARNINGS})
  set_target_properties(${target} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  gtest_discover_tests(${target}
    DISCOVERY_MODE PRE_TEST
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
    PROPERTIES LABELS "${T_LABELS}" TIMEOUT ${T_TIMEOUT} RUN_SERIAL ${T_RUN_SERIAL}
    DISCOVERY_TIMEOUT 60)
endfunction()
