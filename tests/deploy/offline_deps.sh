#!/usr/bin/env bash
# The air-gapped install: deploy/install-deps.sh --download fetches the build libraries' .deb
# files; --from unpacks them into a prefix without root or dpkg's database, and a configure that
# sources its env.sh finds every library there (the host's own copies would otherwise win).
# Skips (77) when apt cannot download here (no package lists or no registry).
set -u
src="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
if ! bash "$src/deploy/install-deps.sh" --download "$tmp/debs" >"$tmp/download.log" 2>&1; then
  echo "skipped: apt-get download failed here: $(tail -1 "$tmp/download.log")"; exit 77
fi
n=$(ls "$tmp/debs"/*.deb | wc -l)
[ "$n" -ge 30 ] && [ -s "$tmp/debs/MANIFEST" ] && echo "ok: downloaded $n packages, MANIFEST written" ||
  { echo "FAIL: $n packages downloaded"; fail=1; }
bash "$src/deploy/install-deps.sh" --from "$tmp/debs" >"$tmp/from.log" 2>&1
[ $? -eq 2 ] && echo "ok: --from without --prefix is a usage error" || { echo "FAIL: --from without --prefix"; fail=1; }
if ! bash "$src/deploy/install-deps.sh" --from "$tmp/debs" --prefix "$tmp/prefix" >"$tmp/from.log" 2>&1; then
  echo "FAIL: --from: $(tail -3 "$tmp/from.log")"; exit 1
fi
grep -q "prefix=$tmp/prefix/usr" "$tmp/prefix/usr/lib/x86_64-linux-gnu/pkgconfig/libzmq.pc" &&
  echo "ok: pkg-config files point into the prefix" || { echo "FAIL: libzmq.pc still names /usr"; fail=1; }
# shellcheck disable=SC1091
(. "$tmp/prefix/env.sh"
 pkg-config --variable=libdir libzmq | grep -q "^$tmp/prefix/" || { echo "FAIL: pkg-config finds libzmq outside the prefix"; exit 1; }
 cmake -S "$src" -B "$tmp/build" -G Ninja -DXCPIPE_FUZZ_TESTS=OFF >"$tmp/configure.log" 2>&1 ||
   { echo "FAIL: configure against the prefix: $(tail -5 "$tmp/configure.log")"; exit 1; }
 for v in CapnProto_DIR cppzmq_DIR GTest_DIR spdlog_DIR nlohmann_json_DIR ZMQ_LIBDIR SENTENCEPIECE_LIBDIR; do
   grep -q "^$v:[A-Z]*=$tmp/prefix/" "$tmp/build/CMakeCache.txt" || { echo "FAIL: $v is not from the prefix"; exit 1; }
 done
 echo "ok: configure takes every library from the prefix") || fail=1
exit $fail
