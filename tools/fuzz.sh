#!/usr/bin/env bash
# Builds the trace-reader fuzz target with clang's libFuzzer (build-fuzz/) and runs it.
#   bash tools/fuzz.sh [SECONDS] [--asan]   default 60 (the CI run); 3600 for the documented long run
#   --asan: AddressSanitizer too (build-fuzz-asan/, -fsanitize=fuzzer,address,undefined). HDF5
#   itself is not instrumented; its reads through our buffers are (interceptors). A corrupt file
#   that makes HDF5 misbehave inside the preflight's child kills only the child (ASan's report
#   is printed there, the input ends in kvsim's one-line error); anything in the fuzzing process
#   itself is a finding.
# Runs every input of tests/fuzz/regressions and ../shared/fuzz-regressions (when present) once, then fuzzes from tests/fuzz/corpus. New inputs go to
# build-fuzz/fuzz-corpus, crashes, hangs and out-of-memory inputs to build-fuzz/fuzz-artifacts;
# the script fails if any appears. Details: tests/fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60 asan=OFF dir=build-fuzz
for arg in "$@"; do
  case "$arg" in
    --asan) asan=ON dir=build-fuzz-asan ;;
    *) seconds=$arg ;;
  esac
done
cmake -S . -B "$dir" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DKVSIM_FUZZ=ON -DKVSIM_FUZZ_ASAN=$asan \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$dir.log" 2>&1 || { cat "$dir.log"; exit 1; }
cmake --build "$dir" -j"$(nproc)" --target fuzz_trace_reader >>"$dir.log" 2>&1 || { tail -50 "$dir.log"; exit 1; }
rm -f "$dir.log"
# A refused large allocation is a failed malloc, as under the release build's RLIMIT_AS cap.
export ASAN_OPTIONS=${ASAN_OPTIONS:-allocator_may_return_null=1:detect_leaks=0}
corpus=$dir/fuzz-corpus artifacts=$dir/fuzz-artifacts children=$dir/preflight-asan
rm -rf "$children" && mkdir -p "$children"
export KVSIM_PREFLIGHT_ASAN_LOG=$PWD/$children/report  # HDF5 faults inside preflight children
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
  xargs -0 "$dir"/tests/fuzz_trace_reader "${flags[@]}" >"$artifacts/../regressions.log" 2>&1 ||
  { tail -20 "$artifacts/../regressions.log"; echo "kvsim fuzz: a regression input failed" >&2; exit 1; }
echo "kvsim fuzz ($dir): $(grep -c '^Executed' "$artifacts/../regressions.log") regression inputs ran cleanly"
"$dir"/tests/fuzz_trace_reader "${flags[@]}" -max_len=120000 -max_total_time="$seconds" -print_final_stats=1 \
  "$corpus" 2>&1 | grep -E "^#[0-9]+ +(INITED|DONE)|^stat::(number_of_executed_units|peak_rss_mb)|ERROR|SUMMARY|Test unit" | tail -25
[ "$asan" = ON ] && echo "kvsim fuzz ($dir): $(ls "$children" | wc -l) HDF5 faults caught inside preflight" \
  "children (ASan reports in $children; each input still ended in a one-line error)"
found=$(ls "$artifacts" | wc -l)
if [ "$found" -ne 0 ]; then
  echo "kvsim fuzz: $found crash/hang/oom input(s) in $artifacts" >&2
  exit 1
fi
echo "kvsim fuzz ($dir): no crash, hang or out-of-memory in ${seconds} s"
