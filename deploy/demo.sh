#!/usr/bin/env bash
# The main job, end to end on this machine: make a tiny XComposer2-VL model on the spot, serve
# it with a coordinator and 3 worker processes (a 3-stage pipeline over loopback TCP), ask a
# question about a picture, stream the answer, show the cluster's status, and stop.
# Run from the repository root after building (build/bin). Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin}
WORKERS=${WORKERS:-3}
work=$(mktemp -d /tmp/xcpipe-demo.XXXXXX)
server=""
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -INT "$server" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "1. A tiny XComposer2-VL model with random weights and a tokenizer trained on the spot"
"$BIN/xcpipe" mkmodel --arch ixc2-vl --preset tiny --out "$work/model"

step "2. A picture to ask about (a 320x240 PNG drawn here)"
python3 - "$work/picture.png" <<'PY'
import struct, sys, zlib
w, h = 320, 240
rows = []
for y in range(h):
    row = bytearray([0])
    for x in range(w):
        inside = (x - 160) ** 2 + (y - 120) ** 2 < 60 ** 2
        row += bytes((230, 40, 40) if inside else (x * 255 // w, y * 255 // h, 180))
    rows.append(bytes(row))
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
PY
echo "wrote $work/picture.png"

step "3. serve-local: a coordinator and $WORKERS worker processes"
"$BIN/xcpipe" serve-local --model "$work/model" --workers "$WORKERS" --listen 'tcp://127.0.0.1:*' \
  > "$work/serve.out" 2> "$work/serve.log" &
server=$!
address=""
for _ in $(seq 600); do
  address=$(sed -n 's/^ready //p' "$work/serve.out" | head -1)
  [ -n "$address" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; echo "serve-local exited early"; exit 1; }
  sleep 0.2
done
[ -n "$address" ] || { tail -20 "$work/serve.log"; echo "the cluster did not become ready"; exit 1; }
grep -E "plan \(epoch|stage [0-9]+: worker" "$work/serve.log" | sed 's/^.*\] //'
echo "ready $address"

step "4. submit: a prompt with an image, the answer streamed as it is generated"
"$BIN/xcpipe" submit --coordinator "$address" --prompt '<ImageHere>Please describe this picture in detail.' \
  --image "$work/picture.png" --max-new-tokens 24
"$BIN/xcpipe" submit --coordinator "$address" --prompt '<ImageHere>What colour is the circle?' \
  --image "$work/picture.png" --max-new-tokens 8 --json

step "5. status"
"$BIN/xcpipe" status --coordinator "$address"

step "6. stop (SIGINT drains the workers and the coordinator)"
kill -INT "$server"
wait "$server" && echo "stopped cleanly"
server=""
