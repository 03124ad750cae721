#!/usr/bin/env bash
# README command one: install what is missing, build, and run the main job on a bundled sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
bash tools/build.sh
bash tools/sample-run.sh
