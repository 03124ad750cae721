#!/usr/bin/env bash
# Installs the Debian 12 packages kvsim needs, skipping those already present.
set -euo pipefail
pkgs=(
  g++ cmake make pkg-config git
  libopenblas-openmp-dev libhdf5-dev libboost-program-options-dev doctest-dev
  python3 python3-numpy python3-h5py python3-matplotlib python3-pandas
  python3-nbclient python3-nbformat python3-ipykernel
  python3-torch chromium fonts-liberation
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
