#!/usr/bin/env bash
# Installs every build and test dependency of xcpipe from Debian 12 packages.
# Idempotent: packages already present are skipped by apt; safe to re-run.
# Needs root (or sudo). Prints each step. CUDA/NCCL are not installed here: where a
# CUDA toolkit is present (for example /usr/local/cuda) the build finds it on its own.
#
# Air-gapped GPU hosts (no registry; a CUDA libtorch, CUDA and CMake already there):
#   on a connected Debian 12 machine:  bash deploy/install-deps.sh --download DIR
#       fetches the .deb files of the libraries xcpipe builds against (not libtorch: the GPU
#       host brings its own CUDA one) with their dependencies, plus DIR/MANIFEST;
#   on the GPU host:                   bash deploy/install-deps.sh --from DIR --prefix PREFIX
#       unpacks them into PREFIX (no root, no dpkg database touched), points their pkg-config
#       files there and writes PREFIX/env.sh; `. PREFIX/env.sh` before cmake (README: GPU hosts).
set -euo pipefail

log() { printf '[install-deps] %s\n' "$*"; }

usage() {
  cat <<'USAGE'
usage: install-deps.sh                          install every build and test dependency (root, Debian 12)
       install-deps.sh --download DIR           fetch the build libraries' .deb files into DIR
       install-deps.sh --from DIR --prefix P    unpack DIR's .deb files into P and write P/env.sh
Exit codes: 0 done, 1 a step failed, 2 usage error.
USAGE
}

# What an air-gapped GPU host needs to build and test xcpipe: the libraries and tools beside
# libtorch (which comes with CUDA from the host's PyTorch) and the toolchain (the host's).
OFFLINE_PACKAGES=(
  libzmq3-dev libzmq5 cppzmq-dev capnproto libcapnp-dev libcapnp-0.9.2
  libsentencepiece-dev libsentencepiece0 sentencepiece
  libboost-dev libboost1.74-dev nlohmann-json3-dev libtomlplusplus-dev libtomlplusplus3 libcli11-dev
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
  libpng-dev libpng16-16 libturbojpeg0-dev libturbojpeg0 libzip-dev libzip4 libsystemd-dev
  libgtest-dev libgmock-dev libjemalloc2 ninja-build
  libsodium23 libpgm-5.3-0 libnorm1 libgssapi-krb5-2 libbsd0 libmd0 libkrb5-3 libk5crypto3 libkrb5support0
  libkeyutils1 libcom-err2
)

mode=install
dir=""
prefix=""
while [ $# -gt 0 ]; do
  case "$1" in
    --download) mode=download; dir="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --from) mode=from; dir="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    --prefix) prefix="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
    -h|--help) usage; exit 0 ;;
    *) log "unknown argument '$1'"; usage >&2; exit 2 ;;
  esac
done

if [ "$mode" = download ]; then
  [ -n "$dir" ] || { log "--download needs a folder"; exit 2; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  log "downloading ${#OFFLINE_PACKAGES[@]} packages into $dir"
  if ! (cd "$dir" && apt-get download -q -o APT::Sandbox::User=root "${OFFLINE_PACKAGES[@]}" >/dev/null); then
    log "apt-get download failed (run 'apt-get update' first, as root)"; exit 1
  fi
  (cd "$dir" && for f in *.deb; do echo "$(dpkg-deb -f "$f" Package) $(dpkg-deb -f "$f" Version)"; done) > "$dir/MANIFEST"
  log "$(ls "$dir"/*.deb | wc -l) files, $(du -sh "$dir" | cut -f1); listed in $dir/MANIFEST"
  exit 0
fi

if [ "$mode" = from ]; then
  [ -n "$dir" ] && [ -d "$dir" ] || { log "--from needs a folder of .deb files"; exit 2; }
  [ -n "$prefix" ] || { log "--from needs --prefix PREFIX (where to unpack)"; exit 2; }
  command -v dpkg-deb >/dev/null || { log "dpkg-deb is needed to unpack .deb files"; exit 1; }
  ls "$dir"/*.deb >/dev/null 2>&1 || { log "no .deb files in $dir"; exit 1; }
  mkdir -p "$prefix"
  prefix=$(cd "$prefix" && pwd)
  n=0
  for f in "$dir"/*.deb; do dpkg-deb -x "$f" "$prefix"; n=$((n + 1)); done
  # pkg-config files name /usr; point them at the prefix.
  find "$prefix" -name '*.pc' -exec sed -i "s|^prefix=/usr|prefix=$prefix/usr|; s|=/usr/|=$prefix/usr/|g" {} +
  # Absolute symlinks in the packages (for example lib*.so -> /lib/...) resolve inside the prefix.
  find "$prefix" -type l | while read -r link; do
    target=$(readlink "$link")
    case "$target" in /*) [ -e "$prefix$target" ] && ln -sfn "$prefix$target" "$link" ;; esac
  done
  multiarch=$(find "$prefix/usr/lib" -maxdepth 1 -type d -name '*-linux-gnu' | head -1)
  cat > "$prefix/env.sh" <<ENV
# Written by deploy/install-deps.sh --from: the libraries unpacked here, for cmake and at run time.
export CMAKE_PREFIX_PATH="$prefix/usr\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
export PKG_CONFIG_PATH="$multiarch/pkgconfig:$prefix/usr/share/pkgconfig\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$multiarch\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PATH="$prefix/usr/bin:\$PATH"
ENV
  log "unpacked $n packages into $prefix; before cmake: . $prefix/env.sh"
  exit 0
fi

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
  # style test: clang-format checks the C++ sources against .clang-format
  clang-format
  # fault tests: network namespaces and tools used by the scripts; nftables for the chaos runs'
  # partitions and packet loss inside namespaces (tc, for bandwidth caps, comes with iproute2)
  iproute2 procps python3 python3-numpy nftables
  # deploy test: `systemd-analyze verify` checks the units (absent from minimal images and containers)
  systemd
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
  # A Node.js from elsewhere (NodeSource's nodejs bundles npm and conflicts with Debian's npm
  # package) already provides the commands the tests run.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
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
