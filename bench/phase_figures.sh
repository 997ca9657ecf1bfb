#!/usr/bin/env bash
# Per phase of a comparison's trace: output tokens/s and prompt perplexity of each labelled run,
# in every repeat and load point of a bench/compare.sh output directory (helios_compare routing
# --phase, one phase and run at a time), then the medians and ranges of one run against another.
#   bash bench/phase_figures.sh build/compare-resident helios helios-resident
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPARE="${HELIOS_BUILD_DIR:-$ROOT/build}/bench/helios_compare"
OUT="${1:?usage: phase_figures.sh COMPARE_OUT BASE_LABEL LABEL}" BASE="${2:?}" LABEL="${3:?}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
: >"$TMP/rows"
for dir in "$OUT"/r*/*/; do
  point="$(basename "$dir")" repeat="$(basename "$(dirname "$dir")")"
  phases="$(jq -r '[.requests[].phase] | unique | .[]' "$dir/runs/$BASE.json")"
  for phase in $phases; do
    for label in "$BASE" "$LABEL"; do
      "$COMPARE" routing "$dir"/runs/static-*.json "$dir/runs/$label.json" --routed "$label" \
        --phase "$phase" --out "$TMP/one.json" >/dev/null
      jq -r --arg p "$point" --arg r "$repeat" --arg ph "$phase" --arg l "$label" \
        '[$p, $ph, $l, $r, .routed_run.throughput_tokens_per_s, .routed_run.prompt_perplexity] | @tsv' \
        "$TMP/one.json" >>"$TMP/rows"
    done
  done
done
echo "| load point | phase | $LABEL / $BASE tokens/s, median (range) | perplexity change, median (range) |"
echo "|---|---|---|---|"
jq -Rrs --arg base "$BASE" --arg lab "$LABEL" '
  [split("\n")[] | select(length > 0) | split("\t")
   | {point: .[0], phase: .[1], label: .[2], repeat: .[3], tps: (.[4] | tonumber), ppl: (.[5] | tonumber)}]
  | group_by([.point, .phase]) | .[]
  | . as $g
  | [$g[] | select(.label == $base)] as $b | [$g[] | select(.label == $lab)] as $x
  | [range(0; $b | length) | {t: ($x[.].tps / $b[.].tps), p: ($x[.].ppl / $b[.].ppl - 1)}] as $r
  | ($r | map(.t) | sort) as $t | ($r | map(.p) | sort) as $q
  | "| \($g[0].point) | \($g[0].phase) | \($t[($t | length) / 2 | floor] * 100 | round / 100)x (\($t[0] * 100 | round / 100)-\($t[-1] * 100 | round / 100)x) | \($q[($q | length) / 2 | floor] * 1000 | round / 10)% (\($q[0] * 1000 | round / 10)% to \($q[-1] * 1000 | round / 10)%) |"
' "$TMP/rows"
