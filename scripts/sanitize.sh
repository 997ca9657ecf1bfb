#!/usr/bin/env bash
# Builds helios with sanitizers (clang-16) beside the plain build and runs the test suites under
# them. The suites need the plain build's micro zoo (scripts/test.sh builds it first).
#   scripts/sanitize.sh address   ASan + UBSan (and the libFuzzer targets) -> build-address/: the
#                                 suites of helios's parsers, engine, controller, daemon, metrics
#                                 and logs (not the trainer's, the CLI's, the zoo's, the GPU's)
#   scripts/sanitize.sh thread    TSan -> build-thread/, the engine, serve and controller suites
#   --build-only / --test-only    one half (CI builds TSan while the ASan suites run)
# Extra arguments go to ctest. Suppressions (third-party code only, each with its reason) are in
# scripts/sanitizers/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIND="${1:?usage: sanitize.sh address|thread [--build-only|--test-only] [ctest args]}"
shift
BUILD_STEP=1
TEST_STEP=1
case "${1:-}" in
  --build-only) TEST_STEP=0; shift ;;
  --test-only) BUILD_STEP=0; shift ;;
esac
BUILD="$ROOT/build-$KIND"
ZOO="${HELIOS_MICRO_ZOO:-${HELIOS_BUILD_DIR:-$ROOT/build}/zoo-micro}"
SUPP="$ROOT/scripts/sanitizers"
# Symbolized reports (file:line) when LLVM's symbolizer is installed (clang-16 brings it).
SYMBOLIZER=""
[[ -x /usr/bin/llvm-symbolizer ]] &&
  SYMBOLIZER=":external_symbolizer_path=/usr/bin/llvm-symbolizer"
CXX="${HELIOS_SANITIZE_CXX:-clang++-16}"
# Counted before OMP_NUM_THREADS is set below: GNU nproc reports OMP_NUM_THREADS when it is set.
JOBS="$(nproc)"

flags=(-DCMAKE_CXX_COMPILER="$CXX" -DCMAKE_BUILD_TYPE=RelWithDebInfo
       -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG"
       -DHELIOS_SANITIZE="$KIND" -DHELIOS_BUILD_BENCH=OFF -DHELIOS_CUDA_CHECK=OFF
       -DHELIOS_MICRO_ZOO="$ZOO")
case "$KIND" in
  address)
    flags+=(-DHELIOS_FUZZ=ON)
    modules=(common model tokenizer kv ops transformer engine controller serve metrics logging)
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0:strict_string_checks=1$SYMBOLIZER"
    export LSAN_OPTIONS="suppressions=$SUPP/lsan.supp:print_suppressions=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$SUPP/ubsan.supp$SYMBOLIZER"
    ;;
  thread)
    modules=(engine controller serve)
    export TSAN_OPTIONS="suppressions=$SUPP/tsan.supp:halt_on_error=1:second_deadlock_stack=1:report_signal_unsafe=0$SYMBOLIZER"
    # libtorch's intra-op pool is OpenMP (libgomp), whose barriers TSan cannot see: one thread
    # keeps its parallel regions inline, so every report is about helios's own threads.
    export OMP_NUM_THREADS=1
    ;;
  *) echo "sanitize.sh: unknown sanitizer $KIND (address or thread)" >&2; exit 2 ;;
esac

targets=(helios)
for module in "${modules[@]}"; do targets+=("helios_${module}_tests"); done
[[ "$KIND" == address ]] && targets+=(helios_fuzz)
select=(-L "^($(IFS='|'; echo "${modules[*]}"))\$")

command -v "$CXX" >/dev/null || { echo "sanitize.sh: $CXX not found (scripts/setup.sh installs it)" >&2; exit 1; }

if ((BUILD_STEP)); then
  start=$SECONDS
  cmake -S "$ROOT" -B "$BUILD" -G Ninja "${flags[@]}" >/dev/null
  cmake --build "$BUILD" -j "$JOBS" --target "${targets[@]}"
  echo "sanitize.sh: $KIND build took $((SECONDS - start)) s"
fi
((TEST_STEP)) || exit 0
[[ -f "$ZOO/mix-micro/model.safetensors" ]] || {
  echo "sanitize.sh: no micro zoo at $ZOO (run scripts/test.sh first)" >&2; exit 1; }
start=$SECONDS
status=0
ctest --test-dir "$BUILD" --output-on-failure -j "$JOBS" "${select[@]}" "$@" || status=$?
echo "sanitize.sh: $KIND suites took $((SECONDS - start)) s"
exit $status
