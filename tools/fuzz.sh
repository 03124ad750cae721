#!/usr/bin/env bash
# Builds the trace-reader fuzz target with clang's libFuzzer (build-fuzz/) and runs it.
#   bash tools/fuzz.sh [SECONDS]     default 60 (the CI run); 3600 for the documented long run
# Runs every input of tests/fuzz/regressions and ../shared/fuzz-regressions (when present) once, then fuzzes from tests/fuzz/corpus. New inputs go to
# build-fuzz/fuzz-corpus, crashes, hangs and out-of-memory inputs to build-fuzz/fuzz-artifacts;
# the script fails if any appears. Details: tests/fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DKVSIM_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >build-fuzz.log 2>&1 || { cat build-fuzz.log; exit 1; }
cmake --build build-fuzz -j"$(nproc)" --target fuzz_trace_reader >>build-fuzz.log 2>&1 || { tail -50 build-fuzz.log; exit 1; }
rm -f build-fuzz.log
corpus=build-fuzz/fuzz-corpus artifacts=build-fuzz/fuzz-artifacts
mkdir -p "$corpus" "$artifacts"
cp -n tests/fuzz/corpus/* "$corpus"/
rm -f "$artifacts"/*
export KVSIM_PREFLIGHT_SECONDS=1 OMP_NUM_THREADS=1
# 1. The regression inputs, each run once (they are known to hang, blow up or crash HDF5; each
#    must now end cleanly). 2. Fuzzing from the corpus. Each input may take two preflights
#    (validate, then the reader), 1 s each at most here; -timeout: an input running longer is a
#    hang; -rss_limit_mb: this process may not pass 1 GiB (preflight children are capped by
#    RLIMIT_AS inside kvsim).
flags=(-timeout=10 -rss_limit_mb=1024 -artifact_prefix="$artifacts/")
regressions=(tests/fuzz/regressions)  # what fuzzing here found, plus the shared set when present
[ -d ../shared/fuzz-regressions ] && regressions+=(../shared/fuzz-regressions)
find "${regressions[@]}" -type f ! -name README.md -print0 |
  xargs -0 build-fuzz/tests/fuzz_trace_reader "${flags[@]}" >"$artifacts/../regressions.log" 2>&1 ||
  { tail -20 "$artifacts/../regressions.log"; echo "kvsim fuzz: a regression input failed" >&2; exit 1; }
echo "kvsim fuzz: $(grep -c '^Executed' "$artifacts/../regressions.log") regression inputs ran cleanly"
build-fuzz/tests/fuzz_trace_reader "${flags[@]}" -max_len=120000 -max_total_time="$seconds" -print_final_stats=1 \
  "$corpus" 2>&1 | grep -E "^#[0-9]+ +(INITED|DONE)|^stat::(number_of_executed_units|peak_rss_mb)|ERROR|SUMMARY|Test unit" | tail -25
found=$(ls "$artifacts" | wc -l)
if [ "$found" -ne 0 ]; then
  echo "kvsim fuzz: $found crash/hang/oom input(s) in $artifacts" >&2
  exit 1
fi
echo "kvsim fuzz: no crash, hang or out-of-memory in ${seconds} s"
