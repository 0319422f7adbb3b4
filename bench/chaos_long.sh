#!/usr/bin/env bash
# Long chaos runs (not in CI): xcpipe-chaos over several seeds, one after the other, each a
# seeded fault schedule over a real cluster checked by the history checker. Writes every run's
# result.json and a summary (seeds, faults applied by kind, requests, completed, failed,
# duplicated, lost, tokens identical) to build/reports/chaos_long.{json,md}. A failing seed keeps
# its run directory (seed, schedule, history, logs) and the summary prints its replay command.
#
#   bash bench/chaos_long.sh [SEEDS=5] [DURATION_S=600] [BUILD_DIR=build]
# XCPIPE_CHAOS_SEED sets the first seed (then +1 each run); XCPIPE_CHAOS_EXCLUDE the fault kinds
# left out (default none).
set -uo pipefail
seeds=${1:-5}; duration=${2:-600}; build=${3:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$root" && cd "$build" && pwd) || { echo "no build folder $3"; exit 1; }
chaos=$build/bin/xcpipe-chaos
[ -x "$chaos" ] || { echo "$chaos missing: cmake --build $build --target xcpipe-chaos"; exit 1; }
reports=$build/reports; mkdir -p "$reports"
runs=$reports/chaos_long; rm -rf "$runs"; mkdir -p "$runs"
base=${XCPIPE_CHAOS_SEED:-$(( $(date +%s) % 1000000 ))}
failed=0
for i in $(seq 0 $((seeds - 1))); do
  seed=$((base + i))
  echo "== seed $seed ($((i + 1))/$seeds, $duration s of faults)"
  XCPIPE_CHAOS_SEED=$seed nice -n 10 "$chaos" --duration-s "$duration" --model "$build/chaos-model" \
    ${XCPIPE_CHAOS_EXCLUDE:+--exclude "$XCPIPE_CHAOS_EXCLUDE"} \
    --out "$runs/$seed" --keep 2>&1 | tee "$runs/$seed.log" | grep -E '^chaos: (seed|FAILED|PASSED|replay)|^  '
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed + 1))
done
python3 - "$runs" "$reports" "$duration" <<'PY'
import json, os, sys
runs, reports, duration = sys.argv[1], sys.argv[2], int(sys.argv[3])
results = []
for d in sorted(os.listdir(runs)):
    p = os.path.join(runs, d, "result.json")
    if os.path.isfile(p):
        results.append(json.load(open(p)))
kinds, total = {}, {"requests": 0, "completed": 0, "failed": 0, "duplicated": 0, "lost": 0, "faults": 0, "tokens": 0}
for r in results:
    c = r["check"]
    total["requests"] += c["requests"]; total["completed"] += c["completed"]
    total["failed"] += sum(c["failed"].values()); total["duplicated"] += c["duplicated"]; total["lost"] += c["lost"]
    total["faults"] += r["faults_applied"]; total["tokens"] += c["tokens_checked"]
    for k, n in r["faults_by_kind"].items(): kinds[k] = kinds.get(k, 0) + n
passed = sum(1 for r in results if not r["check"]["violations"])
json.dump({"duration_s": duration, "runs": results, "total": total, "faults_by_kind": kinds, "passed": passed},
          open(os.path.join(reports, "chaos_long.json"), "w"), indent=2)
with open(os.path.join(reports, "chaos_long.md"), "w") as md:
    md.write(f"{len(results)} seeds x {duration} s, {passed} passed\n\n")
    md.write("| seed | faults | requests | completed | failed | duplicated | lost | tokens identical | violations |\n")
    md.write("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    for r in results:
        c = r["check"]
        md.write(f"| {r['seed']} | {r['faults_applied']} | {c['requests']} | {c['completed']} | {sum(c['failed'].values())} "
                 f"| {c['duplicated']} | {c['lost']} | {'yes' if c['tokens_identical'] else 'no'} | {len(c['violations'])} |\n")
    md.write(f"\ntotal: {total}\nfaults by kind: {kinds}\n")
print(open(os.path.join(reports, "chaos_long.md")).read())
PY
exit $(( failed > 0 ? 6 : 0 ))
