#!/usr/bin/env bash
# Multi-host serving on one machine: four network namespaces joined by veth pairs and a bridge
# are four "hosts" (10.77.0.1 coordinator, 10.77.0.2-4 one worker each). Control and data
# planes use real TCP between the namespaces. A prompt with an image must give exactly the
# official greedy tokens. Skips (exit 77) where namespaces cannot be created (not root, no ip).
set -u
bin="$1"; fixtures="$2"
model="$fixtures/ixc2_vl/checkpoint"
case_dir="$fixtures/ixc2_vl/cases/image_chat"
[ -d "$model" ] || { echo "SKIP: fixtures not found at $fixtures"; exit 77; }
if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null; then echo "SKIP: needs root and iproute2 for network namespaces"; exit 77; fi
tag="xcp$$"
bridge="br-$tag"
ns() { echo "$tag-h$1"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 1
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for i in 1 2 3 4; do ip netns del "$(ns $i)" 2>/dev/null; done
  ip link del "$bridge" 2>/dev/null
  rm -rf "$tmp"
}
tmp=$(mktemp -d); trap cleanup EXIT
if ! ip link add "$bridge" type bridge 2>/dev/null; then echo "SKIP: cannot create a bridge here"; exit 77; fi
ip link set "$bridge" up
for i in 1 2 3 4; do
  ip netns add "$(ns $i)" || { echo "SKIP: cannot create network namespaces"; exit 77; }
  ip link add "v$tag$i" type veth peer name eth0 netns "$(ns $i)"
  ip link set "v$tag$i" master "$bridge" up
  ip -n "$(ns $i)" addr add "10.77.0.$i/24" dev eth0
  ip -n "$(ns $i)" link set eth0 up
  ip -n "$(ns $i)" link set lo up
done

ip netns exec "$(ns 1)" "$bin/xcpipe-coordinator" --model "$model" --listen tcp://10.77.0.1:7100 --expect-workers 3 \
  --worker-wait-s 120 > "$tmp/coordinator.out" 2> "$tmp/coordinator.log" &
pids+=($!)
for i in 2 3 4; do
  ip netns exec "$(ns $i)" "$bin/xcpipe-worker" --coordinator tcp://10.77.0.1:7100 --device cpu --threads 1 \
    --worker-id "host$i/cpu" --data-host "10.77.0.$i" 2> "$tmp/worker$i.log" &
  pids+=($!)
done
for _ in $(seq 600); do grep -q '^ready' "$tmp/coordinator.out" && break; sleep 0.2; done
grep -q '^ready' "$tmp/coordinator.out" || { echo "FAIL: cluster not ready"; tail -20 "$tmp/coordinator.log"; exit 1; }
grep -E "stage [0-9]+: worker" "$tmp/coordinator.log" | sed 's/^.*\] //'

out=$(ip netns exec "$(ns 1)" "$bin/xcpipe" submit --coordinator tcp://10.77.0.1:7100 \
  --prompt '<ImageHere>Please describe this image in detail.' --image "$case_dir/image.png" --max-new-tokens 8 --json)
echo "$out"
want=$(python3 -c "
import struct,sys
d=open('$case_dir/generated_ids.npy','rb').read(); n=struct.unpack('<H',d[8:10])[0]
print(','.join(str(x) for x in struct.unpack('<8q', d[10+n:10+n+64])))")
got=$(echo "$out" | python3 -c "import json,sys; print(','.join(str(x) for x in json.load(sys.stdin)['token_ids']))")
status=$(ip netns exec "$(ns 1)" "$bin/xcpipe" status --coordinator tcp://10.77.0.1:7100 --json)
stages=$(echo "$status" | python3 -c "import json,sys; print(json.load(sys.stdin)['stages'])")
echo "stages: $stages"
[ "$got" = "$want" ] || { echo "FAIL: tokens $got, expected $want"; exit 1; }
[ "$stages" = "3" ] || { echo "FAIL: expected 3 stages, got $stages"; exit 1; }
# Traffic really crossed namespaces: each worker's data plane listens on its own host address.
for i in 2 3 4; do grep -q "data plane 10.77.0.$i" "$tmp/worker$i.log" || { echo "FAIL: worker $i not on 10.77.0.$i"; exit 1; }; done
echo "PASS: 3 workers on 3 hosts, tokens identical to the official run"
