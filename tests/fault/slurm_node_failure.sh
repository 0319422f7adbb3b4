#!/usr/bin/env bash
# Fault row: a Slurm node failure with --requeue. A real single-host Slurm (slurmctld + two
# slurmd "nodes" on 127.0.0.1, scratch config, auth/none; the set-up of tests/deploy/slurm_test.sh)
# runs the shipped batch script deploy/slurm/xcpipe.sbatch (#SBATCH --requeue) with CPU workers,
# 2 nodes x 2 tasks, as shipped (a node failure ends the job and Slurm requeues it). While a
# 40-token request is decoding, the first node (the
# coordinator and two workers) fails: its slurmd, its step daemons and every process of the job on it are frozen,
# the node is marked DOWN, as slurmctld does once a node stops answering (SlurmdTimeout; marking
# it here saves the wait), and they are killed (kill -9). Checks:
#   1. Slurm requeues the job (node failure + --requeue) and no process of the first run survives
#      (the node comes back 10 s after the failure, as a node that reboots);
#   2. the job runs again (run 2,
#      SLURM_RESTART_COUNT=1), the coordinator serves at the same address, and the request that
#      was in flight completes (the client repeats its submit to the new coordinator) with the
#      tokens the same prompt gave before the failure; a fresh request gives them too.
# The requeued job's start is brought forward (scontrol update StartTime=now): Slurm otherwise
# holds a requeued batch job for its credential lifetime (about two minutes).
# Figures merge into <build>/reports/faults.json. Usage: slurm_node_failure.sh BIN_DIR.
# Exit 77 (skip, with the reason) when not root or the Slurm binaries are missing.
set -uo pipefail
BIN=$(cd "${1:?usage: slurm_node_failure.sh BIN_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
REPORTS=$(cd "$BIN/.." && pwd)/reports
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; dump; exit 1; }
[ "$(id -u)" -eq 0 ] || skip "needs root: slurmd runs jobs as their submitting user and must be able to switch to it"
for b in slurmctld slurmd sbatch srun scontrol scancel squeue sinfo; do
  command -v "$b" >/dev/null || skip "$b not found (bash deploy/install-deps.sh installs slurmctld slurmd slurm-client)"
done
for b in xcpipe xcpipe-coordinator xcpipe-worker; do [ -x "$BIN/$b" ] || fail "$BIN/$b missing"; done

work=$(mktemp -d /tmp/xcpipe-slurm-fail.XXXXXX)
chmod 755 "$work"
export SLURM_CONF=$work/slurm.conf
job=""
dump() {
  echo "---- job output"; cat "$work"/job-*.out 2>/dev/null | tail -80
  echo "---- slurmctld.log"; tail -25 "$work/slurmctld.log" 2>/dev/null
  for n in n1 n2; do echo "---- slurmd-$n.log"; tail -8 "$work/slurmd-$n.log" 2>/dev/null; done
}
# Processes of this test's model (the job's coordinator and workers, any run).
ours() { ps -eo pid=,args= | awk -v m="$work/model" 'index($0, m) && /xcpipe-(worker|coordinator)/ && !/awk/ { print $1 }'; }
# shellcheck source=../support/slurm_cluster.sh
. "$(dirname "$0")/../support/slurm_cluster.sh"
cleanup() {
  [ -n "$job" ] && scancel "$job" 2>/dev/null
  for _ in $(seq 40); do [ -z "$job" ] || ! squeue -h -j "$job" 2>/dev/null | grep -q . && break; sleep 0.25; done
  slurm_stop "$work"
  for p in $(ours); do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

slurm_start "$work" xcpipefail 5

"$BIN/xcpipe" mkmodel --arch ixc2-vl --preset tiny --out "$work/model" >"$work/mkmodel.log" 2>&1 ||
  { cat "$work/mkmodel.log"; fail "mkmodel"; }
chmod -R a+rX "$work/model"
address_file=$work/coordinator.address
job=$(XCPIPE_MODEL=$work/model XCPIPE_BIN=$BIN XCPIPE_DEVICE=cpu XCPIPE_ADDRESS_FILE=$address_file \
      XCPIPE_WORKER_ARGS="--threads 1 --inject-step-delay-ms 40" XCPIPE_WORKER_WAIT_S=120 \
      sbatch --parsable --nodes=2 --ntasks-per-node=2 --gres=none --chdir="$work" \
      --output="$work/job-%j.out" --open-mode=append --export=ALL "$ROOT/deploy/slurm/xcpipe.sbatch") ||
  fail "sbatch refused the script"
echo "job $job submitted (--requeue from the script)"
wait_address() {
  for _ in $(seq 600); do
    [ -s "$address_file" ] && { cat "$address_file"; return 0; }
    sleep 0.2
  done
  return 1
}
address=$(wait_address) || fail "no coordinator address within 120 s"
echo "run 1 serving at $address"
prompt='Tell me a long story about a lighthouse'
"$BIN/xcpipe" submit --coordinator "$address" --prompt "$prompt" --max-new-tokens 40 --json > "$work/before.json" ||
  fail "the first request failed"

# The request that will be in flight when the node fails.
"$BIN/xcpipe" submit --coordinator "$address" --prompt "$prompt" --max-new-tokens 40 --json --timeout-s 300 \
  > "$work/inflight.json" 2> "$work/inflight.err" &
inflight=$!
sleep 1.5

# Node n1 fails: its slurmd, its step daemons and every process of the job that runs on it
# (the batch script, the coordinator, n1's worker tasks). They are frozen first, so none of them
# reports anything (a dead node says nothing), the node is marked DOWN, and then they are killed.
victims=$(cat "$work/slurmd-n1.pid")
# (Kernel threads and processes of other users have no readable environment: skipped quietly.)
for p in $(ps -eo pid=); do
  env_of=$( { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null) || continue
  grep -qx "SLURM_JOB_ID=$job" <<<"$env_of" || continue
  grep -qx 'SLURMD_NODENAME=n1' <<<"$env_of" && victims="$victims $p"
done
# n1's step daemons: the slurmstepd parents of those processes (the batch script's, the worker
# tasks'). Not found by their sockets: daemons of both nodes share this host's socket table.
for p in $victims; do
  parent=$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')
  [ -n "$parent" ] && [ "$(cat "/proc/$parent/comm" 2>/dev/null)" = slurmstepd ] && victims="$victims $parent"
done
victims=$(echo "$victims" | tr ' ' '\n' | grep . | sort -u | tr '\n' ' ')
# shellcheck disable=SC2086
victim_list=$(ps -o pid=,args= -p "$(echo $victims | tr ' ' ',')" 2>/dev/null | cut -c1-120)
t_kill=$(date +%s%3N)
# shellcheck disable=SC2086
kill -STOP $victims 2>/dev/null
scontrol update nodename=n1 state=down reason="node failure (test)" || fail "cannot mark n1 down"
# shellcheck disable=SC2086
kill -KILL $victims 2>/dev/null
# The dead run's address file stays behind (its script never got to remove it); run 2 removes
# it when it starts and writes it once serving. Forget it here so the wait below sees run 2's.
rm -f "$address_file"
echo "node n1 failed: killed $(echo "$victims" | wc -w) processes (slurmd, step daemons, batch script, coordinator, workers)"
echo "$victim_list"

# 1. The job is requeued: slurmctld ends a job one of whose nodes failed and, the job being
# --requeue, queues it again. Watch for 10 s, bring the node back, watch again.
requeued() {
  state=$(scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
  restarts=$(scontrol show job "$job" 2>/dev/null | grep -o 'Restarts=[0-9]*' | cut -d= -f2)
  [ "${restarts:-0}" -ge 1 ] || [ "$state" = PENDING ] || [ "$state" = REQUEUED ]
}
t_detect=""
for _ in $(seq 100); do requeued && { t_detect=$(date +%s%3N); break; }; sleep 0.1; done
if [ -z "$t_detect" ]; then
  echo "after 10 s with n1 down the job is $state; n1 comes back"
fi
slurmd -f "$SLURM_CONF" -N n1 || fail "slurmd n1 did not restart"
scontrol update nodename=n1 state=resume 2>/dev/null
if [ -z "$t_detect" ]; then
  for _ in $(seq 600); do requeued && { t_detect=$(date +%s%3N); break; }; sleep 0.1; done
fi
[ -n "$t_detect" ] || fail "the job was not requeued after the node failure (state $state)"
echo "job requeued $((t_detect - t_kill)) ms after the failure (state $state, restarts ${restarts:-0})"
for _ in $(seq 150); do [ -z "$(ours)" ] && break; sleep 0.2; done
[ -z "$(ours)" ] || fail "processes of the failed run survived the requeue: $(ours | tr '\n' ' ')"
echo "no process of run 1 left"

# 2. The job runs again and serves. Once it is pending again (after its completing phase),
# bring its start forward; the first update may land before the requeue resets it: repeat.
for _ in $(seq 300); do
  state=$(scontrol show job "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
  [ "$state" = RUNNING ] && break
  [ "$state" = PENDING ] && scontrol update jobid="$job" StartTime=now 2>/dev/null
  sleep 0.5
done
[ "$state" = RUNNING ] || fail "the requeued job did not start again (state $state)"
address2=$(wait_address) || fail "the requeued job did not serve within 120 s"
t_serving=$(date +%s%3N)
grep -q "run 2 (SLURM_RESTART_COUNT=1)" "$work"/job-*.out || fail "the job output shows no second run"
echo "run 2 serving at $address2, $((t_serving - t_kill)) ms after the failure"

wait "$inflight"
inflight_rc=$?
"$BIN/xcpipe" submit --coordinator "$address2" --prompt "$prompt" --max-new-tokens 40 --json > "$work/after.json" ||
  fail "the requeued job did not answer"
python3 - "$work" "$inflight_rc" "$((t_detect - t_kill))" "$((t_serving - t_kill))" "$REPORTS" <<'PY' || fail "tokens or outcomes differ"
import fcntl, json, os, sys
work, rc, detect, recover, reports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def last(name):
    lines = open(os.path.join(work, name)).read().strip().splitlines()
    return json.loads(lines[-1]) if lines else {}
before, after = last("before.json"), last("after.json")
inflight = last("inflight.json") if rc == 0 else {}
assert before.get("token_ids"), before
assert after.get("token_ids") == before["token_ids"], ("after", after, before)
completed, failed = 2, {}
identical = True
if inflight.get("token_ids"):
    completed += 1
    identical = inflight["token_ids"] == before["token_ids"]
    print(f"the in-flight request completed across the requeue: {len(inflight['token_ids'])} tokens, identical: {identical}")
else:
    err = open(os.path.join(work, "inflight.err")).read().strip().splitlines()
    reason = (err[-1] if err else "no answer").split(":")[0]
    failed[reason] = 1
    print(f"the in-flight request failed: {err[-1] if err else 'no answer'}")
row = {"scenario": "Slurm node failure (the coordinator's node: slurmd and the job's processes killed, node DOWN), --requeue",
       "requests": 3, "completed": completed, "failed": failed, "duplicated": 0, "lost": 0,
       "detect_ms": detect, "recover_ms": recover, "tokens_identical": identical and completed == 3}
os.makedirs(reports, exist_ok=True)
with open(os.path.join(reports, "faults.json.lock"), "a+") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    path = os.path.join(reports, "faults.json")
    rows = json.load(open(path)) if os.path.exists(path) else []
    rows = [r for r in rows if r.get("scenario") != row["scenario"]] + [row]
    tmp = path + ".tmp"
    json.dump(rows, open(tmp, "w"), indent=2)
    os.replace(tmp, path)
print("fault row: " + json.dumps(row))
assert identical, "the in-flight request's tokens differ from the fault-free run"
PY
echo "PASS"
