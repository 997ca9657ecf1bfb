#!/usr/bin/env bash
# Builds helios with the CUDA path (HELIOS_CUDA=ON) against the libtorch of the local PyTorch
# install, on a machine prepared by a bundle from scripts/offline_bundle.sh, then runs the GPU
# tests and the roofline benchmark.
#
#   scripts/offline_build.sh [--bundle DIR] [--build DIR] [--results DIR] [--skip-bench]
#
# The bundle's Debian packages are unpacked into DIR/prefix (the system is not touched), the
# micro zoo and test texts are linked where the tests look for them. Results (CTest output,
# benchmark tables and JSON) go to --results (default: the build folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="$ROOT/.offline"
BUILD="$ROOT/build-cuda"
RESULTS=""
BENCH=1
while (($#)); do
  case "$1" in
    --bundle) BUNDLE="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
    --skip-bench) BENCH=0; shift ;;
    *) echo "usage: $0 [--bundle DIR] [--build DIR] [--results DIR] [--skip-bench]" >&2; exit 2 ;;
  esac
done
RESULTS="${RESULTS:-$BUILD}"
mkdir -p "$RESULTS"

PREFIX="$BUNDLE/prefix"
if [[ ! -d "$PREFIX" ]]; then
  for deb in "$BUNDLE"/debs/*.deb; do dpkg-deb -x "$deb" "$PREFIX"; done
  # Absolute links (libz.so -> /lib/...) point into the prefix when the target is there.
  find "$PREFIX" -type l | while read -r link; do
    target="$(readlink "$link")"
    if [[ "$target" == /* && -e "$PREFIX$target" ]]; then ln -sfn "$PREFIX$target" "$link"; fi
  done
fi
LIBDIR="$PREFIX/usr/lib/x86_64-linux-gnu"
export PATH="$PREFIX/usr/bin:$PATH"
export LD_LIBRARY_PATH="$LIBDIR:$PREFIX/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PKG_CONFIG_PATH="$LIBDIR/pkgconfig:$PREFIX/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$PREFIX"

TORCH_PREFIX="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
[[ -d "$ROOT/data" ]] || ln -s "$BUNDLE/data" "$ROOT/data"
mkdir -p "$BUILD"
[[ -e "$BUILD/zoo-micro" ]] || cp -a "$BUNDLE/zoo-micro" "$BUILD/zoo-micro"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} | tee "$RESULTS/machine.txt"

cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHELIOS_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$CUDA_HOME/bin/nvcc" -DCMAKE_CUDA_ARCHITECTURES="80;90" \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX;$PREFIX/usr;$LIBDIR/cmake" 2>&1 | tee "$RESULTS/configure.log"
cmake --build "$BUILD" -j "$(nproc)" 2>&1 | tee "$RESULTS/build.log" | grep -E "error|FAILED" || true
cmake --build "$BUILD" -j "$(nproc)" >/dev/null

# The GPU suites and the CPU suites they stand on; build_micro_zoo finds the copied zoo.
ctest --test-dir "$BUILD" --output-on-failure -j 4 -L "gpu|ops|transformer|model|kv|engine" \
  2>&1 | tee "$RESULTS/ctest.log"
if ((BENCH)); then
  "$BUILD/bench/helios_roofline" --device cuda --models "$BUILD/zoo-micro/prose-micro,llama-3.2-1b,llama-3-8b" \
    --depths full,0.5 --batches 1,8,32,128 --json "$RESULTS/roofline.json" 2>&1 | tee "$RESULTS/roofline.txt"
fi
