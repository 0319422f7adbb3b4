#!/usr/bin/env bash
# Runs one libFuzzer target for a fixed time on a scratch copy of its seed corpus and fails on
# any finding. Used by the `fuzz` ctest tests (cmake/XcpipeFuzz.cmake) and bench/fuzz_long.sh.
#
#   run_fuzz_target.sh BINARY CORPUS_DIR SECONDS WORK_DIR [libFuzzer flags...]
#   run_fuzz_target.sh --skip "why"        # prints why and exits 77 (ctest SKIP_RETURN_CODE)
#
# The corpus is copied to WORK_DIR/corpus (the source tree is never written; inputs the run
# finds stay there for a look). A finding is any non-zero exit of the fuzzer (crash, sanitizer
# report, leak, per-input timeout, out-of-memory), a file in WORK_DIR/artifacts, or a sanitizer
# report in the log (WORK_DIR/fuzz.log). UBSan reports are made fatal. The last line printed is
#   RESULT name=... seconds=... execs=... execs_per_s=... cov=... ft=... corpus=... findings=N status=pass|fail
# which bench/fuzz_long.sh collects. Exit: 0 pass, 1 finding or error, 2 usage, 77 skipped.
set -u

if [ "${1:-}" = "--skip" ]; then
  echo "SKIPPED: ${2:-fuzzing is not available}"
  exit 77
fi
if [ $# -lt 4 ]; then
  echo "usage: $0 BINARY CORPUS_DIR SECONDS WORK_DIR [libFuzzer flags...]" >&2
  exit 2
fi
binary="$1"; corpus="$2"; seconds="$3"; work="$4"; shift 4
name="$(basename "$binary")"

if [ ! -x "$binary" ]; then
  echo "FAIL: $binary is missing: the clang fuzz sub-build did not produce it (see build output)"
  exit 1
fi
if [ ! -d "$corpus" ]; then
  echo "FAIL: seed corpus $corpus is missing"
  exit 1
fi

rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts"
cp -R "$corpus/." "$work/corpus/"
seeds=$(find "$work/corpus" -type f | wc -l)

# Leaks are findings; UBSan stops at the first report (the targets are built recoverable);
# a report's stack is symbolized when llvm-symbolizer is on the PATH or beside clang.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=1:abort_on_error=0:allocator_may_return_null=0"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}halt_on_error=1:print_stacktrace=1"
if ! command -v llvm-symbolizer >/dev/null 2>&1; then
  for s in /usr/lib/llvm-*/bin/llvm-symbolizer; do
    [ -x "$s" ] && export ASAN_SYMBOLIZER_PATH="$s" && break
  done
fi

echo "fuzz $name: ${seconds} s on $seeds seed(s) from $corpus (work dir $work)"
log="$work/fuzz.log"
# -timeout: one input taking longer is a hang (generous: ctest -j2 shares 2 cores with builds).
# -rss_limit_mb: a run growing past it is an out-of-memory finding (libFuzzer's default).
"$binary" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" >"$log" 2>&1
rc=$?

execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -1)
speed=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\).*/\1/p' "$log" | tail -1)
last=$(grep -E '^#[0-9]+' "$log" | tail -1)
cov=$(printf '%s\n' "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
ft=$(printf '%s\n' "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
corp=$(printf '%s\n' "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
artifacts=$(find "$work/artifacts" -type f | wc -l)
reports=$(grep -cE '^==[0-9]+==ERROR: |runtime error: |^SUMMARY: (Address|Leak|Undefined)|ERROR: libFuzzer' "$log")

findings=$((artifacts > reports ? artifacts : reports))
status=pass
if [ "$rc" -ne 0 ] || [ "$findings" -ne 0 ] || [ -z "$execs" ]; then
  status=fail
  [ "$findings" -eq 0 ] && findings=1
  echo "FAIL: $name exited $rc with $artifacts artifact(s) and $reports report line(s); the end of its log:"
  tail -n 60 "$log"
  for a in "$work/artifacts"/*; do
    [ -f "$a" ] && echo "reproduce: $binary $a   (then add it to $corpus)"
  done
else
  grep -E '^#[0-9]+' "$log" | tail -3
fi
echo "RESULT name=$name seconds=$seconds execs=${execs:-0} execs_per_s=${speed:-0} cov=${cov:-0} ft=${ft:-0} corpus=${corp:-0} findings=$findings status=$status"
[ "$status" = pass ]
