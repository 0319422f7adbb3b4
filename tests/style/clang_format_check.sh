#!/usr/bin/env bash
# The formatting check (ctest style.clang_format): every tracked C++ source and header must be
# formatted as .clang-format says, except the files named in format_pending.txt, which drifted
# before the check existed and leave that list when they are next formatted. A file in the list
# that is clean fails the check too, so the list only shrinks. A new file is always checked.
# Usage: clang_format_check.sh [SOURCE_DIR]   Exit codes: 0 clean, 1 drift, 77 no clang-format.
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/../.." && pwd)}"
cd "$root"
formatter="$(command -v clang-format || command -v clang-format-14 || true)"
if [[ -z "$formatter" ]]; then
  echo "clang-format not found (deploy/install-deps.sh installs it); skipping"
  exit 77
fi
pending_file=tests/style/format_pending.txt
declare -A pending=()
while IFS= read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  pending["$line"]=1
done <"$pending_file"

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.cpp' '*.h' '*.cc' '*.hpp')
else
  mapfile -t files < <(find . -path ./build -prune -o \( -name '*.cpp' -o -name '*.h' \) -print | sed 's|^\./||' | sort)
fi
drift=0 checked=0 stale=0
for f in "${files[@]}"; do
  [[ -f "$f" ]] || continue
  if "$formatter" --dry-run -Werror "$f" >/dev/null 2>&1; then
    if [[ -n "${pending[$f]:-}" ]]; then
      echo "$f is formatted now: remove it from $pending_file"
      stale=$((stale + 1))
    fi
  elif [[ -z "${pending[$f]:-}" ]]; then
    echo "$f is not formatted; run: clang-format -i $f"
    "$formatter" --dry-run "$f" 2>&1 | head -n 6
    drift=$((drift + 1))
  fi
  checked=$((checked + 1))
done
echo "checked $checked files: $drift not formatted, $stale listed as pending but clean, ${#pending[@]} pending"
[[ $drift -eq 0 && $stale -eq 0 ]]
