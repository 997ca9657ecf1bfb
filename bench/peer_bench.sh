#!/usr/bin/env bash
# CPU decode throughput side by side with llama.cpp, on the same weights, in one command.
#
# For every model of the zoo (byte-tokenizer models):
#   1. `helios convert --format gguf` writes the model as a llama.cpp file;
#   2. the outputs are checked token for token: `helios generate` (greedy, early exit off) and
#      llama.cpp's `llama-simple` (greedy) continue the same prompt by CHECK_TOKENS tokens, and the
#      script reports how many leading tokens agree (one token per byte);
#   3. ROUNDS rounds, alternating the two: llama.cpp's `llama-batched-bench` (PP-token prompts,
#      TG decode steps, at every batch size, for each thread count in LLAMA_THREADS, flash
#      attention off and on) and `helios_decode_bench` (the fused step, early exit off and on, TG
#      steps, for each thread count in HELIOS_THREADS). Each figure is the best over rounds and
#      settings: llama.cpp at its best configuration, helios at its best thread count.
# Prints one table and writes OUT/summary.json and OUT/summary.md; raw outputs stay in OUT.
#
#   bash bench/peer_bench.sh --llama-cpp DIR [--zoo DIR] [--batch 1,8,32,64,128] [--rounds N]
#                            [--llama-threads 1,2] [--helios-threads 1,2] [--pp N] [--tg N]
#                            [--check-tokens N] [--out DIR]
# DIR is a llama.cpp build directory (or its bin/) holding llama-batched-bench and llama-simple
# (cmake -B build -DGGML_NATIVE=ON && cmake --build build --target llama-batched-bench
# llama-simple). llama.cpp itself is not part of helios.
set -euo pipefail
export LC_ALL=C  # the output check compares bytes (one token per byte)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA=""
ZOO="$ROOT/zoo"
BATCHES="1,8,32,64,128"
ROUNDS=2
LLAMA_THREADS="1,2"
HELIOS_THREADS="1,2"
PP=40
TG=48
CHECK_TOKENS=100
OUT="$ROOT/build/peer-bench"
PROMPT="The jury said that the"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --llama-cpp) LLAMA="$2"; shift ;;
    --zoo) ZOO="$2"; shift ;;
    --batch) BATCHES="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --llama-threads) LLAMA_THREADS="$2"; shift ;;
    --helios-threads) HELIOS_THREADS="$2"; shift ;;
    --pp) PP="$2"; shift ;;
    --tg) TG="$2"; shift ;;
    --check-tokens) CHECK_TOKENS="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "peer_bench: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

[[ -n "$LLAMA" ]] || { echo "peer_bench: --llama-cpp DIR is required" >&2; exit 2; }
find_tool() {
  for candidate in "$LLAMA/$1" "$LLAMA/bin/$1" "$LLAMA/build/bin/$1"; do
    [[ -x "$candidate" ]] && { echo "$candidate"; return; }
  done
  echo "peer_bench: $1 not found under $LLAMA (build it: cmake --build build --target $1)" >&2
  exit 2
}
BATCHED="$(find_tool llama-batched-bench)"
SIMPLE="$(find_tool llama-simple)"
HELIOS="$ROOT/build/helios"
DECODE_BENCH="$ROOT/build/bench/helios_decode_bench"
for tool in "$HELIOS" "$DECODE_BENCH"; do
  [[ -x "$tool" ]] || { echo "peer_bench: $tool missing (build helios first)" >&2; exit 2; }
done
command -v jq > /dev/null || { echo "peer_bench: needs jq" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "peer_bench: --rounds must be a positive integer" >&2; exit 2; }

mkdir -p "$OUT"
rm -f "$OUT"/*.jsonl "$OUT"/*.helios.*.json "$OUT"/check.json
MAX_BATCH="$(tr ',' '\n' <<< "$BATCHES" | sort -n | tail -1)"
CONTEXT=$(( MAX_BATCH * (PP + TG) + 256 ))
echo "{}" > "$OUT/check.json"

models=()
for config in "$ZOO"/*/config.json; do
  [[ -f "$config" ]] && models+=("$(dirname "$config")")
done
[[ ${#models[@]} -gt 0 ]] || { echo "peer_bench: no models under $ZOO" >&2; exit 2; }

for dir in "${models[@]}"; do
  name="$(basename "$dir")"
  gguf="$OUT/$name.gguf"
  "$HELIOS" convert --model "$dir" --out "$gguf" --format gguf > /dev/null

  # Output check, greedy at full depth: both print the prompt, then the continuation.
  ours="$("$HELIOS" generate --model "$dir" --prompt "$PROMPT" --max-tokens "$CHECK_TOKENS" \
            --threshold 2 --temperature 0 --no-details 2> /dev/null)"
  theirs="$("$SIMPLE" -m "$gguf" -n "$CHECK_TOKENS" "$PROMPT" 2> "$OUT/$name.simple.log")"
  ours="${ours#"$PROMPT"}"
  theirs="${theirs#"<|bos|>"}"
  theirs="${theirs#"$PROMPT"}"
  same=0
  while [[ $same -lt ${#ours} && $same -lt ${#theirs} && "${ours:$same:1}" == "${theirs:$same:1}" ]]; do
    same=$((same + 1))
  done
  jq --arg m "$name" --argjson same "$same" --argjson n "$CHECK_TOKENS" \
     --arg ours "$ours" --arg theirs "$theirs" \
     '.[$m] = {equal_leading_tokens: $same, tokens: $n, helios: $ours, llama_cpp: $theirs}' \
     "$OUT/check.json" > "$OUT/check.json.tmp" && mv "$OUT/check.json.tmp" "$OUT/check.json"
  echo "$name: greedy outputs agree on the first $same of $CHECK_TOKENS tokens"

  for round in $(seq 1 "$ROUNDS"); do
    for threads in ${LLAMA_THREADS//,/ }; do
      for fa in off on; do
        flag=(); [[ $fa == on ]] && flag=(-fa)
        "$BATCHED" -m "$gguf" -c "$CONTEXT" -b 2048 -ub 512 -npp "$PP" -ntg "$TG" -npl "$BATCHES" \
          -t "$threads" -tb "$threads" "${flag[@]}" --output-format jsonl 2> /dev/null \
          | grep '^{' >> "$OUT/$name.llama.jsonl"
      done
    done
    for threads in ${HELIOS_THREADS//,/ }; do
      OMP_NUM_THREADS="$threads" "$DECODE_BENCH" --model "$dir" --text "$ROOT/data/prose/test.txt" \
        --paths fused --batch "$BATCHES" --steps "$TG" --repeats 1 \
        --json "$OUT/$name.helios.r$round.t$threads.json" > /dev/null
    done
  done
done

# One row per model and batch: llama.cpp's best decode speed (and the setting that gave it),
# helios's best with early exit off and on, and the ratios.
for dir in "${models[@]}"; do
  name="$(basename "$dir")"
  jq -s --arg m "$name" --slurpfile check "$OUT/check.json" '
    (map(select(.llama != null)) | .[0].llama) as $llama
    | (map(select(.helios != null)) | map(.helios[]) ) as $helios
    | [ $llama | group_by(.pl)[] | max_by(.speed_tg) as $best
        | ($helios | map(select(.batch == $best.pl))) as $h
        | ($h | map(.tokens_per_second_ee_off) | max) as $off
        | ($h | map(.tokens_per_second_ee_on) | max) as $on
        | {model: $m, batch: $best.pl, llama_cpp_tok_s: $best.speed_tg,
           llama_cpp_threads: $best.n_threads, llama_cpp_flash_attn: ($best.flash_attn == 1),
           helios_ee_off_tok_s: $off, helios_ee_on_tok_s: $on,
           ee_off_ratio: ($off / $best.speed_tg), ee_on_ratio: ($on / $best.speed_tg),
           mean_exit_layer: ($h | map(.mean_exit_layer_ee_on) | add / length),
           greedy_equal_tokens: $check[0][$m].equal_leading_tokens,
           greedy_checked_tokens: $check[0][$m].tokens} ]' \
    <(jq -s '{llama: .}' "$OUT/$name.llama.jsonl") \
    <(jq -s '{helios: (map(.[]))}' "$OUT/$name".helios.r*.json)
done | jq -s 'add' > "$OUT/summary.json"

{
  echo "| model | batch | llama.cpp tok/s (threads, flash attn) | helios EE off tok/s | helios EE on tok/s | EE off / llama.cpp | EE on / llama.cpp | greedy tokens equal |"
  echo "|---|---|---|---|---|---|---|---|"
  jq -r '.[] | "| \(.model) | \(.batch) | \(.llama_cpp_tok_s | floor) (\(.llama_cpp_threads), \(if .llama_cpp_flash_attn then "on" else "off" end)) | \(.helios_ee_off_tok_s | floor) | \(.helios_ee_on_tok_s | floor) | \(.ee_off_ratio * 100 | round / 100)x | \(.ee_on_ratio * 100 | round / 100)x | \(.greedy_equal_tokens)/\(.greedy_checked_tokens) |"' \
    "$OUT/summary.json"
} | tee "$OUT/summary.md"
