#!/usr/bin/env bash
# Runs every benchmark in bench/ and says where the reports are.
#
#   bash bench/run_benchmarks.sh [BUILD_DIR]        (default: build)
#
# Builds the benchmark targets (and xcpipe, xcpipe-worker) in BUILD_DIR, makes a small random
# XComposer2-VL model (xcpipe mkmodel --preset small, a few hundred MB) in a temporary folder,
# runs plan_bench, plan_ratios, dataplane_bench, decode_bench, split_bench, pipeline_bench, beam_bench and
# `xcpipe bench strategies` (written to bench_strategies.json), and removes the model. Each
# benchmark prints its table and writes BUILD_DIR/reports/<name>.json (.md for plan_ratios).
# Extra arguments per benchmark: DECODE_ARGS, SPLIT_ARGS, PIPELINE_ARGS, DATAPLANE_ARGS, STRATEGIES_ARGS,
# BEAM_ARGS.
# Safe to re-run. Takes several minutes on the 2-core VM (most of it decode and pipeline).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
FIXTURES=${XCPIPE_FIXTURES:-../shared/fixtures}

if [ ! -f "$BUILD/build.ninja" ] && [ ! -f "$BUILD/Makefile" ]; then
  cmake -S . -B "$BUILD" -G Ninja
fi
cmake --build "$BUILD" --target xcpipe xcpipe-worker plan_bench plan_ratios dataplane_bench decode_bench split_bench pipeline_bench \
  beam_bench

work=$(mktemp -d /tmp/xcpipe-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }

step "model: xcpipe mkmodel --arch ixc2-vl --preset small (random weights, f32)"
"$BUILD/bin/xcpipe" mkmodel --arch ixc2-vl --preset small --out "$work/model"

step "plan_bench"
"$BUILD/bin/plan_bench"

step "plan_ratios"
if [ -d "$FIXTURES/real_layouts" ]; then
  "$BUILD/bin/plan_ratios" --layouts "$FIXTURES/real_layouts" --configs configs
else
  echo "skipped: no $FIXTURES/real_layouts (set XCPIPE_FIXTURES)"
fi

step "dataplane_bench"
# shellcheck disable=SC2086
"$BUILD/bin/dataplane_bench" ${DATAPLANE_ARGS:-}

step "decode_bench"
# shellcheck disable=SC2086
"$BUILD/bin/decode_bench" --model "$work/model" ${DECODE_ARGS:-}

step "split_bench"
# shellcheck disable=SC2086
"$BUILD/bin/split_bench" --model "$work/model" ${SPLIT_ARGS:-}

step "pipeline_bench"
# shellcheck disable=SC2086
"$BUILD/bin/pipeline_bench" --model "$work/model" ${PIPELINE_ARGS:-}

step "beam_bench"
# One request of 5 beams against 5 greedy requests of the same prompt, 2 workers, medians of 5 runs.
# shellcheck disable=SC2086
"$BUILD/bin/beam_bench" --model "$work/model" --out "$BUILD/reports/beam_bench.json" ${BEAM_ARGS:-}

step "xcpipe bench strategies"
# The placement strategies side by side on one mixed workload; STRATEGIES_ARGS replaces the
# default 3 workers x 1 thread (e.g. "--workers 3 --threads-per-worker 2,1,1").
# shellcheck disable=SC2086
"$BUILD/bin/xcpipe" bench strategies --model "$work/model" --out "$BUILD/reports/bench_strategies.json" \
  ${STRATEGIES_ARGS:---workers 3 --threads-per-worker 1,1,1}

step "reports"
ls -l "$BUILD/reports"
echo "reports in $(cd "$BUILD/reports" && pwd)"
