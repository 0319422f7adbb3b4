# Finds every third-party dependency in one place. Each is a Debian 12 package installed by
# deploy/install-deps.sh; the README says why each one is there.
include_guard(GLOBAL)

find_package(Threads REQUIRED)
find_package(GTest REQUIRED)
find_package(PkgConfig REQUIRED)

# Control plane: ZeroMQ (C library) and cppzmq (header-only C++ bindings).
pkg_check_modules(ZMQ REQUIRED IMPORTED_TARGET libzmq)
find_package(cppzmq REQUIRED)

# Messages: Cap'n Proto (runtime library + schema compiler).
find_package(CapnProto REQUIRED)

# Tokenizer. Never link into a target that also links libtorch: Debian's sentencepiece exports its
# own protobuf-lite 3.14, libtorch needs protobuf 3.21, and a process with both dies before main.
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

# Boost.Asio (TCP data plane, timers, signals) and Boost.Beast (HTTP metrics): header-only.
find_package(Boost 1.74 REQUIRED)

# JSON, TOML, command lines, logging.
find_package(nlohmann_json 3.10 REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(CLI11 REQUIRED)
find_package(spdlog REQUIRED)

# Image decoding.
pkg_check_modules(PNG REQUIRED IMPORTED_TARGET libpng16)
pkg_check_modules(TURBOJPEG REQUIRED IMPORTED_TARGET libturbojpeg)

# Zip archives: torch.save's .bin files, read by `xcpipe convert` (common/checkpoint).
pkg_check_modules(LIBZIP REQUIRED IMPORTED_TARGET libzip)

# systemd readiness/watchdog notification (sd_notify).
pkg_check_modules(SYSTEMD REQUIRED IMPORTED_TARGET libsystemd)

# Compute: libtorch (CPU build from Debian). Only worker-side targets link it.
find_package(Torch REQUIRED)
# Torch's exported flags add -D_GLIBCXX_USE_CXX11_ABI and friends; keep them on torch targets only.
add_library(xcpipe_torch INTERFACE)
target_link_libraries(xcpipe_torch INTERFACE ${TORCH_LIBRARIES})
target_include_directories(xcpipe_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
add_library(xcpipe::torch ALIAS xcpipe_torch)
# Whether this libtorch can compute on CUDA devices. Debian's is CPU only; a CUDA libtorch (the
# official archive, or the one inside a pip `torch` CUDA wheel, found through
# -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')) exports
# torch_cuda. Workers refuse a CUDA device (exit 7) in a build without it.
if(TARGET torch_cuda OR TARGET c10_cuda OR "${TORCH_LIBRARIES}" MATCHES "torch_cuda")
  set(XCPIPE_TORCH_CUDA ON)
else()
  set(XCPIPE_TORCH_CUDA OFF)
endif()
message(STATUS "xcpipe: libtorch ${Torch_VERSION} (${Torch_DIR}): computes on CUDA: ${XCPIPE_TORCH_CUDA}")

# CUDA + NCCL for the GPU data plane, behind XCPIPE_WITH_CUDA.
set(XCPIPE_CUDA_ENABLED OFF)
if(NOT XCPIPE_WITH_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(XCPIPE_NVCC nvcc PATHS /usr/local/cuda/bin NO_CACHE)
    if(XCPIPE_NVCC)
      set(CMAKE_CUDA_COMPILER ${XCPIPE_NVCC})
    endif()
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT CMAKE_CUDA_ARCHITECTURES)
      # "native" fails on a host without a GPU; name the data-centre architectures.
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    # One libnccl per process: a CUDA libtorch from a pip wheel loads the NCCL of its own
    # `nvidia-nccl` wheel, so link that one when it is there (a toolkit's NCCL beside it would
    # otherwise be a second copy under the same soname, and which one wins depends on load order).
    set(XCPIPE_NCCL_HINTS "")
    if(XCPIPE_TORCH_CUDA)
      get_filename_component(XCPIPE_SITE_PACKAGES "${Torch_DIR}/../../../.." ABSOLUTE)
      list(APPEND XCPIPE_NCCL_HINTS "${XCPIPE_SITE_PACKAGES}/nvidia/nccl")
    endif()
    find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${XCPIPE_NCCL_HINTS} ${CUDAToolkit_INCLUDE_DIRS} /usr/include
              PATH_SUFFIXES include)
    find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2
                 HINTS ${XCPIPE_NCCL_HINTS} ${CUDAToolkit_LIBRARY_DIR} /usr/lib/x86_64-linux-gnu PATH_SUFFIXES lib)
    if(NCCL_LIBRARY)
      message(STATUS "xcpipe: NCCL: ${NCCL_LIBRARY}")
    endif()
    if(NCCL_INCLUDE_DIR AND NCCL_LIBRARY)
      set(XCPIPE_CUDA_ENABLED ON)
    elseif(XCPIPE_WITH_CUDA STREQUAL "ON")
      message(FATAL_ERROR "XCPIPE_WITH_CUDA=ON but NCCL was not found (nccl.h / libnccl)")
    endif()
  elseif(XCPIPE_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "XCPIPE_WITH_CUDA=ON but no CUDA compiler was found; set CUDACXX or CMAKE_CUDA_COMPILER")
  endif()
endif()

if(XCPIPE_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()
