#!/usr/bin/env bash
# Runs every libFuzzer target of a -DHELIOS_FUZZ=ON build on a copy of its seed corpus and prints
# one line per target: seconds, executions (libFuzzer's stat::number_of_executed_units) and
# crashes (crash, leak, timeout or out-of-memory inputs it saved). Exits non-zero if any target
# crashed or could not run.
#
#   scripts/fuzz.sh --build DIR [--seconds N] [--only NAME]
#
# Work files go under DIR/fuzz-work/<target>/: corpus/ (the seeds plus what the run found),
# artifacts/ (inputs that crashed) and log.
set -euo pipefail

build=""
seconds=60
only=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ -z "$build" ]]; then
  echo "fuzz.sh: --build DIR is required (a build configured with -DHELIOS_FUZZ=ON)" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$(cd "$build" && pwd)"
work="$build/fuzz-work"

status=0
shopt -s nullglob
for source in "$root"/fuzz/*_fuzz.cpp; do
  name="$(basename "$source" .cpp)"
  [[ -n "$only" && "$name" != "$only" ]] && continue
  binary="$build/fuzz/helios_$name"
  if [[ ! -x "$binary" ]]; then
    printf '%-28s not built (%s missing)\n' "$name" "$binary"
    status=1
    continue
  fi
  dir="$work/$name"
  rm -rf "$dir"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  if [[ -d "$root/fuzz/corpus/$name" ]]; then
    cp -r "$root/fuzz/corpus/$name/." "$dir/corpus/"
  fi
  rc=0
  "$binary" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$dir/log" 2>&1 || rc=$?
  executions="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$dir/log" | awk '{print $2}' |
    tail -n 1)"
  artifacts=("$dir"/artifacts/*)
  crashes=${#artifacts[@]}
  if [[ $rc -ne 0 && $crashes -eq 0 ]]; then
    crashes=1  # it died without saving an input (a crash in start-up, say): still a failure
  fi
  printf '%-28s seconds=%-6s executions=%-10s crashes=%s\n' "$name" "$seconds" \
    "${executions:-?}" "$crashes"
  if [[ $crashes -gt 0 ]]; then
    status=1
    for artifact in "${artifacts[@]}"; do echo "  input: $artifact"; done
    echo "  log: $dir/log"
    grep -m 3 -E 'ERROR: |SUMMARY: |terminate called|runtime error' "$dir/log" | sed 's/^/    /' || true
  fi
done
exit $status
