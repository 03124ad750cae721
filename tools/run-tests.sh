#!/usr/bin/env bash
# README command two: install what is missing, build, and run every test (C++, Python, notebooks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
# --no-tests=error: a run that finds no test fails instead of passing silently.
ctest --test-dir build --output-on-failure --no-tests=error -j"$(nproc)" "$@"
# The package as a user installs it: wheel, fresh venv, another directory (needs PyPI).
if [ "${KVSIM_PACKAGE_CHECK:-1}" != 0 ]; then
  bash tools/check-package.sh
fi
# A CPU without AVX-512 skips the *_avx512 suites above; there they run again against the
# AVX-512 kernels emulated on AVX2 (SIMDe; build-avx512emu). KVSIM_AVX512_EMULATION=0 skips it.
if ! grep -qw avx512f /proc/cpuinfo && [ "${KVSIM_AVX512_EMULATION:-1}" != 0 ]; then
  bash tools/check-avx512-emulated.sh
fi
# The C++ suites (and the Python suites that call the extension) once more under ASan + UBSan
# (build-asan, tools/check-sanitized.sh); KVSIM_SANITIZED=0 skips it.
if [ "${KVSIM_SANITIZED:-1}" != 0 ]; then
  bash tools/check-sanitized.sh
fi
# A short libFuzzer run of the trace reader (tests/fuzz), seeded with the corpus and the
# regression inputs; KVSIM_FUZZ_SECONDS=0 skips it.
# The same under AddressSanitizer (tools/fuzz.sh --asan).
if [ "${KVSIM_FUZZ_SECONDS:-60}" != 0 ]; then
  bash tools/fuzz.sh "${KVSIM_FUZZ_SECONDS:-60}"
  bash tools/fuzz.sh "${KVSIM_FUZZ_SECONDS:-60}" --asan
fi
