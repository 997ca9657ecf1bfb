#!/usr/bin/env bash
# The same prose workload against the HELIOS policy (configs/server.json) and the static
# baselines (each zoo model fully loaded, early exit on, same memory budget), one after the
# other in one run: throughput, sequences held at once, KV capacity.
#   bash bench/policy_compare.sh [CONCURRENCY] [REQUESTS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONCURRENCY="${1:-48}"
REQUESTS="${2:-480}"
HELIOS="$ROOT/build/helios"
RUN="$(mktemp -d)"
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$RUN"' EXIT

run_policy() {  # label, config file
  local label="$1" config="$2"
  "$HELIOS" serve --config "$config" --ports-file "$RUN/ports.json" >"$RUN/$label.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 300); do [[ -f "$RUN/ports.json" ]] && break; sleep 0.1; done
  local grpc http
  grpc="127.0.0.1:$(sed -E 's/.*"grpc_port":([0-9]+).*/\1/' "$RUN/ports.json")"
  http="http://127.0.0.1:$(sed -E 's/.*"http_port":([0-9]+).*/\1/' "$RUN/ports.json")/metrics"
  # Warm-up (the controller profiles the candidates on it), then the measured run.
  "$ROOT/build/bench/helios_loadgen" --address "$grpc" --metrics-url "$http" \
    --concurrency "$CONCURRENCY" --requests "$REQUESTS" --warmup 120 \
    --corpus "$ROOT/data/prose/test.txt" --max-tokens 48 --json "$RUN/$label.json" >"$RUN/$label.txt"
  local served capacity
  served="$(curl -s "$http" | grep -E '^helios_loaded_layers\{' | awk '$2 > 0 {print $1"="$2}' | tr '\n' ' ')"
  capacity="$(curl -s "$http" | awk '/^helios_kv_capacity_sequences /{print $2}')"
  printf '%-16s %s | KV capacity %s sequences | %s\n' "$label" \
    "$(grep -E '^throughput' "$RUN/$label.txt" | sed 's/throughput *//')" "$capacity" "$served"
  grep -E '^largest batch|mean batch size' "$RUN/$label.txt" | sed 's/^/                 /'
  kill -TERM "$SERVER"; wait "$SERVER" || true
  rm -f "$RUN/ports.json"
}

sed "s#\"slo_file\": \"slo.json\"#\"slo_file\": \"$ROOT/configs/slo.json\"#" "$ROOT/configs/server.json" >"$RUN/helios.json"
run_policy helios "$RUN/helios.json"
for model in ${STATIC_MODELS:-prose-s code-m mix-l}; do
  sed "s#\"path\": \"../zoo/mix-l\"#\"path\": \"$ROOT/zoo/$model\"#" "$ROOT/configs/server-static.json" >"$RUN/static-$model.json"
  run_policy "static-$model" "$RUN/static-$model.json"
done
