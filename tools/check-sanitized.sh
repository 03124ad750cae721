#!/usr/bin/env bash
# The test suites under AddressSanitizer + UBSan (-fno-sanitize-recover=undefined): a second build,
# build-asan (RelWithDebInfo at -O1, -DKVSIM_SANITIZE=ON), made the way tools/build.sh makes
# build/ (pip install . with the tests on), with its package installed into build-asan-python/
# instead of .venv. Then
#   1. every C++ suite (all kernel sets the CPU has), the CLI checks and the ISA-object check of
#      build-asan's own objects run from build-asan; the Python suites that only drive the CLI
#      are not repeated (the CLI they call is the one these suites run sanitized);
#   2. the Python suites that call the extension module (replay/analyze/prefill/write_trace and
#      the hostile-input suite) run once against the sanitized module: .venv's Python with
#      build-asan-python/ first on PYTHONPATH and the ASan runtime preloaded (an uninstrumented
#      interpreter loading an instrumented module needs the runtime loaded first). Leak checking
#      is off there: CPython and torch keep their allocations until exit by design.
# Measured on the 2-core AMD EPYC (AVX2) machine: first build about 7 minutes, C++ suites about
# 3.5 minutes, Python suites about 2.5 minutes (test_hostile_input 130 s of it).
# Incremental: a second run on an unchanged tree rebuilds nothing (about a minute for the tests).
#   bash tools/check-sanitized.sh [ctest args for step 1...]
set -euo pipefail
cd "$(dirname "$0")/.."
python_suites=(test_module test_module_edges test_write_trace test_hostile_input)
export CMAKE_GENERATOR="Unix Makefiles"
export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
start=$(date +%s)
[ -f build-asan/CMakeCache.txt ] || echo "kvsim: sanitizer build in build-asan/ (about 8 minutes on 2 cores the first time)" >&2
args=(--config-settings=build-dir=build-asan --config-settings=cmake.build-type=RelWithDebInfo
      --config-settings=cmake.define.KVSIM_BUILD_TESTS=ON --config-settings=cmake.define.KVSIM_SANITIZE=ON
      "--config-settings=cmake.define.CMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g"
      "--config-settings=cmake.define.CMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g"
      --config-settings=install.strip=false)
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation --progress-bar off --upgrade \
  --target build-asan-python "${args[@]}" .
built=$(date +%s)
echo "kvsim: sanitizer build ready ($((built - start)) s)" >&2

# isa_objects_self_contained_all_levels recompiles the same sources as build/'s run of it: not twice.
ctest --test-dir build-asan --output-on-failure --no-tests=error -j"$(nproc)" \
  -E '^py_|^isa_objects_self_contained_all_levels$' "$@"

# libstdc++ is preloaded with the runtime: the interpreter does not link it, and ASan's
# __cxa_throw interceptor must find it at start-up (else the first C++ exception aborts).
runtime=$(g++ -print-file-name=libasan.so) stdcxx=$(g++ -print-file-name=libstdc++.so.6)
[ -f "$runtime" ] && [ -f "$stdcxx" ] || { echo "kvsim: libasan.so or libstdc++.so.6 not found (g++)" >&2; exit 1; }
pattern="^py_($(IFS='|'; echo "${python_suites[*]}"))\$"
PYTHONPATH="$PWD/build-asan-python${PYTHONPATH:+:$PYTHONPATH}" LD_PRELOAD="$runtime $stdcxx" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=0" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  ctest --test-dir build-asan --output-on-failure --no-tests=error -j"$(nproc)" -R "$pattern"
echo "kvsim: sanitizer suites passed ($(($(date +%s) - built)) s of tests)" >&2
