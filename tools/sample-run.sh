#!/usr/bin/env bash
# The main job on the bundled sample trace.
set -euo pipefail
cd "$(dirname "$0")/.."
sample=traces/niah_stories260k.h5
./build/tools/kvsim info "$sample"
