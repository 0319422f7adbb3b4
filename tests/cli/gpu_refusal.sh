#!/usr/bin/env bash
# A build whose libtorch has no CUDA refuses a CUDA device everywhere a user can ask for one,
# with exit 7 and words that say what was found and how to build for the GPU; `--device auto`
# computes on the CPU and says why. Skips (77) in a build whose libtorch has CUDA, where the
# gpu-labelled tests run instead.
set -u
bin="$1"
fail=0
probe=$("$bin/xcpipe-worker" --probe --device auto 2>/dev/null)
case "$probe" in
  *'"libtorch_cuda":true'*) echo "skipped: this build's libtorch has CUDA"; exit 77 ;;
  *'"libtorch_cuda":false'*) ;;
  *) echo "FAIL: xcpipe-worker --probe printed no libtorch_cuda field: $probe"; exit 1 ;;
esac
case "$probe" in
  *'"device":"cpu"'*'libtorch built without CUDA'*) echo "ok: --device auto computes on the CPU and says why" ;;
  *) echo "FAIL: --device auto: $probe"; fail=1 ;;
esac
check7() {  # check7 <description> <command...>
  local what="$1"; shift
  local out; out=$(timeout 60 "$@" 2>&1); local got=$?
  if [ "$got" -ne 7 ]; then
    echo "FAIL: $what: exit $got, expected 7"; echo "$out" | tail -5; fail=1; return
  fi
  if ! echo "$out" | grep -q "libtorch built without CUDA" || ! echo "$out" | grep -q "CMAKE_PREFIX_PATH"; then
    echo "FAIL: $what: the message does not say what was found and how to build for the GPU"; echo "$out" | tail -5
    fail=1; return
  fi
  echo "ok: $what (exit 7)"
}
model=$(mktemp -d)
trap 'rm -rf "$model"' EXIT
"$bin/xcpipe" mkmodel --arch ixc2-vl --preset tiny --out "$model/m" >/dev/null 2>&1 || { echo "FAIL: mkmodel"; exit 1; }
check7 "xcpipe-worker --device cuda:0" "$bin/xcpipe-worker" --device cuda:0 --coordinator tcp://127.0.0.1:9
check7 "xcpipe run --device cuda:0" "$bin/xcpipe" run --model "$model/m" --prompt Hello --device cuda:0
check7 "xcpipe-worker check-fixtures --device cuda:0" "$bin/xcpipe-worker" check-fixtures "$model" --device cuda:0
exit $fail
