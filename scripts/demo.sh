#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, train the default zoo (cached in zoo/), then
# run the daemon on its default config (configs/server.json: zoo/mix-l on the CPU) and talk to
# it as clients do: a streamed completion with per-token exits, a short load test, the
# Prometheus metrics, and a graceful shutdown.
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

echo
echo "=== helios client (streamed; exit layer of each token on stderr) ==="
"$HELIOS" client --address "$GRPC" --prompt "The committee said that the new" --max-tokens 48 \
  --temperature 0.7 --top-p 0.9 --seed 1 --details
echo
echo "=== load: 8 concurrent clients, 64 requests ==="
"$ROOT/build/bench/helios_loadgen" --address "$GRPC" --metrics-url "$METRICS" --concurrency 8 \
  --requests 64 --corpus "$ROOT/data/prose/test.txt" --max-tokens 48
echo
echo "=== $METRICS (excerpt) ==="
curl -s "$METRICS" | grep -E '^helios_(requests_finished_total|token_exits_total|kv_blocks|loaded_layers|resident_weight_bytes)' || true
echo
echo "=== SIGTERM: drain and exit ==="
kill -TERM "$SERVER"
wait "$SERVER"
echo "daemon exited with status $?"
