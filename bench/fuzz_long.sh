#!/usr/bin/env bash
# Runs every libFuzzer target for longer than CI's 60 s and writes a summary.
#
#   bash bench/fuzz_long.sh [SECONDS]      (default: 600 s per target)
#
# Environment: XCPIPE_BUILD_DIR (default build): the normal build, whose clang sub-build in
# BUILD/fuzz holds the targets (cmake/XcpipeFuzz.cmake; needs clang and libFuzzer, which
# deploy/install-deps.sh installs). FUZZ_JOBS (default 1): targets run at once; each is one
# process on one core, so 2 on the 2-core VM at most.
# Each target runs under ASan+UBSan on a scratch copy of its seed corpus in
# BUILD/fuzz-long/<name> (the inputs it finds stay there; copy the interesting ones into the
# seed corpus by hand). Summary table: BUILD/reports/fuzz_long.md (execs, exec/s, coverage,
# corpus size, findings per target). A finding leaves its reproducer in
# BUILD/fuzz-long/<name>/artifacts and makes the script exit 1.
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-600}
BUILD=${XCPIPE_BUILD_DIR:-build}
JOBS=${FUZZ_JOBS:-1}
RUNNER=tests/fuzz/run_fuzz_target.sh
FIXTURES=${XCPIPE_FIXTURES:-../shared/fixtures}
# The prompt target encodes with the real tokenizer where the fixtures are (else it trains one).
if [ -z "${XCPIPE_FUZZ_TOKENIZER:-}" ] && [ -f "$FIXTURES/tokenizer/tokenizer.model" ]; then
  export XCPIPE_FUZZ_TOKENIZER="$FIXTURES/tokenizer/tokenizer.model"
fi

if [ ! -f "$BUILD/build.ninja" ] && [ ! -f "$BUILD/Makefile" ]; then
  cmake -S . -B "$BUILD" -G Ninja || exit 1
fi
if ! cmake --build "$BUILD" --target xcpipe_fuzz_build; then
  echo "fuzz_long: the clang fuzz sub-build is not available in $BUILD (is clang with libFuzzer installed?" \
       "see the fuzz.* tests: ctest --test-dir $BUILD -L fuzz)" >&2
  exit 1
fi
manifest="$BUILD/fuzz-targets.txt"
[ -f "$manifest" ] || { echo "fuzz_long: $manifest is missing; re-run cmake" >&2; exit 1; }

mkdir -p "$BUILD/reports" "$BUILD/fuzz-long"
report="$BUILD/reports/fuzz_long.md"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)

run_one() {  # run_one EXE CORPUS FLAGS
  local exe="$1" corpus="$2" flags="$3" short
  short=${exe#xcpipe_}; short=${short%_fuzz}
  # shellcheck disable=SC2086  # flags are comma-separated words
  bash "$RUNNER" "$BUILD/fuzz/bin/$exe" "$corpus" "$SECONDS_EACH" "$BUILD/fuzz-long/$short" ${flags//,/ } \
    >"$BUILD/fuzz-long/$short.out" 2>&1
  local last
  last=$(tail -n 1 "$BUILD/fuzz-long/$short.out")
  case "$last" in
    RESULT*) echo "$last" ;;
    *) echo "RESULT name=$exe seconds=$SECONDS_EACH execs=0 execs_per_s=0 cov=0 ft=0 corpus=0 findings=0 status=fail" ;;
  esac
}

echo "fuzz_long: $(grep -vc '^#' "$manifest") targets x ${SECONDS_EACH} s, $JOBS at a time; summary in $report"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
while IFS='|' read -r exe corpus flags; do
  case "$exe" in ''|'#'*) continue ;; esac
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  echo "  start $exe"
  run_one "$exe" "$corpus" "$flags" >>"$results" &
done <"$manifest"
wait

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }
{
  echo "# Long fuzz runs ($started, ${SECONDS_EACH} s per target, ASan+UBSan)"
  echo
  echo "Host: $(nproc) cores; $(clang++ --version 2>/dev/null | head -1). Made by bench/fuzz_long.sh."
  echo
  echo "| target | seconds | execs | exec/s | cov | ft | corpus | findings | status |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
  sort "$results" | while read -r line; do
    echo "| $(field name "$line") | $(field seconds "$line") | $(field execs "$line") | $(field execs_per_s "$line")" \
         "| $(field cov "$line") | $(field ft "$line") | $(field corpus "$line") | $(field findings "$line")" \
         "| $(field status "$line") |"
  done
  echo
  echo "Logs and the corpora each run grew: $BUILD/fuzz-long/<target>/; reproducers in its artifacts/."
} >"$report"
cat "$report"
! grep -q 'status=fail' "$results" && [ "$(wc -l <"$results")" -eq "$(grep -vc '^#' "$manifest")" ]
