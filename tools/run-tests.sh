#!/usr/bin/env bash
# README command two: install what is missing, build, and run every test (C++, Python, notebooks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
# --no-tests=error: a run that finds no test fails instead of passing silently.
ctest --test-dir build --output-on-failure --no-tests=error -j"$(nproc)" "$@"
# A short libFuzzer run of the trace reader (tests/fuzz), seeded with the corpus and the
# regression inputs; KVSIM_FUZZ_SECONDS=0 skips it.
if [ "${KVSIM_FUZZ_SECONDS:-60}" != 0 ]; then bash tools/fuzz.sh "${KVSIM_FUZZ_SECONDS:-60}"; fi
