#!/usr/bin/env bash
# check-fixtures must fail (exit 6, "M failed" with M > 0) when an expected value differs:
# a copy of one model folder whose greedy tokens are altered.
set -u
bin="$1"; fixtures="$2"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/f/ixc2_vl/cases"
ln -s "$fixtures/tokenizer" "$tmp/f/tokenizer"
ln -s "$fixtures/ixc2_vl/checkpoint" "$tmp/f/ixc2_vl/checkpoint"
ln -s "$fixtures/ixc2_vl/model_info.json" "$tmp/f/ixc2_vl/model_info.json"
mkdir "$tmp/f/ixc2_vl/cases/text_chat"
for f in "$fixtures"/ixc2_vl/cases/text_chat/*; do ln -s "$f" "$tmp/f/ixc2_vl/cases/text_chat/"; done
# Flip the first generated token id (int64 little-endian after the .npy header).
rm "$tmp/f/ixc2_vl/cases/text_chat/generated_ids.npy"
cp "$fixtures/ixc2_vl/cases/text_chat/generated_ids.npy" "$tmp/f/ixc2_vl/cases/text_chat/generated_ids.npy"
size=$(stat -c %s "$tmp/f/ixc2_vl/cases/text_chat/generated_ids.npy")
printf '\x07' | dd of="$tmp/f/ixc2_vl/cases/text_chat/generated_ids.npy" bs=1 seek=$((size - 64)) conv=notrunc status=none
out=$("$bin/xcpipe" check-fixtures "$tmp/f" --no-bf16 2>&1); code=$?
echo "$out" | grep -E '^FAIL|passed,' 
if [ "$code" -ne 6 ]; then echo "expected exit 6, got $code"; exit 1; fi
echo "$out" | tail -1 | grep -qE '^[0-9]+ passed, [1-9][0-9]* failed$' || { echo "last line is not 'N passed, M failed' with M > 0"; exit 1; }
echo "$out" | grep -q '^FAIL model/ixc2_vl/text_chat/generated_ids' || { echo "the altered token was not reported"; exit 1; }
