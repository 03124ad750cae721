#!/usr/bin/env bash
# Builds kvsim (Release) in ./build and installs the checkout into the project's .venv the way a
# user installs it: `pip install .` (pyproject.toml, scikit-build-core), with ./build as its CMake
# build folder, so the one build serves the C++ suites (ctest --test-dir build, tests included)
# and the installed package (import kvsim, kvsim-dump, kvsim and kvsim-mpi in .venv/bin) that the
# Python suites use. Rebuilds are incremental. Extra arguments go to CMake's configure step.
# Without .venv (tools/install-deps.sh makes it) only the CMake build runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# The generator of an existing ./build (scikit-build-core would pick Ninja where it is installed).
export CMAKE_GENERATOR="Unix Makefiles"
export CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import scikit_build_core, pybind11" 2>/dev/null; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build build -j"$(nproc)"
  exit 0
fi
# An earlier build's pointer at build/python (before kvsim was installed as a package) must go:
# it would shadow the installed package.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$site/kvsim-build.pth"
args=(--config-settings=build-dir=build --config-settings=cmake.define.KVSIM_BUILD_TESTS=ON
      --config-settings=install.strip=false)
if [ $# -gt 0 ]; then args+=("--config-settings=cmake.args=$(IFS=';'; echo "$*")"); fi
start=$(date +%s)
[ -f build/CMakeCache.txt ] || echo "kvsim: building (pip install . into .venv, CMake folder build/; about 6 minutes on 2 cores the first time)" >&2
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation --progress-bar off "${args[@]}" .
echo "kvsim: built in build/ and installed into .venv ($(($(date +%s) - start)) s)" >&2
