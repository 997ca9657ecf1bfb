#!/usr/bin/env bash
# Installs what helios needs to build and run on Debian 12, then prepares the training data.
# Idempotent: packages already present are not reinstalled, data already prepared is kept.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl
  libtorch-dev libopenblas0-pthread   # openblas: ~30x faster matmul than the reference BLAS
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev libre2-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  prometheus                          # promtool, and a real server for the scrape test
  gnuplot-nox npm
  clang-16 libclang-rt-16-dev         # the sanitizer builds and libFuzzer (scripts/sanitize.sh)
)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    # npm may come from elsewhere (a Node.js install); it is only needed as a command.
    if [[ "$package" == npm ]] && command -v npm >/dev/null; then continue; fi
    missing+=("$package")
  fi
done

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
else
  echo "setup: all packages present"
fi

# The official openai npm client that tests/openai/client_test.mjs drives the OpenAI API with, at
# the version tests/openai/package.json pins (npm ci installs what package-lock.json locks).
OPENAI_TEST="$ROOT/tests/openai"
openai_pinned="$(node -p "require(process.argv[1]).dependencies.openai" "$OPENAI_TEST/package.json")"
openai_installed=""
if [[ -f "$OPENAI_TEST/node_modules/openai/package.json" ]]; then
  openai_installed="$(node -p "require(process.argv[1]).version" "$OPENAI_TEST/node_modules/openai/package.json")"
fi
if [[ "$openai_installed" != "$openai_pinned" ]]; then
  (cd "$OPENAI_TEST" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
echo "setup: openai npm client $openai_pinned"

"$ROOT/scripts/prepare_data.sh" --out "$ROOT/data"
