#!/usr/bin/env bash
# The chaos soak (not in CI): one long chaos run (30 minutes by default) that samples the
# resident memory, open file descriptors and threads of every process (coordinator, workers,
# and the runner holding the clients and proxies) every 10 s and reports, per process that lived
# through at least half the run, the median of the first fifth of samples against the last
# fifth. The run fails when any grows beyond the bounds it prints (xcpipe-chaos --sample-s).
# The coordinator is not killed in the soak (every other fault kind is drawn), so its trend
# spans the whole run. Samples: build/reports/chaos_soak/resources.jsonl; figures:
# build/reports/chaos_soak/result.json.
#
#   bash bench/chaos_soak.sh [MINUTES=30] [BUILD_DIR=build]
set -uo pipefail
minutes=${1:-30}; build=${2:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$root" && cd "$build" && pwd) || { echo "no build folder $2"; exit 1; }
chaos=$build/bin/xcpipe-chaos
[ -x "$chaos" ] || { echo "$chaos missing: cmake --build $build --target xcpipe-chaos"; exit 1; }
out=$build/reports/chaos_soak; rm -rf "$out"; mkdir -p "$build/reports"
kinds=kill9_worker,stop_worker,host_loss,partition_sym,partition_asym,partition_control,packet_loss,bandwidth,delay,conn_reset,clock_jump,duplicate_identity,version_skew
nice -n 10 "$chaos" --duration-s $((minutes * 60)) --sample-s 10 --faults "$kinds" --model "$build/chaos-model" \
  --out "$out" --keep 2>&1 | tee "$build/reports/chaos_soak.log" | grep -v '^chaos: [0-9.]* s  #'
exit "${PIPESTATUS[0]}"
