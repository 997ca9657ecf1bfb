#!/usr/bin/env bash
# Serving benchmark: starts `helios serve` on CONFIG (default configs/server.json), then drives
# it with helios_loadgen in closed loop at concurrency 1, 8, 32 and 64 and open loop (Poisson)
# at RATE req/s, all against the same daemon in one run, and prints one table. Reports (text
# and JSON) go to OUT (default build/serve-bench).
#   bash bench/serve_bench.sh [--config FILE] [--out DIR] [--rate R] [--max-tokens N]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$ROOT/configs/server.json" OUT="$ROOT/build/serve-bench" RATE=20 MAX_TOKENS=64
while (($#)); do
  case "$1" in
    --config) CONFIG="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    --max-tokens) MAX_TOKENS="$2"; shift ;;
    *) echo "serve_bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
rm -f "$OUT/ports.json"
"$ROOT/build/helios" serve --config "$CONFIG" --ports-file "$OUT/ports.json" > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 300); do [[ -f "$OUT/ports.json" ]] && break; sleep 0.1; done
port() { sed -E "s/.*\"$1\":([0-9]+).*/\1/" "$OUT/ports.json"; }
GRPC="127.0.0.1:$(port grpc_port)"
METRICS="http://127.0.0.1:$(port http_port)/metrics"
LOADGEN=("$ROOT/build/bench/helios_loadgen" --address "$GRPC" --metrics-url "$METRICS"
         --corpus "$ROOT/data/prose/test.txt" --prompt-bytes 96 --max-tokens "$MAX_TOKENS")
for c in 1 8 32 64; do
  n=$((c < 8 ? 32 : c * 4))
  "${LOADGEN[@]}" --concurrency "$c" --requests "$n" --warmup "$c" --json "$OUT/c$c.json" \
    > "$OUT/c$c.txt"
done
"${LOADGEN[@]}" --rate "$RATE" --requests 200 --json "$OUT/rate.json" > "$OUT/rate.txt"
kill -TERM "$SERVER"
wait "$SERVER"
trap - EXIT

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print("| load | req/s | output tok/s | TTFT p50 / p95 / p99 ms | TPOT p50 / p95 / p99 ms "
      "| largest batch | mean batch | step time outside forward |")
print("|---|---|---|---|---|---|---|---|")
for name in ["c1", "c8", "c32", "c64", "rate"]:
    d = json.load(open(f"{out}/{name}.json"))
    label = f"concurrency {d['concurrency']}" if d["mode"] == "concurrency" else f"Poisson {d['rate']:g} req/s"
    t, p, s = d["ttft_ms"], d["tpot_ms"], d["server_metrics"]
    share = s.get("outside_forward_share")
    print(f"| {label} | {d['request_throughput_rps']:.1f} | {d['output_token_throughput_tps']:.0f} "
          f"| {t['p50']:.1f} / {t['p95']:.1f} / {t['p99']:.1f} "
          f"| {p['p50']:.2f} / {p['p95']:.2f} / {p['p99']:.2f} "
          f"| {d['largest_batch']['max_running_requests']} | {s['mean_batch_size']:.1f} "
          f"| {'n/a' if share is None else f'{100 * share:.1f} %'} |")
PY
