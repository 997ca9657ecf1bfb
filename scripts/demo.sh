#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, train the default zoo (cached in zoo/),
# then generate from every zoo model with per-token exit telemetry.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
"$ROOT/scripts/build_zoo.sh" --out "$ROOT/zoo"
HELIOS="$ROOT/build/helios"
declare -A PROMPTS=(
  [prose]="The committee said that the new"
  [code]="template <typename T> class"
  [mix]="The function returns a"
)
for dir in "$ROOT"/zoo/*/; do
  name="$(basename "$dir")"
  domain="${name%%-*}"
  echo
  echo "=== $name ==="
  "$HELIOS" info --model "$dir"
  "$HELIOS" generate --model "$dir" --prompt "${PROMPTS[$domain]:-The}" --max-tokens 48 \
    --temperature 0.7 --top-p 0.9 --seed 1
done
