#!/usr/bin/env bash
# helios against the static early-exit baseline, as in the paper: the same drifting workload
# (prose, then code, then a mix; open-loop Poisson arrivals; fixed seed) is replayed through
# gRPC against helios (policy "helios", the SLO file's repository) and against each of the
# repository's models served statically (fully loaded, early exit at the SLO's threshold), one
# after the other, each on a freshly started daemon with the same memory budget. Writes the
# workload, each run, result.json and PNG plots, and prints helios/baseline ratios.
#
#   bash bench/compare.sh                # full mode: the default zoo (zoo/), 3 x 60 s phases
#   bash bench/compare.sh --quick        # quick mode: the micro zoo (build/zoo-micro), 3 x 8 s
#
# Options: --out DIR (default build/compare or build/compare-quick), --zoo DIR, --slo FILE,
# --budget-mib N, --rate R (requests/s), --phase-seconds S, --max-tokens N, --seed N.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${HELIOS_BUILD_DIR:-$ROOT/build}"

QUICK=0
OUT="" ZOO="" SLO="" BUDGET="" RATE="" PHASE_SECONDS="" MAX_TOKENS=48 SEED=2026
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --zoo) ZOO="$2"; shift 2 ;;
    --slo) SLO="$2"; shift 2 ;;
    --budget-mib) BUDGET="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --phase-seconds) PHASE_SECONDS="$2"; shift 2 ;;
    --max-tokens) MAX_TOKENS="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ $QUICK == 1 ]]; then
  : "${OUT:=$BUILD/compare-quick}" "${ZOO:=$BUILD/zoo-micro}" "${BUDGET:=4}" "${RATE:=40}"
  : "${PHASE_SECONDS:=8}"
else
  : "${OUT:=$BUILD/compare}" "${ZOO:=$ROOT/zoo}" "${BUDGET:=24}" "${RATE:=60}"
  : "${PHASE_SECONDS:=60}"
fi
: "${SLO:=$ROOT/configs/slo.json}"
HELIOS="$BUILD/helios"
COMPARE="$BUILD/bench/helios_compare"
for tool in "$HELIOS" "$COMPARE"; do
  [[ -x "$tool" ]] || { echo "compare.sh: $tool not built (run scripts/build.sh)" >&2; exit 1; }
done
ZOO="$(cd "$ZOO" 2>/dev/null && pwd)" || { echo "compare.sh: no model zoo at $ZOO" >&2; exit 1; }
MODELS=()
for dir in "$ZOO"/*/; do [[ -f "$dir/config.json" ]] && MODELS+=("$(basename "$dir")"); done
[[ ${#MODELS[@]} -gt 0 ]] || { echo "compare.sh: no models in $ZOO" >&2; exit 1; }
command -v gnuplot >/dev/null || { echo "compare.sh: gnuplot not found (scripts/setup.sh installs it)" >&2; exit 1; }

mkdir -p "$OUT/runs"
OUT="$(cd "$OUT" && pwd)"
SERVER=""
trap '[[ -n "$SERVER" ]] && kill "$SERVER" 2>/dev/null || true' EXIT

# The SLO file as given, its repository pointed at the zoo under test; the threshold it sets is
# the static baselines' threshold too, so every run exits early by the same rule.
sed -E "s#\"model_repository\": *\"[^\"]*\"#\"model_repository\": \"$ZOO\"#" "$SLO" >"$OUT/slo.json"
THRESHOLD="$("$HELIOS" validate-config "$OUT/slo.json" --kind slo 2>/dev/null |
  sed -nE 's/.*"threshold": *([0-9.eE+-]+).*/\1/p' | head -1)"
[[ -n "$THRESHOLD" ]] || { echo "compare.sh: cannot read early_exit.threshold from $SLO" >&2; exit 1; }

# Every run: same budget, same scheduler limits. The queue is deep enough that no request of the
# workload is refused: under overload the backlog shows as latency, not as lost requests, and
# max_running_requests is high enough that the memory budget, not the scheduler, bounds the batch.
server_config() {  # policy-specific JSON fragment
  cat <<JSON
{
  "grpc": { "address": "127.0.0.1:0" },
  "http": { "host": "127.0.0.1", "port": 0 },
  "memory": { "budget_mib": $BUDGET, "kv_block_size": 16 },
  "scheduler": { "max_running_requests": 256, "max_batch_tokens": 512, "max_queued_requests": 8192 },
  "logging": { "level": "info" },
  $1
}
JSON
}

"$COMPARE" workload --data "$ROOT/data" --seed "$SEED" --rate "$RATE" --max-tokens "$MAX_TOKENS" \
  --phase "prose:$PHASE_SECONDS" --phase "code:$PHASE_SECONDS" --phase "mix:$PHASE_SECONDS" \
  --out "$OUT/workload.jsonl"

run() {  # label, config file
  local label="$1" config="$2" ports="$OUT/runs/$1.ports.json"
  rm -f "$ports"
  "$HELIOS" serve --config "$config" --ports-file "$ports" >"$OUT/runs/$label.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 600); do [[ -s "$ports" ]] && break; sleep 0.1; done
  [[ -s "$ports" ]] || { echo "compare.sh: $label did not start; see $OUT/runs/$label.log" >&2; exit 1; }
  local grpc http
  grpc="$(sed -E 's/.*"grpc_port": *([0-9]+).*/\1/' "$ports")"
  http="$(sed -E 's/.*"http_port": *([0-9]+).*/\1/' "$ports")"
  "$COMPARE" replay --workload "$OUT/workload.jsonl" --label "$label" --out "$OUT/runs/$label.json" \
    --address "127.0.0.1:$grpc" --metrics-url "http://127.0.0.1:$http/metrics"
  kill -TERM "$SERVER"
  wait "$SERVER" || { echo "compare.sh: $label exited with an error; see its log" >&2; exit 1; }
  SERVER=""
}

server_config "\"controller\": { \"policy\": \"helios\", \"slo_file\": \"$OUT/slo.json\" }" \
  >"$OUT/runs/helios.config.json"
run helios "$OUT/runs/helios.config.json"
RUNS=("$OUT/runs/helios.json")
for model in "${MODELS[@]}"; do
  server_config "\"model\": { \"path\": \"$ZOO/$model\" },
  \"early_exit\": { \"threshold\": $THRESHOLD },
  \"controller\": { \"policy\": \"static\" }" >"$OUT/runs/static-$model.config.json"
  run "static-$model" "$OUT/runs/static-$model.config.json"
  RUNS+=("$OUT/runs/static-$model.json")
done

"$COMPARE" report "${RUNS[@]}" --out "$OUT/result.json" --plots "$OUT/plots" \
  --markdown "$OUT/result.md"
echo "result: $OUT/result.json ($OUT/result.md)  plots: $OUT/plots/*.png"
