#!/usr/bin/env bash
# Starts a local cluster with the HTTP API (xcpipe serve-local: a tiny XComposer2-VL model made
# by xcpipe mkmodel, N worker processes, an API key file) and runs one Node.js test file against
# it with node --test. Real processes, real sockets, the real npm client.
# Usage: run_with_cluster.sh BIN_DIR NODE_DIR TEST_FILE WORKERS [serve-local flags...]
# (in the flags, @WORK@ stands for the scratch folder, which holds an empty media/ folder and
# tls/: cert.pem, other.pem and their keys)
# The test file reads XCPIPE_HTTP_BASE (http://HOST:PORT), XCPIPE_API_KEY, XCPIPE_BIN,
# XCPIPE_COORDINATOR, XCPIPE_WORK (a scratch folder) and XCPIPE_REPORT_DIR.
set -euo pipefail
BIN=$1; NODE_DIR=$2; TEST=$3; WORKERS=$4; shift 4
WORK=$(mktemp -d)
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/xcpipe" mkmodel --arch ixc2-vl --preset tiny --out "$WORK/model" >/dev/null 2>&1
# @WORK@ in the serve-local flags names this run's scratch folder (e.g. --allowed-media-dir @WORK@/media).
mkdir -p "$WORK/media" "$WORK/tls"
# Two self-signed certificates for 127.0.0.1 (the tests' https image servers): one trusted with
# --remote-image-ca-file @WORK@/tls/cert.pem, one not.
for name in cert other; do
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$WORK/tls/$name-key.pem" -out "$WORK/tls/$name.pem" >/dev/null 2>&1
done
args=()
for a in "$@"; do args+=("${a//@WORK@/$WORK}"); done
# A key of 32 random characters (the gateway refuses keys shorter than 16).
tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >"$WORK/keys" || true
printf '\n# a comment line, ignored\n' >>"$WORK/keys"
"$BIN/xcpipe" serve-local --model "$WORK/model" --workers "$WORKERS" --listen 'tcp://127.0.0.1:*' \
  --http-listen 127.0.0.1:0 --api-key-file "$WORK/keys" "${args[@]}" \
  >"$WORK/serve.out" 2>"$WORK/serve.err" &
PID=$!
for _ in $(seq 1 1200); do
  grep -q '^http ' "$WORK/serve.out" 2>/dev/null && break
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "serve-local exited before serving:"; cat "$WORK/serve.err"; exit 1
  fi
  sleep 0.1
done
grep -q '^http ' "$WORK/serve.out" || { echo "serve-local did not start the HTTP API in 120 s"; cat "$WORK/serve.err"; exit 1; }
export XCPIPE_HTTP_BASE="http://$(awk '/^http /{sub("http://", "", $2); sub("/v1$", "", $2); print $2}' "$WORK/serve.out")"
export XCPIPE_COORDINATOR="$(awk '/^ready /{print $2}' "$WORK/serve.out")"
export XCPIPE_API_KEY="$(head -1 "$WORK/keys")"
export XCPIPE_BIN="$BIN" XCPIPE_WORK="$WORK"
export XCPIPE_REPORT_DIR="${XCPIPE_REPORT_DIR:-$BIN/../reports}"
export NODE_PATH="$NODE_DIR/node_modules"
echo "cluster: $WORKERS workers at $XCPIPE_COORDINATOR, HTTP API at $XCPIPE_HTTP_BASE"
rc=0
node --test --test-reporter=spec "$TEST" || rc=$?
if [ "$rc" -ne 0 ]; then
  echo "---- serve-local stderr (last 60 lines) ----"; tail -60 "$WORK/serve.err"
fi
exit "$rc"
