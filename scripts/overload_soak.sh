#!/usr/bin/env bash
# The sustained-overload test for longer than CTest runs it: 40 closed-loop clients against a
# daemon that holds 4 requests (2 running, 2 queued) on the micro zoo, for 60 s by default.
# Prints admitted / refused / failed, the daemon's peak RSS and the slowest /healthz.
# Usage: scripts/overload_soak.sh [seconds] [build dir]
set -euo pipefail
seconds=${1:-60}
build=${2:-$(dirname "$0")/../build}
HELIOS_OVERLOAD_SECONDS=$seconds exec "$build/tests/helios_serve_tests" \
  --gtest_filter=Overload.SustainedOverloadKeepsServingAndProbing
