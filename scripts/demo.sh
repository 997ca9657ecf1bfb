#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, train the default zoo (cached in zoo/), then
# run the daemon on its default config (configs/server.json: the HELIOS controller over the
# zoo, on the CPU) and talk to it as clients do: a streamed completion with per-token exits,
# prose traffic (the controller profiles the candidates and loads the prose model partially),
# then code traffic (it re-profiles and moves), the Prometheus metrics, and a graceful shutdown.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/build.sh"
"$ROOT/scripts/build_zoo.sh" --out "$ROOT/zoo"
HELIOS="$ROOT/build/helios"
for dir in "$ROOT"/zoo/*/; do
  echo
  echo "=== $(basename "$dir") ==="
  "$HELIOS" info --model "$dir"
done

RUN="$(mktemp -d)"
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$RUN"' EXIT
echo
echo "=== helios serve --config configs/server.json ==="
"$HELIOS" serve --config "$ROOT/configs/server.json" --ports-file "$RUN/ports.json" &
SERVER=$!
for _ in $(seq 300); do [[ -f "$RUN/ports.json" ]] && break; sleep 0.1; done
[[ -f "$RUN/ports.json" ]] || { echo "demo: the daemon did not start" >&2; exit 1; }
port() { sed -E "s/.*\"$1\":([0-9]+).*/\1/" "$RUN/ports.json"; }
GRPC="127.0.0.1:$(port grpc_port)"
METRICS="http://127.0.0.1:$(port http_port)/metrics"
OPENAI="http://127.0.0.1:$(port openai_port)/v1"

echo
echo "=== helios client (streamed; exit layer of each token on stderr) ==="
"$HELIOS" client --address "$GRPC" --prompt "The committee said that the new" --max-tokens 48 \
  --temperature 0.7 --top-p 0.9 --seed 1 --details
echo
echo "=== the OpenAI-compatible API: curl $OPENAI/completions ==="
# The first model /v1/models lists is the one serving.
MODEL="$(curl -s "$OPENAI/models" | grep -o '"id":"[^"]*"' | head -1 | cut -d'"' -f4)"
curl -s "$OPENAI/completions" -H 'Content-Type: application/json' \
  -d "{\"model\": \"$MODEL\", \"prompt\": \"The committee said that the new\", \"max_tokens\": 24, \"temperature\": 0}"
echo
echo
controller_metrics() {
  curl -s "$METRICS" | grep -E '^helios_(active_model|loaded_layers|kv_capacity_sequences|model_switches_total|layer_loads_total|profiling_runs_total|confidence_breaches_total|controller_max_batch)' || true
}
echo "=== prose traffic: 16 concurrent clients, 160 requests ==="
"$ROOT/build/bench/helios_loadgen" --address "$GRPC" --metrics-url "$METRICS" --concurrency 16 \
  --requests 160 --corpus "$ROOT/data/prose/test.txt" --max-tokens 48
controller_metrics
echo
echo "=== code traffic: 16 concurrent clients, 160 requests ==="
"$ROOT/build/bench/helios_loadgen" --address "$GRPC" --metrics-url "$METRICS" --concurrency 16 \
  --requests 160 --corpus "$ROOT/data/code/test.txt" --max-tokens 48
controller_metrics
echo
echo "=== $METRICS (excerpt) ==="
curl -s "$METRICS" | grep -E '^helios_(requests_finished_total|kv_blocks|resident_weight_bytes|memory_peak_bytes|config_reloads_total)' || true
echo
echo "=== SIGTERM: drain and exit ==="
kill -TERM "$SERVER"
wait "$SERVER"
echo "daemon exited with status $?"
