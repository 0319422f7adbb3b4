#!/usr/bin/env bash
# One command for a GPU host: builds xcpipe against the host's CUDA libtorch, runs the gpu tests,
# checks the fixtures on cuda:0, compares generated models on the CPU and on cuda:0, and measures
# decode speed against the memory-bandwidth roofline. Writes one JSON report.
#
# Needs on the host: a CUDA PyTorch (`python3 -c 'import torch'` with torch.cuda.is_available()),
# the CUDA toolkit (nvcc, NCCL), CMake, a C++20 compiler, dpkg-deb. No network: the Debian
# libraries come as .deb files made on a connected machine with
#   bash deploy/install-deps.sh --download DEBS
# (about 19 MB), unpacked here into the build folder.
#
# usage: bench/gpu_check.sh [--debs DIR] [--fixtures DIR] [--build DIR] [--out FILE] [--jobs N]
#   --debs DIR       .deb folder from install-deps.sh --download (omit when the libraries are installed)
#   --fixtures DIR   a fixtures folder (../shared/fixtures format); the check is "not run" without one
#   --build DIR      build folder (default build-gpu)
#   --out FILE       the report (default <build>/gpu-report.json)
#   --jobs N         build jobs (default: the cores)
# Exit 0 when every step that ran passed, 1 when one failed, 2 usage error. Each step's log is in
# <build>/gpu-logs/. Budget: under 8 minutes on a 16-core host with a ccache-cold build.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

debs="" fixtures="" build="build-gpu" out="" jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --debs) debs="$2"; shift 2 ;;
    --fixtures) fixtures="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$build/gpu-logs"
build=$(cd "$build" && pwd)
logs="$build/gpu-logs"
out=${out:-$build/gpu-report.json}
started=$(date +%s)
steps_json=""
failed=0

say() { printf '[gpu_check %4ds] %s\n' $(($(date +%s) - started)) "$*"; }
# step NAME: records a step's outcome ("passed", "failed", "not run: why") with its seconds.
record() {  # record <name> <status> <seconds> [extra-json]
  local extra="${4:-}"
  steps_json+="${steps_json:+,}{\"step\":\"$1\",\"status\":\"$2\",\"seconds\":$3${extra:+,$extra}}"
  [ "$2" = failed ] && failed=1
  say "$1: $2 ($3 s)"
}
timed() {  # timed <name> <log> <command...>: runs it, records passed/failed
  local name="$1" log="$2"; shift 2
  local t0; t0=$(date +%s)
  if "$@" >"$log" 2>&1; then record "$name" passed $(($(date +%s) - t0)); return 0; fi
  record "$name" failed $(($(date +%s) - t0)); tail -20 "$log"; return 1
}
finish() {
  local torch_json="${torch_info:-null}"
  printf '{"host":"%s","started":"%s","seconds":%d,"torch":%s,"gpu":%s,"steps":[%s],"compare":[%s],"decode":%s}\n' \
    "$(hostname)" "$(date -u -d @"$started" +%FT%TZ)" $(($(date +%s) - started)) "$torch_json" "${gpu_json:-null}" \
    "$steps_json" "${compare_json:-}" "${decode_json:-null}" >"$out"
  say "report: $out"
  exit $failed
}

# 1. The host's CUDA libtorch.
torch_info=$(python3 - <<'PY' 2>"$logs/torch.log"
import json, torch
print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda,
                  "cuda_available": torch.cuda.is_available(),
                  "devices": torch.cuda.device_count(),
                  "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
                  "cmake_prefix_path": torch.utils.cmake_prefix_path}))
PY
) || { torch_info=null; record torch failed 0; say "no usable PyTorch: $(tail -1 "$logs/torch.log")"; finish; }
say "torch: $torch_info"
case "$torch_info" in
  *'"cuda_available": true'*) ;;
  *) record torch failed 0; say "this PyTorch sees no CUDA device"; finish ;;
esac
case "$torch_info" in
  *'"cxx11_abi": false'*) record torch failed 0
    say "this libtorch uses the pre-C++11 string ABI; xcpipe's Debian libraries use the C++11 one: use a newer wheel or the cxx11-abi libtorch archive"
    finish ;;
esac
record torch passed 0
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
gpu_json=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 |
           awk -F', ' '{printf "{\"name\":\"%s\",\"memory\":\"%s\",\"driver\":\"%s\"}", $1, $2, $3}')

# 2. The Debian libraries, unpacked into the build folder.
prefix_path="$torch_prefix"
if [ -n "$debs" ]; then
  timed deps "$logs/deps.log" bash deploy/install-deps.sh --from "$debs" --prefix "$build/deps" || finish
  # shellcheck disable=SC1091
  . "$build/deps/env.sh"
  prefix_path="$torch_prefix;$build/deps/usr"
fi

# 3. Configure against the CUDA libtorch: the configure line must say it computes on CUDA.
timed configure "$logs/configure.log" cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix_path" -DCMAKE_CUDA_ARCHITECTURES=native -DXCPIPE_FUZZ_TESTS=OFF || finish
grep -h "xcpipe:" "$logs/configure.log"
if ! grep -q "computes on CUDA: ON" "$logs/configure.log"; then
  record configure_cuda failed 0; say "CMake did not find a CUDA libtorch at $torch_prefix"; finish
fi

# 4. Build (the CUDA-only source, common/model/src/cuda_allocator.cpp, compiles only here).
timed build "$logs/build.log" cmake --build "$build" -j "$jobs" || finish
bin="$build/bin"

# 5. The gpu-labelled tests (placement on cuda:0, the CUDA/NCCL runtime, the NCCL cluster on 2 GPUs).
timed gpu_tests "$logs/gpu_tests.log" ctest --test-dir "$build" -L gpu --output-on-failure -j1
grep -E "tests passed|Skipped|SKIP" "$logs/gpu_tests.log" | tail -5

# 6. check-fixtures on cuda:0, in process and through 2 workers sharing the GPU.
if [ -n "$fixtures" ] && [ -d "$fixtures" ]; then
  timed fixtures_in_process "$logs/fixtures.log" "$bin/xcpipe" check-fixtures "$fixtures" --device cuda:0
  timed fixtures_2_workers_f32 "$logs/fixtures_w2.log" "$bin/xcpipe" check-fixtures "$fixtures" --device cuda:0 --workers 2
  timed fixtures_2_workers_bf16 "$logs/fixtures_w2_bf16.log" "$bin/xcpipe" check-fixtures "$fixtures" --device cuda:0 \
    --workers 2 --dtype bf16
  tail -1 "$logs/fixtures.log" "$logs/fixtures_w2.log" "$logs/fixtures_w2_bf16.log"
else
  record fixtures "not run: no fixtures folder given (--fixtures)" 0
fi

# 7. Generated models of all four versions on the CPU and on cuda:0 in the same run.
models="$build/gpu-models"
mkdir -p "$models"
compare_json=""
for arch in ixc2-vl ixc2-4khd ixc2.5 ixc1; do
  [ -d "$models/$arch" ] || "$bin/xcpipe" mkmodel --arch "$arch" --preset tiny --out "$models/$arch" >"$logs/mkmodel-$arch.log" 2>&1
  for dtype in f32 bf16; do
    t0=$(date +%s)
    if line=$("$bin/xcpipe-worker" compare-devices --model "$models/$arch" --device cuda:0 --dtype "$dtype" \
                2>"$logs/compare-$arch-$dtype.log"); then
      record "compare_${arch}_$dtype" passed $(($(date +%s) - t0))
    else
      record "compare_${arch}_$dtype" failed $(($(date +%s) - t0)); tail -3 "$logs/compare-$arch-$dtype.log"
    fi
    echo "$line"
    compare_json+="${compare_json:+,}${line:-null}"
  done
done

# 8. Decode speed of a memory-bound model (hidden 4096, 8 layers, bf16) against the roofline.
large="$build/gpu-models/large"
t0=$(date +%s)
if [ -d "$large" ] || "$bin/xcpipe" mkmodel --arch ixc2-vl --preset large --dtype bf16 --out "$large" >"$logs/mkmodel-large.log" 2>&1; then
  if decode_json=$("$bin/xcpipe-worker" bench-decode --model "$large" --device cuda:0 --dtype bf16 --new-tokens 128 \
                     2>"$logs/decode.log"); then
    record decode passed $(($(date +%s) - t0)); echo "$decode_json"
  else
    decode_json=null; record decode failed $(($(date +%s) - t0)); tail -3 "$logs/decode.log"
  fi
else
  record decode failed $(($(date +%s) - t0)); tail -3 "$logs/mkmodel-large.log"
fi
finish
