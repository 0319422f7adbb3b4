#!/usr/bin/env bash
# xcpipe keys as a user runs it, and the binaries' key flags refusing unsafe or malformed keys.
set -u
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {  # check <expected-exit> <description> <expected-output-substring or ''> <command...>
  local want="$1" what="$2" needle="$3"; shift 3
  local out; out=$("$@" 2>&1); local got=$?
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; echo "$out" | head -5; fail=1
  elif [ -n "$needle" ] && ! grep -qF -- "$needle" <<<"$out"; then
    echo "FAIL: $what: output lacks '$needle'"; echo "$out" | head -5; fail=1
  else
    echo "ok: $what"
  fi
  LAST_OUT="$out"
}
umask 022  # a permissive umask must not widen the secret key
check 0 "generate" "" "$bin/xcpipe" keys generate --out "$tmp/keys" --name node-a
pub=$(tail -1 "$tmp/keys/node-a.pub")
[ "${#pub}" -eq 40 ] || { echo "FAIL: node-a.pub does not end with a 40-character key"; fail=1; }
[ "$(stat -c %a "$tmp/keys/node-a.key")" = 600 ] || { echo "FAIL: secret key mode $(stat -c %a "$tmp/keys/node-a.key")"; fail=1; }
[ "$(stat -c %a "$tmp/keys")" = 700 ] || { echo "FAIL: key folder mode $(stat -c %a "$tmp/keys")"; fail=1; }
grep -qF -- "$(grep -v '^#' "$tmp/keys/node-a.key")" <<<"$LAST_OUT" && { echo "FAIL: generate printed the secret key"; fail=1; }
before=$(cat "$tmp/keys/node-a.key")
check 1 "generate refuses to overwrite" "already exists" "$bin/xcpipe" keys generate --out "$tmp/keys" --name node-a
[ "$before" = "$(cat "$tmp/keys/node-a.key")" ] || { echo "FAIL: refused, yet the key changed"; fail=1; }
check 0 "generate --force replaces" "" "$bin/xcpipe" keys generate --out "$tmp/keys" --name node-a --force
[ "$before" != "$(cat "$tmp/keys/node-a.key")" ] || { echo "FAIL: --force kept the old key"; fail=1; }
check 0 "public derives the .pub key" "$(tail -1 "$tmp/keys/node-a.pub")" "$bin/xcpipe" keys public "$tmp/keys/node-a.key"
chmod 640 "$tmp/keys/node-a.key"
check 4 "group-readable secret refused" "mode 0640" "$bin/xcpipe" keys public "$tmp/keys/node-a.key"
chmod 600 "$tmp/keys/node-a.key"
echo "not-a-key" > "$tmp/bad.pub"
check 4 "malformed public key named" "$tmp/bad.pub: expected a 40-character Z85 key, got 9" "$bin/xcpipe" keys check "$tmp/bad.pub"
check 4 "missing allow-list named" "empty-list: no such file" "$bin/xcpipe" keys check "$tmp/keys/empty-list"
printf '# nobody\n' > "$tmp/empty.list"
check 4 "allow-list without keys refused" "no public keys" "$bin/xcpipe" keys check "$tmp/empty.list"
check 0 "allow-list folder" "1 public key" "$bin/xcpipe" keys check "$tmp/keys"
# The daemons check their key flags before anything else.
check 4 "coordinator: --secret-key without --allow" "needs --allow" \
  "$bin/xcpipe-coordinator" --model /nonexistent --listen tcp://127.0.0.1:0 --secret-key "$tmp/keys/node-a.key"
chmod 644 "$tmp/keys/node-a.key"
check 4 "coordinator: world-readable secret refused" "chmod 600" \
  "$bin/xcpipe-coordinator" --model /nonexistent --listen tcp://127.0.0.1:0 --secret-key "$tmp/keys/node-a.key" --allow "$tmp/keys"
chmod 600 "$tmp/keys/node-a.key"
check 4 "worker: --server-key malformed" "$tmp/bad.pub" \
  "$bin/xcpipe-worker" --coordinator tcp://127.0.0.1:1 --device cpu --secret-key "$tmp/keys/node-a.key" --server-key "$tmp/bad.pub"
check 2 "coordinator: wildcard bind refused" "every interface" \
  "$bin/xcpipe-coordinator" --model /nonexistent --listen 'tcp://*:7000'
exit $fail
