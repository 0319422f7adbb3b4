#!/usr/bin/env bash
# xcpipe mkmodel as a user runs it: --help teaches with an example, a tiny model is written,
# read back by `xcpipe plan`, refused over a non-empty folder without --force, identical when
# made again, and bad flags exit 2. When the worker is built, `xcpipe run` answers on the model.
#   mkmodel_cli_test.sh <bin dir> <source dir>
set -u
bin="$1"
src="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() {  # check <expected-exit> <description> <command...>
  local want="$1" what="$2"; shift 2
  local out; out=$("$@" 2>&1); local got=$?
  if [ "$got" -ne "$want" ]; then
    echo "FAIL: $what: exit $got, expected $want"; echo "$out" | tail -20; fail=1
  else
    echo "ok: $what"
  fi
  LAST_OUT="$out"
}
expect_text() {  # expect_text <description> <text>
  if ! printf '%s' "$LAST_OUT" | grep -qF -- "$2"; then
    echo "FAIL: $1: output lacks '$2'"; printf '%s\n' "$LAST_OUT" | tail -20; fail=1
  fi
}

check 0 "mkmodel --help" "$bin/xcpipe" mkmodel --help
expect_text "help has an example" "Example:"
expect_text "help names --force" "--force"
expect_text "help documents exit codes" "Exit"
check 2 "mkmodel without --out" "$bin/xcpipe" mkmodel --arch ixc2-vl
check 2 "mkmodel with an unknown arch" "$bin/xcpipe" mkmodel --arch ixc3 --out "$tmp/x"
check 2 "mkmodel with an unknown preset" "$bin/xcpipe" mkmodel --arch ixc1 --preset huge --out "$tmp/x"

check 0 "mkmodel ixc2-4khd tiny" "$bin/xcpipe" mkmodel --arch ixc2-4khd --preset tiny --out "$tmp/m" --seed 3
expect_text "progress per shard" "model-00001-of-"
expect_text "summary names the version" "ixc2-4khd (tiny preset"
expect_text "summary counts parameters" "parameters"
expect_text "read back" "checked: describes as ixc2-4khd"
for f in tokenizer.model config.json clip_vision_config.json model.safetensors.index.json; do
  [ -s "$tmp/m/$f" ] || { echo "FAIL: $f not written"; fail=1; }
done
check 0 "xcpipe plan places the model" "$bin/xcpipe" plan --model "$tmp/m" --cluster "$src/configs/cluster-cpu-3.toml"
expect_text "plan reads the version" "(ixc2-4khd)"

check 1 "mkmodel into a non-empty folder" "$bin/xcpipe" mkmodel --arch ixc2-4khd --out "$tmp/m" --seed 3
expect_text "hint" "--force"
cp -r "$tmp/m" "$tmp/first"
echo keep > "$tmp/m/notes.txt"
check 0 "mkmodel --force" "$bin/xcpipe" mkmodel --arch ixc2-4khd --out "$tmp/m" --seed 3 --force
[ "$(cat "$tmp/m/notes.txt")" = keep ] || { echo "FAIL: --force removed a file that is not part of a model"; fail=1; }
rm "$tmp/m/notes.txt"
if ! diff -r "$tmp/first" "$tmp/m" >/dev/null; then echo "FAIL: the same flags gave different files"; fail=1; else echo "ok: deterministic"; fi

# End to end on the real runtime, when this build has the worker.
if [ -x "$bin/xcpipe-worker" ]; then
  check 0 "xcpipe run on the generated model" "$bin/xcpipe" run --model "$tmp/m" \
    --prompt 'Hello, who are you?' --max-new-tokens 4 --json
  ids=$(printf '%s' "$LAST_OUT" | grep -o '"token_ids":\[[0-9,]*\]' | tail -1)
  n=$(printf '%s' "$ids" | tr -cd ',' | wc -c)
  if [ -z "$ids" ] || [ "$n" -ne 3 ]; then echo "FAIL: expected 4 generated tokens, got '$ids'"; fail=1; else echo "ok: 4 tokens"; fi
else
  echo "skip: xcpipe run (no $bin/xcpipe-worker in this build)"
fi
exit $fail
