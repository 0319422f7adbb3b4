#!/usr/bin/env bash
# Long simulator runs (not in CI): xcpipe-sim over a range of seeds on J processes, the real
# coordinator against stand-in workers and clients under each seed's fault schedule (see
# tests/sim/sim.h). Prints every failing seed with its violations and replay command, then one
# line of figures: seeds, failing seeds, wall and simulated time, messages delivered, lost and
# duplicated, worker kills and pauses, coordinator restarts, client disconnects, and requests
# completed, failed and abandoned. The output is also kept in build/reports/sim_long.txt.
#
#   bash bench/sim_long.sh [FIRST=1] [LAST=100000] [JOBS=2] [BUILD_DIR=build]
# The CTest sim.seeds runs seeds 1..1000; any other range is a new sample of schedules.
set -uo pipefail
first=${1:-1}; last=${2:-100000}; jobs=${3:-2}; build=${4:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$root" && cd "$build" && pwd) || { echo "no build folder $4"; exit 1; }
sim=$build/bin/xcpipe-sim
[ -x "$sim" ] || { echo "$sim missing: cmake --build $build --target xcpipe-sim"; exit 1; }
mkdir -p "$build/reports"
echo "xcpipe-sim seeds $first..$last on $jobs process(es)"
nice -n 10 "$sim" --seeds "$first..$last" --jobs "$jobs" | tee "$build/reports/sim_long.txt"
exit "${PIPESTATUS[0]}"
