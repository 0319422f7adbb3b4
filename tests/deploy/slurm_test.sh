#!/usr/bin/env bash
# A real single-host Slurm (slurmctld + two slurmd "nodes" on 127.0.0.1, scratch config, no
# munge daemon: auth/none) runs the shipped batch script deploy/slurm/xcpipe.sbatch with CPU
# workers (2 nodes x 2 tasks = 4 workers) on a tiny model made on the spot. Checks:
#   1. the coordinator publishes its address and a prompt is answered through it;
#   2. kill -9 of one worker task's process inside the allocation, mid-request: the request
#      still completes with every token (re-plan + replay), and the task loop restarts the
#      worker, which registers again;
#   3. scancel drains: the job ends and the daemons are stopped by their pid files.
# Usage: slurm_test.sh BIN_DIR. Exit 77 (skip, with the reason) when not root or when the Slurm
# binaries are missing (deploy/install-deps.sh installs them).
set -uo pipefail
BIN=$(cd "${1:?usage: slurm_test.sh BIN_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; dump; exit 1; }
[ "$(id -u)" -eq 0 ] || skip "needs root: slurmd runs jobs as their submitting user and must be able to switch to it"
for b in slurmctld slurmd sbatch srun scontrol scancel squeue; do
  command -v "$b" >/dev/null || skip "$b not found (bash deploy/install-deps.sh installs slurmctld slurmd slurm-client)"
done
for b in xcpipe xcpipe-coordinator xcpipe-worker; do [ -x "$BIN/$b" ] || fail "$BIN/$b missing"; done

work=$(mktemp -d /tmp/xcpipe-slurm.XXXXXX)
chmod 755 "$work"
export SLURM_CONF=$work/slurm.conf
job=""
dump() {
  echo "---- job output"; cat "$work"/job-*.out 2>/dev/null | tail -60
  echo "---- slurmctld.log"; tail -15 "$work/slurmctld.log" 2>/dev/null
  for n in n1 n2; do echo "---- slurmd-$n.log"; tail -8 "$work/slurmd-$n.log" 2>/dev/null; done
}
# shellcheck source=../support/slurm_cluster.sh
. "$(dirname "$0")/../support/slurm_cluster.sh"
cleanup() {
  [ -n "$job" ] && scancel "$job" 2>/dev/null
  for _ in $(seq 40); do [ -z "$job" ] || ! squeue -h -j "$job" 2>/dev/null | grep -q . && break; sleep 0.25; done
  slurm_stop "$work"
  rm -rf "$work"
}
trap cleanup EXIT

slurm_start "$work" xcpipetest 10
echo "slurm up: nodes n1 n2 on 127.0.0.1 ($(sinfo -h -o '%P %a %D %t'))"

"$BIN/xcpipe" mkmodel --arch ixc2-vl --preset tiny --out "$work/model" >/dev/null || fail "mkmodel"
chmod -R a+rX "$work/model"

# The shipped batch script, CPU workers, steps slowed so a kill lands mid-request. --gres is
# dropped (no GPUs here): the command line overrides the script's #SBATCH --gres.
address_file=$work/coordinator.address
# The HTTP API on the first node with a key file, as an operator enables it.
http_file=$work/coordinator.http
http_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "xcpipe-slurm-test-key-0123456789" > "$work/api-keys"
job=$(XCPIPE_MODEL=$work/model XCPIPE_BIN=$BIN XCPIPE_DEVICE=cpu XCPIPE_ADDRESS_FILE=$address_file \
      XCPIPE_HTTP_PORT=$http_port XCPIPE_API_KEY_FILE=$work/api-keys XCPIPE_HTTP_FILE=$http_file \
      XCPIPE_WORKER_ARGS="--threads 1 --inject-step-delay-ms 25" XCPIPE_WORKER_WAIT_S=60 \
      sbatch --parsable --nodes=2 --ntasks-per-node=2 --gres=none --chdir="$work" \
      --output="$work/job-%j.out" --export=ALL "$ROOT/deploy/slurm/xcpipe.sbatch") || fail "sbatch refused the script"
echo "job $job submitted"
address=""
for _ in $(seq 300); do
  [ -s "$address_file" ] && address=$(cat "$address_file") && break
  squeue -h -j "$job" | grep -q . || fail "the job ended before serving"
  sleep 0.2
done
[ -n "$address" ] || fail "no coordinator address within 60 s"
echo "serving at $address"

# 1. A prompt through the Slurm-launched cluster.
out=$("$BIN/xcpipe" submit --coordinator "$address" --prompt 'Hello from Slurm' --max-new-tokens 8 --json) ||
  fail "submit failed: $out"
echo "$out" | python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); assert len(r["token_ids"]) >= 1, r' ||
  fail "unexpected reply: $out"
echo "answered: $(echo "$out" | tail -1 | cut -c1-160)"

# 1b. The same over the HTTP API the script published, with the key file's key.
[ -s "$http_file" ] || fail "the batch script published no HTTP address"
http=$(cat "$http_file")
out=$(curl -sS --max-time 60 "$http/v1/chat/completions" -H 'Authorization: Bearer xcpipe-slurm-test-key-0123456789' \
       -H 'Content-Type: application/json' -d '{"messages":[{"role":"user","content":"Hello over HTTP"}],"max_tokens":4}') ||
  fail "HTTP request failed"
echo "$out" | python3 -c 'import json,sys; r=json.load(sys.stdin); assert r["usage"]["completion_tokens"] >= 1, r' ||
  fail "unexpected HTTP reply: $out"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$http/v1/models")" = 401 ] || fail "the HTTP API answered without a key"
echo "HTTP API at $http: a chat completion with the key; 401 without"

# 2. Kill one worker process inside the allocation while a 40-token request is decoding.
"$BIN/xcpipe" submit --coordinator "$address" --prompt 'Tell me a long story' --max-new-tokens 40 --json \
  > "$work/long.json" 2> "$work/long.err" &
submit_pid=$!
sleep 2
victim=$(ps -eo pid=,args= | awk '/xcpipe-worker .*--worker-id n2\/gpu1 / && !/awk/ { print $1; exit }')
[ -n "$victim" ] || fail "no worker process n2/gpu1 found"
kill -KILL "$victim"
echo "killed worker n2/gpu1 (pid $victim) mid-request"
wait "$submit_pid" || fail "the request in flight failed after the kill: $(cat "$work/long.err" "$work/long.json")"
python3 - "$work/long.json" <<'PY' || fail "the request did not complete: $(cat "$work/long.json")"
import json, sys
last = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert last.get("finish_reason") in ("length", "stop") and last.get("token_ids"), last
print(f"request completed after the kill: {len(last['token_ids'])} tokens, finish {last['finish_reason']}")
PY
grep -q "re-planning\|recovering" "$work"/job-*.out || fail "the coordinator log shows no re-plan"
# The task loop restarted the killed worker; it registers again. (Its startup line names it and
# its pid, "[worker PID] worker n2/gpu1 on ..."; the registration is that pid's line.)
restarted() {
  [ "$(grep -c 'worker n2/gpu1 on ' "$work"/job-*.out)" -ge 2 ] || return 1
  local pid
  pid=$(grep 'worker n2/gpu1 on ' "$work"/job-*.out | tail -1 | grep -o '\[worker [0-9]*\]' | tr -dc 0-9)
  [ -n "$pid" ] && grep -q "\[worker $pid\] registered with the coordinator" "$work"/job-*.out
}
for _ in $(seq 60); do restarted && break; sleep 0.25; done
restarted || fail "the killed worker did not come back"
echo "worker n2/gpu1 restarted by its task and registered again"
# The same prompt again on the healed cluster: greedy decoding must give the same tokens as the
# request that was replayed across the kill.
"$BIN/xcpipe" submit --coordinator "$address" --prompt 'Tell me a long story' --max-new-tokens 40 --json \
  > "$work/again.json" || fail "the cluster stopped serving after recovery"
python3 - "$work/long.json" "$work/again.json" <<'PY' || fail "tokens differ between the replayed and a fresh request"
import json, sys
a, b = (json.loads(open(p).read().strip().splitlines()[-1])["token_ids"] for p in sys.argv[1:3])
assert a == b, (a, b)
print(f"replayed request equals a fresh one ({len(a)} tokens)")
PY
"$BIN/xcpipe" status --coordinator "$address" | head -12

# 3. scancel: the batch script drains the coordinator, the workers are told to stop.
scancel "$job"
for _ in $(seq 120); do squeue -h -j "$job" 2>/dev/null | grep -q . || break; sleep 0.25; done
squeue -h -j "$job" 2>/dev/null | grep -q . && fail "the job did not end after scancel"
job=""
left=$(ps -eo args= | grep -c "[x]cpipe-worker .*$work/model\|[x]cpipe-coordinator --model $work/model")
[ "$left" -eq 0 ] || fail "$left xcpipe processes outlived the job"
echo "PASS"
