#!/usr/bin/env bash
# The device checks bench/gpu_check.sh runs on a GPU host, run here on the CPU: compare-devices
# (CPU float32 with the CPU fast paths against the generic op sequence in f32 and bf16) on a
# 2.x and a 1.0 model, and bench-decode's report. The same code compares against cuda:0 there.
set -u
bin="$1"
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for arch in ixc2-vl ixc1; do
  "$bin/xcpipe" mkmodel --arch "$arch" --preset tiny --out "$tmp/$arch" >/dev/null 2>&1 || { echo "FAIL: mkmodel $arch"; exit 1; }
  for dtype in f32 bf16; do
    out=$("$bin/xcpipe-worker" compare-devices --model "$tmp/$arch" --device cpu --dtype "$dtype" 2>&1); code=$?
    line=$(echo "$out" | tail -1)
    if [ $code -ne 0 ] || ! echo "$line" | grep -q '"passed":true' || ! echo "$line" | grep -q '"kernels":"generic"'; then
      echo "FAIL: compare-devices $arch $dtype (exit $code): $line"; fail=1
    else
      echo "ok: compare-devices $arch $dtype: $(echo "$line" | grep -o '"prompt_logits_max_abs_diff":[^,]*')"
    fi
  done
done
out=$("$bin/xcpipe-worker" compare-devices --model "$tmp/ixc1" --device cpu --dtype f16 2>&1); code=$?
if [ $code -ne 4 ]; then echo "FAIL: compare-devices in f16 on the CPU: exit $code, expected 4"; fail=1; else echo "ok: f16 on the CPU refused (exit 4)"; fi
out=$("$bin/xcpipe-worker" bench-decode --model "$tmp/ixc2-vl" --device cpu --dtype f32 --new-tokens 8 --runs 1 2>&1); code=$?
line=$(echo "$out" | tail -1)
if [ $code -ne 0 ] || ! echo "$line" | grep -q '"ms_per_token":[0-9]'; then
  echo "FAIL: bench-decode (exit $code): $line"; fail=1
else
  echo "ok: bench-decode: $(echo "$line" | grep -o '"ms_per_token":[^,}]*')"
fi
exit $fail
