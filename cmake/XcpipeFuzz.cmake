# Fuzz tests in the normal build. Every parser of outside bytes has a libFuzzer target (declared
# in its module under `if(XCPIPE_FUZZ)`); libFuzzer needs clang while the main build uses g++.
#
# In a normal build (XCPIPE_FUZZ=OFF) with clang and libFuzzer installed, this adds a clang
# sub-build in <build>/fuzz (an ExternalProject over this same source tree with XCPIPE_FUZZ=ON,
# -fsanitize=fuzzer,address,undefined) that builds only the fuzz targets and the torch-free
# libraries they need; `cmake --build` runs its ninja every time, which does nothing when nothing
# changed, and ccache serves its compiles. Each target becomes a ctest test `fuzz.<name>`
# (label `fuzz`) running it for XCPIPE_FUZZ_SECONDS (60) under ASan+UBSan on a scratch copy of
# its seed corpus (tests/fuzz/run_fuzz_target.sh); a crash, leak, hang or sanitizer report fails
# it. Without clang or libFuzzer the tests are still registered and skip, saying why.
# XCPIPE_FUZZ_TESTS=OFF leaves the sub-build out; ON makes a missing libFuzzer an error.
# Longer runs: bench/fuzz_long.sh [SECONDS] reads <build>/fuzz-targets.txt written here.
include_guard(GLOBAL)

# One entry per target: executable | seed corpus (from the source root) | extra libFuzzer flags
# (comma-separated). Adding a fuzz target = one line here and its `if(XCPIPE_FUZZ)` block.
set(XCPIPE_FUZZ_TARGETS
  "xcpipe_envelope_fuzz|schemas/fuzz/corpus|"
  "xcpipe_transport_frame_fuzz|worker/transport/fuzz/corpus|"
  "xcpipe_transport_frame_reader_fuzz|worker/transport/fuzz/reader_corpus|"
  "xcpipe_cluster_toml_fuzz|coordinator/planner/fuzz/corpus|"
  "xcpipe_image_decode_fuzz|common/image/fuzz/corpus|"
  "xcpipe_tokenizer_prompt_fuzz|common/tokenizer/fuzz/corpus|"
  "xcpipe_safetensors_header_fuzz|common/checkpoint/fuzz/corpus|"
  "xcpipe_torch_pickle_fuzz|common/checkpoint/fuzz/pickle_corpus|-max_len=4096"
  "xcpipe_http_request_fuzz|coordinator/http/fuzz/corpus|")

if(XCPIPE_FUZZ)
  # This is the clang build (the sub-build, or one configured by hand): one target for them all.
  set(_xcpipe_fuzz_executables)
  foreach(entry IN LISTS XCPIPE_FUZZ_TARGETS)
    string(REPLACE "|" ";" fields "${entry}")
    list(GET fields 0 exe)
    list(APPEND _xcpipe_fuzz_executables ${exe})
  endforeach()
  add_custom_target(xcpipe_fuzzers DEPENDS ${_xcpipe_fuzz_executables})
  return()
endif()

set(XCPIPE_FUZZ_TESTS AUTO CACHE STRING
    "Build the fuzz targets in a clang sub-build and run each as a ctest test: AUTO (when clang and libFuzzer are found), ON, OFF")
set_property(CACHE XCPIPE_FUZZ_TESTS PROPERTY STRINGS AUTO ON OFF)
set(XCPIPE_FUZZ_SECONDS 60 CACHE STRING "How long each fuzz test runs its target")
if(NOT XCPIPE_BUILD_TESTS OR XCPIPE_FUZZ_TESTS STREQUAL "OFF")
  return()
endif()

# Is there a clang that links -fsanitize=fuzzer? Probed by compiling a one-line target; a
# success is remembered per compiler, a failure is probed again at the next configure (after
# deploy/install-deps.sh has installed the missing package).
find_program(XCPIPE_FUZZ_CLANGXX NAMES clang++ clang++-19 clang++-16 clang++-15 clang++-14)
find_program(XCPIPE_FUZZ_CLANG NAMES clang clang-19 clang-16 clang-15 clang-14)
set(_xcpipe_fuzz_why "")
if(NOT XCPIPE_FUZZ_CLANGXX OR NOT XCPIPE_FUZZ_CLANG)
  set(_xcpipe_fuzz_why "clang++ was not found (deploy/install-deps.sh installs clang and libclang-rt-14-dev)")
elseif(NOT XCPIPE_FUZZ_LIBFUZZER_OK_FOR STREQUAL XCPIPE_FUZZ_CLANGXX)
  set(_probe_dir ${CMAKE_BINARY_DIR}/CMakeFiles/xcpipe-fuzz-probe)
  file(MAKE_DIRECTORY ${_probe_dir})
  file(WRITE ${_probe_dir}/probe.cpp
    "#include <cstddef>\n#include <cstdint>\n"
    "extern \"C\" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n")
  execute_process(
    COMMAND ${XCPIPE_FUZZ_CLANGXX} -fsanitize=fuzzer,address,undefined ${_probe_dir}/probe.cpp -o ${_probe_dir}/probe
    RESULT_VARIABLE _probe_rc OUTPUT_VARIABLE _probe_out ERROR_VARIABLE _probe_out)
  if(_probe_rc EQUAL 0)
    set(XCPIPE_FUZZ_LIBFUZZER_OK_FOR ${XCPIPE_FUZZ_CLANGXX} CACHE INTERNAL "clang++ that links libFuzzer")
  else()
    string(REGEX REPLACE "\n.*" "" _probe_out "${_probe_out}")
    if(NOT _probe_out)
      set(_probe_out "exit status ${_probe_rc}")
    endif()
    set(_xcpipe_fuzz_why
        "${XCPIPE_FUZZ_CLANGXX} cannot link -fsanitize=fuzzer (${_probe_out}); install libclang-rt-14-dev (deploy/install-deps.sh)")
  endif()
endif()
if(_xcpipe_fuzz_why AND XCPIPE_FUZZ_TESTS STREQUAL "ON")
  message(FATAL_ERROR "XCPIPE_FUZZ_TESTS=ON: ${_xcpipe_fuzz_why}")
endif()

set(_xcpipe_fuzz_dir ${CMAKE_BINARY_DIR}/fuzz)
set(_xcpipe_fuzz_runner ${CMAKE_SOURCE_DIR}/tests/fuzz/run_fuzz_target.sh)
set(_xcpipe_fuzz_env "")
if(EXISTS ${XCPIPE_FIXTURES_DIR}/tokenizer/tokenizer.model)
  # The prompt target encodes with the real tokenizer where the fixtures are (else it trains one).
  set(_xcpipe_fuzz_env "XCPIPE_FUZZ_TOKENIZER=${XCPIPE_FIXTURES_DIR}/tokenizer/tokenizer.model")
endif()

if(NOT _xcpipe_fuzz_why)
  include(ExternalProject)
  set(_fuzz_args
    -DCMAKE_C_COMPILER=${XCPIPE_FUZZ_CLANG}
    -DCMAKE_CXX_COMPILER=${XCPIPE_FUZZ_CLANGXX}
    -DCMAKE_BUILD_TYPE=RelWithDebInfo
    -DXCPIPE_FUZZ=ON
    -DXCPIPE_BUILD_TESTS=OFF
    -DXCPIPE_SANITIZE=OFF
    -DXCPIPE_WITH_CUDA=OFF
    -DXCPIPE_FIXTURES_DIR=${XCPIPE_FIXTURES_DIR})
  if(XCPIPE_CCACHE)
    list(APPEND _fuzz_args -DCMAKE_C_COMPILER_LAUNCHER=${XCPIPE_CCACHE} -DCMAKE_CXX_COMPILER_LAUNCHER=${XCPIPE_CCACHE})
  endif()
  ExternalProject_Add(xcpipe_fuzz_build
    SOURCE_DIR ${CMAKE_SOURCE_DIR}
    BINARY_DIR ${_xcpipe_fuzz_dir}
    PREFIX ${CMAKE_BINARY_DIR}/CMakeFiles/xcpipe-fuzz-build
    CMAKE_GENERATOR ${CMAKE_GENERATOR}
    CMAKE_ARGS ${_fuzz_args}
    # Only the fuzz targets: libtorch is configured (find_package) but never compiled against.
    BUILD_COMMAND ${CMAKE_COMMAND} --build <BINARY_DIR> --target xcpipe_fuzzers
    INSTALL_COMMAND ""
    # Run the sub-build's ninja on every build: it alone knows when a source changed.
    BUILD_ALWAYS ON
    # Its output is the fuzzers' build log: show it in the terminal, one step at a time.
    USES_TERMINAL_CONFIGURE ON
    USES_TERMINAL_BUILD ON)
endif()

set(_xcpipe_fuzz_manifest "")
foreach(entry IN LISTS XCPIPE_FUZZ_TARGETS)
  string(REPLACE "|" ";" fields "${entry}")
  list(GET fields 0 exe)
  list(GET fields 1 corpus)
  list(LENGTH fields n)
  set(flags "")
  if(n GREATER 2)
    list(GET fields 2 flags)
    string(REPLACE "," ";" flags "${flags}")
  endif()
  string(REGEX REPLACE "^xcpipe_(.*)_fuzz$" "\\1" short ${exe})
  string(APPEND _xcpipe_fuzz_manifest "${entry}\n")
  if(_xcpipe_fuzz_why)
    add_test(NAME fuzz.${short} COMMAND bash ${_xcpipe_fuzz_runner} --skip "${exe}: ${_xcpipe_fuzz_why}")
    set_tests_properties(fuzz.${short} PROPERTIES LABELS fuzz SKIP_RETURN_CODE 77)
  else()
    math(EXPR timeout "${XCPIPE_FUZZ_SECONDS} + 120")
    add_test(NAME fuzz.${short}
      COMMAND bash ${_xcpipe_fuzz_runner} ${_xcpipe_fuzz_dir}/bin/${exe} ${CMAKE_SOURCE_DIR}/${corpus}
              ${XCPIPE_FUZZ_SECONDS} ${CMAKE_BINARY_DIR}/fuzz-runs/${short} ${flags})
    set_tests_properties(fuzz.${short} PROPERTIES LABELS fuzz TIMEOUT ${timeout} ENVIRONMENT "${_xcpipe_fuzz_env}")
  endif()
endforeach()
file(WRITE ${CMAKE_BINARY_DIR}/fuzz-targets.txt
  "# executable|seed corpus|libFuzzer flags; binaries in ${_xcpipe_fuzz_dir}/bin (cmake/XcpipeFuzz.cmake)\n"
  "${_xcpipe_fuzz_manifest}")
