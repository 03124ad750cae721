#!/usr/bin/env bash
# Runs every C++ suite's AVX-512 variant on a CPU without AVX-512: a second build
# (build-avx512emu, cmake -DKVSIM_EMULATE_AVX512=ON) compiles the *_avx512.cpp kernels for AVX2
# with SIMDe's emulation of each intrinsic (tests/emulation/avx512_on_avx2.h), so that the same
# tests that run on an AVX-512 machine check these kernels' logic here. It says nothing about
# their speed or encoding; a real AVX-512 CPU runs the suites natively in build/.
#   bash tools/check-avx512-emulated.sh [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! grep -qw avx2 /proc/cpuinfo; then
  echo "kvsim: AVX-512 emulation needs an AVX2 CPU; skipped" >&2
  exit 0
fi
cmake -S . -B build-avx512emu -DCMAKE_BUILD_TYPE=Release -DKVSIM_EMULATE_AVX512=ON >/dev/null
# Only what the C++ suites run: their executables and the CLI they call.
targets=$(sed -n 's/^add_test(\[=\[\([a-z_0-9]*\)_avx512\]=\] .*/\1/p' build-avx512emu/tests/CTestTestfile.cmake | sort -u)
[ -n "$targets" ] || { echo "kvsim: no *_avx512 suite found in build-avx512emu" >&2; exit 1; }
cmake --build build-avx512emu -j"$(nproc)" --target kvsim $(printf 'test_%s ' $targets)
ctest --test-dir build-avx512emu --output-on-failure --no-tests=error -j"$(nproc)" -R '_avx512$' "$@"
