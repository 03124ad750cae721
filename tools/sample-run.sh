#!/usr/bin/env bash
# The main job on the bundled needle-in-a-haystack sample (stories260K, 2064 positions):
# replay every rule at four budgets, the trace statistics, CritiPrefill scaled to the short
# prompt, and one HTML report. Outputs land in runs/sample/.
set -euo pipefail
cd "$(dirname "$0")/.."
kvsim=./build/tools/kvsim
trace=traces/niah_stories260k.h5
out=runs/sample
mkdir -p "$out"
$kvsim validate "$trace"
$kvsim replay "$trace" --rules all --budgets 0.05,0.1,0.2,0.4 --out "$out/replay"
$kvsim analyze "$trace" --out "$out/analyze"
# The sample prompt (2K tokens) is shorter than CritiPrefill's 4K dense threshold: scale it down.
$kvsim prefill "$trace" --out "$out/prefill" --segment 128 --block 16 --budget 256 \
  --threshold 256 --fusion both
$kvsim report "$out/replay" --analyze "$out/analyze" --prefill "$out/prefill" --out "$out/report.html"
echo "report: $out/report.html"
