#!/usr/bin/env bash
# check-fixtures on cuda:0: in process (f32 and bf16), and through 2 workers sharing the GPU
# (TCP between them) in f32 and bf16. Skips (77) with the reason where this build's libtorch has
# no CUDA or the host has no GPU.
set -u
bin="$1"; fixtures="$2"
"$bin/xcpipe-worker" --probe --device cuda:0 >/tmp/xcpipe-gpu-probe.$$ 2>&1
code=$?
reason=$(tail -1 /tmp/xcpipe-gpu-probe.$$); rm -f /tmp/xcpipe-gpu-probe.$$
case $code in
  0) ;;
  7) echo "skipped: this build's libtorch has no CUDA ($reason)"; exit 77 ;;
  5) echo "skipped: no CUDA device on this host ($reason)"; exit 77 ;;
  *) echo "FAIL: xcpipe-worker --probe --device cuda:0 exited $code: $reason"; exit 1 ;;
esac
fail=0
run() {  # run <description> <check-fixtures args...>
  local what="$1"; shift
  local out; out=$("$bin/xcpipe" check-fixtures "$fixtures" "$@" 2>&1); local got=$?
  echo "$out" | grep -E '^(FAIL|[0-9]+ passed)' | head -20
  if [ "$got" -ne 0 ]; then echo "FAIL: $what (exit $got)"; fail=1; else echo "ok: $what"; fi
}
run "in process on cuda:0 (f32 and bf16)" --device cuda:0
run "2 workers on cuda:0, f32" --device cuda:0 --workers 2 --dtype f32
run "2 workers on cuda:0, bf16" --device cuda:0 --workers 2 --dtype bf16
exit $fail
