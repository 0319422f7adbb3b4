#!/usr/bin/env bash
# xcpipe convert as a user runs it: --help teaches, a real torch.save-format checkpoint converts
# to safetensors that an independent (Python) reader accepts byte for byte, and a pickle that
# calls os.system is refused with exit 4.
#   convert_cli_test.sh <bin dir> <source dir>
set -u
bin="$1"
src="$2"
make="$src/common/checkpoint/tests/make_torch_bin.py"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {  # check <expected-exit> <description> <command...>
  local want="$1" what="$2"; shift 2
  local out; out=$("$@" 2>&1); local got=$?
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; echo "$out" | head -20; fail=1
  else
    echo "ok: $what"
  fi
  LAST_OUT="$out"
}
expect_text() {  # expect_text <description> <text>
  if ! printf '%s' "$LAST_OUT" | grep -qF -- "$2"; then
    echo "FAIL: $1: output lacks '$2'"; printf '%s\n' "$LAST_OUT" | head -20; fail=1
  fi
}

check 0 "convert --help" "$bin/xcpipe" convert --help
expect_text "help names --in" "--in"
expect_text "help explains the refusal" "os.system"
expect_text "help documents exit codes" "Exit"
check 2 "convert without --out" "$bin/xcpipe" convert --in "$tmp"

python3 "$make" good "$tmp/good" || { echo "FAIL: generator"; exit 1; }
check 0 "convert a two-shard checkpoint" "$bin/xcpipe" convert --in "$tmp/good" --out "$tmp/out"
expect_text "summary" "converted 8 tensors"
expect_text "no model config" "coverage: skipped"
check 1 "convert again without --force" "$bin/xcpipe" convert --in "$tmp/good" --out "$tmp/out"
expect_text "hint" "--force"
check 0 "convert again with --force" "$bin/xcpipe" convert --in "$tmp/good" --out "$tmp/out" --force

# An independent reader: the safetensors format as the reference implementation checks it
# (contiguous offsets covering the data section, metadata format 'pt').
check 0 "independent reader accepts the output" python3 - "$tmp/out" "$tmp/good/expected.json" <<'PY'
import json, os, struct, sys
out, expected = sys.argv[1], json.load(open(sys.argv[2]))
index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
assert set(index["weight_map"]) == set(expected), "index names differ"
sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1}
seen = set()
for shard in sorted(set(index["weight_map"].values())):
    data = open(os.path.join(out, shard), "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    assert (8 + n) % 8 == 0, "data section not 8-aligned"
    assert header.pop("__metadata__") == {"format": "pt"}
    end = 0
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        b, e = info["data_offsets"]
        assert b == end, f"{name}: gap or overlap"
        end = e
        want = expected[name]
        assert info["dtype"] == want["dtype"] and info["shape"] == want["shape"], name
        assert data[8 + n + b:8 + n + e].hex() == want["hex"], f"{name}: bytes differ"
        assert index["weight_map"][name] == shard
        seen.add(name)
    assert 8 + n + end == len(data), f"{shard}: data section not fully covered"
assert seen == set(expected)
print("independent reader: %d tensors match" % len(seen))
PY

python3 "$make" evil "$tmp/evil" || { echo "FAIL: generator"; exit 1; }
check 4 "convert refuses os.system" "$bin/xcpipe" convert --in "$tmp/evil" --out "$tmp/evil-out"
expect_text "names the global" "refusing pickle GLOBAL 'posix.system'"
[ ! -e "$tmp/evil/pwned.txt" ] && [ ! -e pwned.txt ] || { echo "FAIL: the payload ran"; fail=1; }

# A real model: the tiny 4KHD fixture re-saved as its official release would be (torch.save
# shards + pytorch_model.bin.index.json + config.json), converted and checked for coverage.
fixture="${XCPIPE_FIXTURES_DIR:-$src/../shared/fixtures}/ixc2_4khd/checkpoint"
if [ -d "$fixture" ]; then
  python3 "$make" from_safetensors "$fixture" "$tmp/4khd-bin" 2 || { echo "FAIL: generator"; exit 1; }
  check 0 "convert the tiny 4KHD model" "$bin/xcpipe" convert --in "$tmp/4khd-bin" --out "$tmp/4khd"
  expect_text "coverage proof" "coverage: ok (ixc2-4khd, 99 tensors"
  check 0 "converted bytes equal the fixture's" python3 - "$fixture" "$tmp/4khd" <<'PY'
import json, os, struct, sys
def tensors(folder):
    out = {}
    index = json.load(open(os.path.join(folder, "model.safetensors.index.json")))
    for shard in set(index["weight_map"].values()):
        data = open(os.path.join(folder, shard), "rb").read()
        n = struct.unpack("<Q", data[:8])[0]
        for name, info in json.loads(data[8:8 + n]).items():
            if name != "__metadata__":
                b, e = info["data_offsets"]
                out[name] = (info["dtype"], info["shape"], data[8 + n + b:8 + n + e])
    return out
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
assert a == b, "tensors differ"
print("%d tensors equal" % len(a))
PY
else
  echo "skip: no fixtures at $fixture"
fi

check 4 "convert a folder without shards" "$bin/xcpipe" convert --in "$tmp/out" --out "$tmp/none"
exit $fail
