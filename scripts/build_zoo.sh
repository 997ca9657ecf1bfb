#!/usr/bin/env bash
# Trains the model zoo: three early-exit candidates that differ in size and in text domain.
#   --micro      the small zoo the tests use (about two minutes in all on 2 cores)
#   --out DIR    where the models go (default: zoo/ or build/zoo-micro)
#   --data DIR   prepared data (default: data/, made by scripts/prepare_data.sh)
#   --helios BIN the helios binary (default: build/helios)
# A model is retrained only when its recipe changed (recipe.txt in its directory).
# Models train on windows as long as their context: RoPE positions never seen in training
# (past seq_len) degrade perplexity sharply.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MICRO=0
OUT=""
DATA="$ROOT/data"
HELIOS="$ROOT/build/helios"
while (($#)); do
  case "$1" in
    --micro) MICRO=1 ;;
    --out) OUT="$2"; shift ;;
    --data) DATA="$2"; shift ;;
    --helios) HELIOS="$2"; shift ;;
    *) echo "build_zoo.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$OUT" ]]; then
  if ((MICRO)); then OUT="$ROOT/build/zoo-micro"; else OUT="$ROOT/zoo"; fi
fi
[[ -f "$DATA/.complete" ]] || "$ROOT/scripts/prepare_data.sh" --out "$DATA"

# name | domain | shape and schedule flags
if ((MICRO)); then
  RECIPES=(
    "prose-micro|prose|--hidden 64 --intermediate 192 --layers 4 --heads 4 --kv-heads 2 --context 256 --steps 270 --batch 8 --seq-len 256 --lr 6e-3 --warmup 20"
    "code-micro|code|--hidden 64 --intermediate 192 --layers 4 --heads 4 --kv-heads 2 --context 256 --steps 270 --batch 8 --seq-len 256 --lr 6e-3 --warmup 20"
    "mix-micro|mix|--hidden 96 --intermediate 256 --layers 5 --heads 4 --kv-heads 2 --context 256 --steps 180 --batch 8 --seq-len 256 --lr 5e-3 --warmup 20"
  )
else
  RECIPES=(
    "prose-s|prose|--hidden 128 --intermediate 384 --layers 6 --heads 4 --kv-heads 2 --context 256 --steps 480 --batch 16 --seq-len 256 --lr 4e-3 --warmup 30 --eval-every 240"
    "code-m|code|--hidden 128 --intermediate 384 --layers 8 --heads 4 --kv-heads 2 --context 256 --steps 420 --batch 16 --seq-len 256 --lr 4e-3 --warmup 30 --eval-every 210"
    "mix-l|mix|--hidden 160 --intermediate 448 --layers 10 --heads 4 --kv-heads 2 --context 256 --steps 285 --batch 16 --seq-len 256 --lr 3e-3 --warmup 30 --eval-every 145"
  )
fi

mkdir -p "$OUT"
for recipe in "${RECIPES[@]}"; do
  IFS='|' read -r name domain flags <<<"$recipe"
  dir="$OUT/$name"
  stamp="$domain $flags"
  if [[ -f "$dir/recipe.txt" && "$(cat "$dir/recipe.txt")" == "$stamp" && -f "$dir/model.safetensors" ]]; then
    echo "zoo: $name is up to date"
    continue
  fi
  echo "zoo: training $name on $domain"
  rm -rf "$dir"
  # shellcheck disable=SC2086
  "$HELIOS" train --train "$DATA/$domain/train.txt" --valid "$DATA/$domain/valid.txt" \
    --out "$dir" --seed 7 $flags
  echo "$stamp" >"$dir/recipe.txt"
done
echo "zoo: ready in $OUT"
