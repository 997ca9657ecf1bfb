#!/usr/bin/env bash
# helios against the static early-exit baseline and an oracle, at a fixed rate and at capacity,
# repeated. One drifting trace (prose, code, a mix, prose again; Poisson offsets; fixed seed) is
# replayed through gRPC, each run on a freshly started daemon with the same memory budget and
# scheduler limits, at two load points:
#   rate        open loop: every request at its trace offset (the arrival rate bounds throughput);
#   saturation  closed loop: N workers take the requests in trace order, each sending its next
#               one as soon as its previous one finished, so every policy is backlogged.
# At each load point, in each repeat, the policies run one after the other: each model of the
# zoo served statically (fully loaded, early exit at the SLO file's threshold); the oracle (a
# daemon under the "helios" policy whose model is pinned by hand, through Admin.PinModel before
# each phase's first request, to the phase's best static model at full depth: the lowest prompt
# perplexity on that phase among the static runs just made); helios with profile_mode "serve"
# (label helios) and helios with profile_mode "sample" (label helios-sample), from two copies of
# the SLO file. A pin also moves the requests in flight (recomputed on the new model): at
# saturation up to N requests at the end of a phase finish on the next phase's model. Each (repeat, load point) gets its report (result.json, result.md; plots in
# repeat 1); the aggregate ($OUT/result.json, result.md) gives medians and ranges over the
# repeats, the targets (met only when met in every repeat), how closely each helios run followed
# the phases' best models and what its profiling cost.
#
#   bash bench/compare.sh           # full mode: zoo/, 4 x 12 s phases at 60 req/s, 3 repeats;
#                                   # about 36 min here (2128 s measured; see the estimate below)
#   bash bench/compare.sh --quick   # quick mode: build/zoo-micro, 4 x 5 s phases at 40 req/s,
#                                   # 1 repeat, 64 workers, 3 runs at once; about 2 min
#
#   bash bench/compare.sh --phases mix --routed code-m:2+prose-s:3
#                                   # the mix phase alone, plus a run with that resident set
#                                   # pinned for it (see --routed)
#
# Options: --out DIR (default build/compare or build/compare-quick), --zoo DIR, --slo FILE,
# --budget-mib N, --rate R (requests/s), --phase-seconds S, --max-tokens N, --seed N,
# --repeats N, --concurrency N (saturation workers), --jobs N (runs of a stage at once, each
# daemon then on one compute thread; more than 1 shares the cores between runs, so use it for
# smoke tests, not for measurements), --phases LIST (the trace's phases in order, comma
# separated, each prose, code or mix; default prose,code,mix,prose), --routed SET (adds a run
# labelled routed: the oracle's pins, except that every mix phase pins the resident set SET,
# MODEL:LAYERS+MODEL:LAYERS...; its report, routing.json / routing.md beside result.json, sets
# it against the static runs and the per-request oracle), --resident N (adds a run labelled
# helios-resident: helios in profile mode "serve" with controller.resident_max_models N, so
# that its passes may choose resident sets themselves; it joins the report beside helios, and
# its mix phase gets the routing report, resident-routing.json / .md).
#
# Full-mode estimate (2 cores): the trace is 2,880 requests x 48 tokens. At the rate load point
# each run lasts the 48 s trace plus its backlog (mix-l, the slowest static, keeps up with half
# the rate: about 100 s), about 6.5 min for the six runs; at saturation each run takes the
# trace's 138,000 tokens at its capacity (1,400-4,000 tokens/s: 35-100 s), about 5.5 min; with
# start-ups and reports about 12.5 min a repeat, 35-40 min for three (measured: 2128 s on the
# fused CPU path; 2864-2884 s on the ATen ops, whose slower static runs' backlogs at the rate
# point took longer than this estimate).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${HELIOS_BUILD_DIR:-$ROOT/build}"

QUICK=0
OUT="" ZOO="" SLO="" BUDGET="" RATE="" PHASE_SECONDS="" MAX_TOKENS=48 SEED=2026
REPEATS="" CONCURRENCY="" JOBS="" PHASES="prose,code,mix,prose" ROUTED="" RESIDENT=""
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
    --repeats) REPEATS="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --phases) PHASES="$2"; shift 2 ;;
    --routed) ROUTED="$2"; shift 2 ;;
    --resident) RESIDENT="$2"; shift 2 ;;
    -h|--help) sed -n '2,49p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
# Quick mode's budget holds profile mode "sample"'s scoring reserve (6.2 MiB on the micro zoo)
# beside the largest micro model; every policy gets the same budget.
if [[ $QUICK == 1 ]]; then
  : "${OUT:=$BUILD/compare-quick}" "${ZOO:=$BUILD/zoo-micro}" "${BUDGET:=10}" "${RATE:=40}"
  : "${PHASE_SECONDS:=5}" "${REPEATS:=1}" "${CONCURRENCY:=64}" "${JOBS:=3}"
else
  : "${OUT:=$BUILD/compare}" "${ZOO:=$ROOT/zoo}" "${BUDGET:=24}" "${RATE:=60}"
  : "${PHASE_SECONDS:=12}" "${REPEATS:=3}" "${CONCURRENCY:=256}" "${JOBS:=1}"
fi
: "${SLO:=$ROOT/configs/slo.json}"
for n in "$REPEATS" "$CONCURRENCY" "$JOBS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --repeats, --concurrency and --jobs take a whole number >= 1" >&2; exit 2; }
done
HELIOS="$BUILD/helios"
COMPARE="$BUILD/bench/helios_compare"
for tool in "$HELIOS" "$COMPARE"; do
  [[ -x "$tool" ]] || { echo "compare.sh: $tool not built (run scripts/build.sh)" >&2; exit 1; }
done
ZOO="$(cd "$ZOO" 2>/dev/null && pwd)" || { echo "compare.sh: no model zoo at $ZOO" >&2; exit 1; }
MODELS=()
for dir in "$ZOO"/*/; do [[ -f "$dir/config.json" ]] && MODELS+=("$(basename "$dir")"); done
[[ ${#MODELS[@]} -gt 0 ]] || { echo "compare.sh: no models in $ZOO" >&2; exit 1; }
for tool in gnuplot jq; do
  command -v "$tool" >/dev/null || { echo "compare.sh: $tool not found (scripts/setup.sh installs it)" >&2; exit 1; }
done

mkdir -p "$OUT/daemons"
OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT"/daemons/*.pid
STARTED=$SECONDS
RUNS_IN_FLIGHT=()
cleanup() {
  local pid
  for pid in "${RUNS_IN_FLIGHT[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$OUT"/daemons/*.pid; do [[ -f "$pid" ]] && kill "$(cat "$pid")" 2>/dev/null || true; done
}
trap cleanup EXIT

# Two copies of the SLO file, its repository pointed at the zoo under test: one per profile
# mode. The repository is rewritten first (the file's own may not exist here: validate-config
# checks it); validate-config then prints the file as JSON (comments gone, defaults filled in).
sed -E "s#\"model_repository\": *\"[^\"]*\"#\"model_repository\": \"$ZOO\"#" "$SLO" >"$OUT/slo-given.json"
for mode in serve sample; do
  "$HELIOS" validate-config "$OUT/slo-given.json" --kind slo | tail -n +2 |
    jq --arg zoo "$ZOO" --arg mode "$mode" \
      '.model_repository = $zoo | .controller.profile_mode = $mode' >"$OUT/slo-$mode.json"
  "$HELIOS" validate-config "$OUT/slo-$mode.json" --kind slo >/dev/null ||
    { echo "compare.sh: $OUT/slo-$mode.json is not a valid SLO file" >&2; exit 1; }
done
if [[ -n "$RESIDENT" ]]; then
  [[ "$RESIDENT" =~ ^[2-4]$ ]] || { echo "compare.sh: --resident takes 2, 3 or 4" >&2; exit 2; }
  jq --argjson n "$RESIDENT" '.controller.resident_max_models = $n' "$OUT/slo-serve.json" \
    >"$OUT/slo-resident.json"
  "$HELIOS" validate-config "$OUT/slo-resident.json" --kind slo >/dev/null ||
    { echo "compare.sh: $OUT/slo-resident.json is not a valid SLO file" >&2; exit 1; }
fi
# The SLO's threshold is the static baselines' threshold too: every run exits by the same rule.
THRESHOLD="$(jq -r '.early_exit.threshold' "$OUT/slo-serve.json")"

# Every run: same budget, same scheduler limits. The queue is deep enough that no request of the
# workload is refused: under overload the backlog shows as latency, not as lost requests, and
# max_running_requests is high enough that the memory budget, not the scheduler, bounds the batch.
# One connection carries every stream of a run, so it may carry more than the saturation workers.
server_config() {  # policy-specific JSON fragment
  cat <<JSON
{
  "grpc": { "address": "127.0.0.1:0", "max_concurrent_streams": 1024 },
  "http": { "host": "127.0.0.1", "port": 0 },
  "memory": { "budget_mib": $BUDGET, "kv_block_size": 16 },
  "scheduler": { "max_running_requests": 256, "max_batch_tokens": 512, "max_queued_requests": 8192 },
  "logging": { "level": "info" },
  $1
}
JSON
}
helios_config() {  # SLO file
  server_config "\"controller\": { \"policy\": \"helios\", \"slo_file\": \"$1\" }"
}
static_config() {  # model
  server_config "\"model\": { \"path\": \"$ZOO/$1\" },
  \"early_exit\": { \"threshold\": $THRESHOLD },
  \"controller\": { \"policy\": \"static\" }"
}

PHASE_ARGS=()
IFS=',' read -ra PHASE_LIST <<<"$PHASES"
for domain in "${PHASE_LIST[@]}"; do PHASE_ARGS+=(--phase "$domain:$PHASE_SECONDS"); done
if [[ -n "$ROUTED" && ",$PHASES," != *,mix,* ]]; then
  echo "compare.sh: --routed needs a mix phase in --phases" >&2
  exit 2
fi
"$COMPARE" workload --data "$ROOT/data" --seed "$SEED" --rate "$RATE" --max-tokens "$MAX_TOKENS" \
  "${PHASE_ARGS[@]}" --out "$OUT/workload.jsonl"

# One run: a fresh daemon on `config`, the trace replayed against it, the daemon stopped.
run() {  # dir, label, config file, replay options...
  local dir="$1" label="$2" config="$3"
  shift 3
  local ports="$dir/runs/$label.ports" log="$dir/logs/$label.log" server
  rm -f "$ports"
  "${DAEMON_ENV[@]}" "$HELIOS" serve --config "$config" --ports-file "$ports" >"$log" 2>&1 &
  server=$!
  echo "$server" >"$OUT/daemons/$server.pid"
  for _ in $(seq 600); do [[ -s "$ports" ]] && break; sleep 0.1; done
  [[ -s "$ports" ]] || { echo "compare.sh: $label did not start; see $log" >&2; return 1; }
  local grpc http
  grpc="$(jq -r .grpc_port "$ports")"
  http="$(jq -r .http_port "$ports")"
  "$COMPARE" replay --workload "$OUT/workload.jsonl" --label "$label" --out "$dir/runs/$label.json" \
    --address "127.0.0.1:$grpc" --metrics-url "http://127.0.0.1:$http/metrics" "$@" ||
    { echo "compare.sh: replay of $label failed; see $log" >&2; return 1; }
  kill -TERM "$server"
  wait "$server" || { echo "compare.sh: $label exited with an error; see $log" >&2; return 1; }
  rm -f "$OUT/daemons/$server.pid"
}

# Runs of one stage, at most $JOBS at once; a failed run ends the comparison. Runs side by side
# get one compute thread each (unless OMP_NUM_THREADS says otherwise): two-thread daemons sharing
# the cores spin against each other and take half as long again.
DAEMON_ENV=(env)
[[ $JOBS -gt 1 && -z "${OMP_NUM_THREADS:-}" ]] && DAEMON_ENV=(env OMP_NUM_THREADS=1)
start_run() {
  run "$@" &
  RUNS_IN_FLIGHT+=($!)
  [[ ${#RUNS_IN_FLIGHT[@]} -lt $JOBS ]] || finish_runs
}
finish_runs() {
  local pid failed=0
  for pid in "${RUNS_IN_FLIGHT[@]}"; do wait "$pid" || failed=1; done
  RUNS_IN_FLIGHT=()
  [[ $failed == 0 ]] || { echo "compare.sh: a run failed" >&2; exit 1; }
}

REPORTS=()
for repeat in $(seq "$REPEATS"); do
  for point in rate saturation; do
    dir="$OUT/r$repeat/$point"
    mkdir -p "$dir/runs" "$dir/logs" "$dir/configs"
    load=()
    [[ $point == saturation ]] && load=(--concurrency "$CONCURRENCY")
    echo "== repeat $repeat, load point $point ($((SECONDS - STARTED)) s so far)"
    STATIC_RUNS=()
    for model in "${MODELS[@]}"; do
      static_config "$model" >"$dir/configs/static-$model.json"
      start_run "$dir" "static-$model" "$dir/configs/static-$model.json" "${load[@]}"
      STATIC_RUNS+=("$dir/runs/static-$model.json")
    done
    finish_runs
    # The oracle: each phase's best static model of this repeat and load point, at full depth.
    pins=()
    while read -r pin; do pins+=(--pin "$pin"); done < <("$COMPARE" oracle "${STATIC_RUNS[@]}")
    echo "oracle pins: ${pins[*]}"
    helios_config "$OUT/slo-serve.json" >"$dir/configs/helios.json"
    helios_config "$OUT/slo-sample.json" >"$dir/configs/helios-sample.json"
    start_run "$dir" oracle "$dir/configs/helios.json" "${load[@]}" "${pins[@]}"
    start_run "$dir" helios "$dir/configs/helios.json" "${load[@]}"
    start_run "$dir" helios-sample "$dir/configs/helios-sample.json" "${load[@]}"
    HELIOS_LABELS=(--helios helios --helios helios-sample)
    RESIDENT_RUNS=()
    if [[ -n "$RESIDENT" ]]; then
      helios_config "$OUT/slo-resident.json" >"$dir/configs/helios-resident.json"
      start_run "$dir" helios-resident "$dir/configs/helios-resident.json" "${load[@]}"
      HELIOS_LABELS+=(--helios helios-resident)
      RESIDENT_RUNS=("$dir/runs/helios-resident.json")
    fi
    if [[ -n "$ROUTED" ]]; then
      routed_pins=()
      for pin in "${pins[@]}"; do
        [[ "$pin" == --pin ]] && continue
        if [[ "${pin%%=*}" == *-mix ]]; then pin="${pin%%=*}=$ROUTED"; fi
        routed_pins+=(--pin "$pin")
      done
      start_run "$dir" routed "$dir/configs/helios.json" "${load[@]}" "${routed_pins[@]}"
    fi
    finish_runs
    plots=()
    [[ $repeat == 1 ]] && plots=(--plots "$dir/plots")
    "$COMPARE" report "${STATIC_RUNS[@]}" "$dir/runs/oracle.json" "$dir/runs/helios.json" \
      "$dir/runs/helios-sample.json" "${RESIDENT_RUNS[@]}" "${HELIOS_LABELS[@]}" \
      --load-point "$point" --repeat "$repeat" \
      --out "$dir/result.json" --markdown "$dir/result.md" "${plots[@]}"
    REPORTS+=("$dir/result.json")
    if [[ -n "$RESIDENT" && ",$PHASES," == *,mix,* ]]; then
      resident_plots=()
      [[ $repeat == 1 ]] && resident_plots=(--plots "$dir/plots-resident")
      "$COMPARE" routing "${STATIC_RUNS[@]}" "$dir/runs/helios-resident.json" \
        --routed helios-resident --out "$dir/resident-routing.json" \
        --markdown "$dir/resident-routing.md" "${resident_plots[@]}"
    fi
    if [[ -n "$ROUTED" ]]; then
      "$COMPARE" routing "${STATIC_RUNS[@]}" "$dir/runs/routed.json" --out "$dir/routing.json" \
        --markdown "$dir/routing.md" "${plots[@]}"
    fi
  done
done

"$COMPARE" aggregate "${REPORTS[@]}" --out "$OUT/result.json" --markdown "$OUT/result.md" >/dev/null
echo "result: $OUT/result.json ($OUT/result.md); per repeat and load point: $OUT/r*/*/result.md;" \
  "plots: $OUT/r1/*/plots/*.png; $((SECONDS - STARTED)) s in all"
