#!/usr/bin/env bash
# Packs what building and testing helios needs besides the sources into one folder, for a
# build machine that has a compiler, CMake, CUDA and a CUDA libtorch (a PyTorch install) but
# no Debian package access: the Debian packages helios links against (unpacked there by
# scripts/offline_build.sh into a prefix, never over the system's own files), the micro zoo,
# and the held-out test texts the tests cut prompts from.
#
#   scripts/offline_bundle.sh [--out DIR]     (default DIR: .offline/ under the repository root)
#
# Run it on Debian 12 after scripts/test.sh (which builds the micro zoo). About 25 MB.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/.offline"
while (($#)); do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
  esac
done
BUILD="${HELIOS_BUILD_DIR:-$ROOT/build}"

# The -dev packages of helios's build (scripts/setup.sh) that a CUDA image does not carry,
# and the libraries they pull in (OpenSSL, zlib and pkg-config too, so the prefix is complete
# whatever the image has). Toolchain and libc are the image's.
PACKAGES=(
  libgrpc++-dev libgrpc-dev libgrpc++1.51 libgrpc29 protobuf-compiler-grpc
  libprotobuf-dev libprotobuf32 libprotobuf-lite32 libprotoc32 protobuf-compiler
  libabsl-dev libabsl20220623 libc-ares-dev libc-ares2 libre2-dev libre2-9
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 nlohmann-json3-dev libcli11-dev
  libcpp-httplib-dev libcpp-httplib0.11 libbrotli-dev libbrotli1 libgtest-dev libgmock-dev googletest
  libssl-dev libssl3 zlib1g-dev zlib1g pkgconf pkgconf-bin libpkgconf3
)
[[ -d "$BUILD/zoo-micro" ]] || { echo "no $BUILD/zoo-micro: run scripts/test.sh first" >&2; exit 1; }
[[ -f "$ROOT/data/prose/test.txt" ]] || { echo "no data/: run scripts/setup.sh first" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT/debs" "$OUT/data/prose" "$OUT/data/code"
(cd "$OUT/debs" && apt-get download "${PACKAGES[@]}" >/dev/null)
cp -a "$BUILD/zoo-micro" "$OUT/zoo-micro"
for domain in prose code; do cp "$ROOT/data/$domain/test.txt" "$OUT/data/$domain/"; done
cp "$ROOT/data/.complete" "$OUT/data/"
du -sh "$OUT"
