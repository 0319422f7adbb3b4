#!/usr/bin/env bash
# Every binary teaches its use with --help (exit 0) and reports usage errors with exit 2.
set -u
bin="$1"
fail=0
check() {  # check <expected-exit> <description> <command...>
  local want="$1" what="$2"; shift 2
  local out; out=$("$@" 2>&1); local got=$?
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; echo "$out" | head -5; fail=1
  else
    echo "ok: $what"
  fi
  LAST_OUT="$out"
}
for b in xcpipe xcpipe-coordinator xcpipe-worker; do
  check 0 "$b --help" "$bin/$b" --help
  echo "$LAST_OUT" | grep -q "Exit codes" || { echo "FAIL: $b --help does not document exit codes"; fail=1; }
  check 2 "$b with an unknown flag" "$bin/$b" --no-such-flag
done
check 2 "xcpipe with no subcommand" "$bin/xcpipe"
check 2 "xcpipe with an unknown subcommand" "$bin/xcpipe" frobnicate
check 2 "xcpipe-worker without --coordinator" "$bin/xcpipe-worker"
check 2 "xcpipe-worker with --encode-nice out of 0..19" "$bin/xcpipe-worker" --coordinator tcp://127.0.0.1:1 --encode-nice 25
echo "$LAST_OUT" | grep -q -- "--encode-nice: Value 25 not in range 0 to 19" || { echo "FAIL: the error does not name --encode-nice and its range"; fail=1; }
check 2 "xcpipe serve-local with a negative --prefill-chunk" "$bin/xcpipe" serve-local --model /nonexistent --prefill-chunk -5
echo "$LAST_OUT" | grep -q -- "--prefill-chunk" || { echo "FAIL: the error does not name --prefill-chunk"; fail=1; }
check 2 "xcpipe serve-local with an unknown --vision-stage" "$bin/xcpipe" serve-local --model /nonexistent --vision-stage middle
echo "$LAST_OUT" | grep -q -- "--vision-stage" || { echo "FAIL: the error does not name --vision-stage"; fail=1; }
check 2 "xcpipe-coordinator with an unknown --vision-stage" "$bin/xcpipe-coordinator" --model /nonexistent --listen tcp://127.0.0.1:1 --vision-stage middle
check 2 "xcpipe check-fixtures with an unknown --vision-stage" "$bin/xcpipe" check-fixtures /nonexistent --workers 2 --vision-stage middle
# Beam settings out of range are refused before anything connects.
check 4 "xcpipe submit with --num-beams out of range" "$bin/xcpipe" submit --coordinator tcp://127.0.0.1:1 --prompt hi --num-beams 65
echo "$LAST_OUT" | grep -q -- "--num-beams 65 is out of range; expected 1..64" || { echo "FAIL: the error does not name --num-beams"; fail=1; }
check 4 "xcpipe submit with --num-beams and sampling" "$bin/xcpipe" submit --coordinator tcp://127.0.0.1:1 --prompt hi --num-beams 3 --temperature 0.7
check 4 "xcpipe submit with an unknown --early-stopping" "$bin/xcpipe" submit --coordinator tcp://127.0.0.1:1 --prompt hi --num-beams 3 --early-stopping soon
# Text that is not UTF-8 is refused before anything connects, naming the byte offset.
check 4 "xcpipe submit with a prompt that is not UTF-8" "$bin/xcpipe" submit --coordinator tcp://127.0.0.1:1 --prompt $'ab\xffcd'
echo "$LAST_OUT" | grep -q "not valid UTF-8 at byte offset 2" || { echo "FAIL: the error does not name the byte offset"; fail=1; }
check 0 "xcpipe-worker --probe" "$bin/xcpipe-worker" --probe --device cpu
echo "$LAST_OUT" | grep -q '"device":"cpu"' || { echo "FAIL: --probe did not print the device JSON"; fail=1; }
exit $fail
