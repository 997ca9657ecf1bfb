#!/usr/bin/env bash
# Priority benchmark: one daemon, three phases in one run, helios_loadgen on each side.
#   alone       urgent requests (priority 0), Poisson URGENT_RATE req/s, nothing else running
#   flood       the same urgent requests while a low-priority flood (priority 2, Poisson
#               FLOOD_RATE req/s, above what the server serves) fills the low class's queue
#   no-priority the same flood, the "urgent" requests sent in the flood's own class (what FIFO
#               admission gives them)
# Prints one table: the urgent requests' TTFT percentiles in each phase, and the flood's
# throughput and refusals. Reports (text and JSON) go to OUT (default build/priority-bench).
#   bash bench/priority_bench.sh [--model DIR] [--out DIR] [--urgent-rate R] [--flood-rate R]
#                                [--urgent-requests N] [--max-tokens N]
# The model defaults to the default zoo's mix-l (zoo/mix-l), else the micro zoo's mix-micro;
# it is served statically (no controller passes) with the memory and scheduler limits of
# configs/server.json, and room for 2048 streams on the flood's one connection (gRPC's default
# of 128 would hold the flood back on the client side and the queue would never fill).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="" OUT="$ROOT/build/priority-bench" URGENT_RATE=4 FLOOD_RATE=100 URGENT_REQUESTS=60
MAX_TOKENS=32
while (($#)); do
  case "$1" in
    --model) MODEL="$2"; shift ;;
    --out) OUT="$2"; shift ;;
    --urgent-rate) URGENT_RATE="$2"; shift ;;
    --flood-rate) FLOOD_RATE="$2"; shift ;;
    --urgent-requests) URGENT_REQUESTS="$2"; shift ;;
    --max-tokens) MAX_TOKENS="$2"; shift ;;
    *) echo "priority_bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$MODEL" ]]; then
  if [[ -f "$ROOT/zoo/mix-l/config.json" ]]; then MODEL="$ROOT/zoo/mix-l"
  else MODEL="$ROOT/build/zoo-micro/mix-micro"; fi
fi
[[ -f "$MODEL/config.json" ]] || { echo "priority_bench: no model at $MODEL" >&2; exit 2; }
mkdir -p "$OUT"
rm -f "$OUT/ports.json"
cat > "$OUT/server.json" <<EOF
{
  "grpc": { "address": "127.0.0.1:0", "max_concurrent_streams": 2048 },
  "http": { "host": "127.0.0.1", "port": 0 },
  "model": { "path": "$MODEL" },
  "memory": { "budget_mib": 24, "kv_block_size": 16 },
  "scheduler": { "max_running_requests": 64, "max_batch_tokens": 512,
                 "max_queued_requests": 256, "priority_levels": 3, "default_priority": 1 },
  "logging": { "level": "warn", "requests": false }
}
EOF
"$ROOT/build/helios" serve --config "$OUT/server.json" --ports-file "$OUT/ports.json" \
  > "$OUT/serve.log" 2>&1 &
SERVER=$!
FLOOD=""
trap 'kill "$SERVER" ${FLOOD:+"$FLOOD"} 2>/dev/null || true' EXIT
for _ in $(seq 600); do [[ -f "$OUT/ports.json" ]] && break; sleep 0.1; done
port() { sed -E "s/.*\"$1\":([0-9]+).*/\1/" "$OUT/ports.json"; }
GRPC="127.0.0.1:$(port grpc_port)"
METRICS="http://127.0.0.1:$(port http_port)/metrics"
LOADGEN=("$ROOT/build/bench/helios_loadgen" --address "$GRPC" --metrics-url "$METRICS"
         --corpus "$ROOT/data/prose/test.txt" --prompt-bytes 96)
# The urgent side lasts URGENT_REQUESTS / URGENT_RATE seconds; the flood starts 5 s earlier
# and outlasts it.
FLOOD_SECONDS=$(python3 -c "print(int($URGENT_REQUESTS / $URGENT_RATE) + 10)")

urgent() {  # name priority
  "${LOADGEN[@]}" --rate "$URGENT_RATE" --requests "$URGENT_REQUESTS" --priority "$2" --seed 7 \
    --max-tokens "$MAX_TOKENS" \
    --json "$OUT/$1.json" > "$OUT/$1.txt"
}
flood() {  # name
  "${LOADGEN[@]}" --rate "$FLOOD_RATE" --duration "$FLOOD_SECONDS" --priority 2 --seed 11 \
    --max-tokens 64 --timeout 300 --json "$OUT/$1.json" > "$OUT/$1.txt" &
  FLOOD=$!
  sleep 5
}
drain() {  # waits for the flood's loadgen, then for the server's queue to empty
  wait "$FLOOD"
  FLOOD=""
  for _ in $(seq 600); do
    curl -s "$METRICS" | grep -q '^helios_requests_waiting 0$' && break
    sleep 0.5
  done
}

urgent alone 0
flood flood-1
urgent flood 0
drain
flood flood-2
urgent no-priority 2
drain
kill -TERM "$SERVER"
wait "$SERVER" || true
trap - EXIT

python3 - "$OUT" "$MODEL" <<'PY'
import json, sys
out, model = sys.argv[1], sys.argv[2]
print(f"model {model}; TTFT and TPOT as the clients measured them; flood: priority 2, 64 tokens\n")
print("| phase | urgent sent / ok / refused | urgent TTFT p50 / p95 / p99 ms | urgent TPOT p50 ms "
      "| flood ok / refused | flood output tok/s |")
print("|---|---|---|---|---|---|")
for name, flood in [("alone", None), ("flood", "flood-1"), ("no-priority", "flood-2")]:
    d = json.load(open(f"{out}/{name}.json"))
    r, t, p = d["requests"], d["ttft_ms"], d["tpot_ms"]
    refused = r["failed_by_status"].get("RESOURCE_EXHAUSTED", {}).get("count", 0)
    cells = [name, f"{r['sent']} / {r['ok']} / {refused}",
             f"{t['p50']:.1f} / {t['p95']:.1f} / {t['p99']:.1f}" if r["ok"] else "n/a",
             f"{p['p50']:.2f}" if r["ok"] else "n/a"]
    if flood:
        f = json.load(open(f"{out}/{flood}.json"))
        fr = f["requests"]
        frefused = fr["failed_by_status"].get("RESOURCE_EXHAUSTED", {}).get("count", 0)
        cells += [f"{fr['ok']} / {frefused}", f"{f['output_token_throughput_tps']:.0f}"]
    else:
        cells += ["-", "-"]
    print("| " + " | ".join(cells) + " |")
PY
