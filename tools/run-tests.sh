#!/usr/bin/env bash
# README command two: install what is missing, build, and run every test (C++, Python, notebooks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
# --no-tests=error: a run that finds no test fails instead of passing silently.
ctest --test-dir build --output-on-failure --no-tests=error -j"$(nproc)" "$@"
