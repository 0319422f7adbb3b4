#!/usr/bin/env bash
# Installs every build and test dependency of xcpipe from Debian 12 packages.
# Idempotent: packages already present are skipped by apt; safe to re-run.
# Needs root (or sudo). Prints each step. CUDA/NCCL are not installed here: where a
# CUDA toolkit is present (for example /usr/local/cuda) the build finds it on its own.
set -euo pipefail

log() { printf '[install-deps] %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    log "must run as root (or with sudo available)"; exit 1
  fi
fi

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache pkg-config git
  # compute: libtorch CPU build, and OpenBLAS (without it libtorch uses the reference BLAS, ~30x slower)
  libtorch-dev libopenblas0-pthread
  # control plane: ZeroMQ + C++ bindings; messages: Cap'n Proto
  libzmq3-dev cppzmq-dev capnproto libcapnp-dev
  # tokenizer (library, and the trainer used by `xcpipe mkmodel`)
  libsentencepiece-dev sentencepiece
  # Boost: Asio (TCP data plane, timers, signals), Beast (HTTP metrics)
  libboost-dev libboost-system-dev
  # JSON, TOML, CLI parsing, logging
  nlohmann-json3-dev libtomlplusplus-dev libcli11-dev libspdlog-dev libfmt-dev
  # image decoding
  libpng-dev libturbojpeg0-dev
  # zip reader for `xcpipe convert` (torch.save .bin files are zip archives)
  libzip-dev
  # systemd readiness notification (sd_notify)
  libsystemd-dev
  # tests
  libgtest-dev libgmock-dev
  # allocator that keeps freed pages (first touch of fresh memory is slow on these hosts)
  libjemalloc2
  # fuzzing and sanitizers: the fuzz tests build their targets with clang (the main build is g++);
  # libclang-rt-14-dev holds libFuzzer (libclang_rt.fuzzer) and the ASan/UBSan runtimes
  clang libclang-rt-14-dev
  # fault tests: network namespaces and tools used by the scripts; nftables for the chaos runs'
  # partitions and packet loss inside namespaces (tc, for bandwidth caps, comes with iproute2)
  iproute2 procps python3 python3-numpy nftables
  # deploy test: a real single-host Slurm (controller, node daemon, srun/sbatch) started by
  # tests/deploy/slurm_test.sh with a scratch config; munge is Slurm's usual authentication
  slurmctld slurmd slurm-client munge
  # HTTP API tests: Node.js and npm run the official `openai` client (tests/http/setup_node.sh
  # installs the pinned npm packages), chromium is the browser the console test drives
  nodejs npm chromium
  # HTTP API: OpenSSL for https:// image URLs (optional in the build); its CLI makes the tests'
  # certificates
  libssl-dev openssl
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  log "all ${#PACKAGES[@]} packages already installed"
else
  log "missing ${#missing[@]} packages: ${missing[*]}"
  log "apt-get update"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  log "apt-get install (this can take several minutes: libtorch is large)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Progress-Fancy=0 -o APT::Status-Fd=1 "${missing[@]}" \
    | grep --line-buffered -E '^(pmstatus|Setting up|Unpacking)' | \
    awk '/^pmstatus/ { split($0, a, ":"); pct = int(a[3]); if (pct >= last + 10) { printf "[install-deps] %d%%\n", pct; fflush(); last = pct } next } { }' || true
  # Verify: apt's exit status is hidden by the progress filter above.
  still=()
  for p in "${missing[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || still+=("$p")
  done
  if [ ${#still[@]} -ne 0 ]; then
    log "failed to install: ${still[*]}"; exit 1
  fi
  log "installed ${#missing[@]} packages"
fi

# libtorch must pick OpenBLAS as libblas.so.3, not the reference BLAS.
if command -v update-alternatives >/dev/null 2>&1; then
  blas=$(update-alternatives --query libblas.so.3-x86_64-linux-gnu 2>/dev/null | awk '/^Value:/ {print $2}')
  log "libblas.so.3 -> ${blas:-unknown}"
fi
log "done"
