#!/usr/bin/env bash
# Configures and builds kvsim (Release) in ./build. Extra arguments go to cmake's configure step.
# Then makes `import kvsim` work in the project's .venv (a .pth file pointing at build/python).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
if [ -x .venv/bin/python ]; then
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$PWD/build/python" >"$site/kvsim-build.pth"
fi
