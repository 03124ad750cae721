#!/usr/bin/env bash
# The package as a user gets it: `pip wheel .` builds the wheel (scikit-build-core, an isolated
# build), a fresh venv that has never seen the checkout installs it, and from another working
# directory: a replay of the bundled sample through `import kvsim`, a numpy ScoreRule, the console
# scripts and executables; then `pip uninstall` leaves nothing behind. Prints the wheel size and
# the install time. Needs PyPI (numpy, pandas, h5py; scikit-build-core and pybind11 to build).
# The wheel is kept in build/package/; `tools/check-package.sh WHEEL` checks a given wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
work=$(mktemp -d /tmp/package-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
py=/usr/bin/python3
start=$(date +%s)
if [ $# -ge 1 ]; then
  wheel=$(readlink -f "$1")
else
  "$py" -m venv "$work/build-env"
  "$work/build-env/bin/pip" install --quiet --progress-bar off --upgrade pip
  "$work/build-env/bin/pip" wheel --quiet --no-deps -w "$work/wheels" "$src"
  mkdir -p build/package
  rm -f build/package/kvsim-*.whl
  cp "$work"/wheels/kvsim-*.whl build/package/
  wheel=$(ls "$src"/build/package/kvsim-*.whl)
fi
built=$(date +%s)
"$py" -m venv "$work/user"
"$work/user/bin/pip" install --quiet --progress-bar off "$wheel"
installed=$(date +%s)
echo "kvsim package: $(basename "$wheel"), $(du -k "$wheel" | cut -f1) KiB; wheel built in $((built - start)) s," \
     "installed (with numpy, pandas, h5py) in $((installed - built)) s"
cd "$work"
export KVSIM_CACHE_DIR="$work/cache"
"$work/user/bin/python" - "$src/traces/niah_stories260k.h5" "$work/user" <<'PY'
import os
import sys

import numpy as np

import kvsim

trace_path, venv = sys.argv[1], sys.argv[2]
assert os.path.realpath(kvsim.__file__).startswith(os.path.realpath(venv)), kvsim.__file__
t = kvsim.open_trace(trace_path)
df = kvsim.replay(t, rules="snapkv;streaming", budgets=[0.2])
assert len(df) > 0 and set(df["budget"].astype(str)) == {"0.2"}, df.head()
knorm = kvsim.ScoreRule("package_knorm", lambda L: -np.linalg.norm(L.k, axis=-1))
df2 = kvsim.replay(t, rules=[knorm], budgets=[0.2])
assert len(df2) > 0 and df2["pert_l1"].notna().all()
print(f"import kvsim {kvsim.__version__} from {os.path.dirname(kvsim.__file__)}: replay {len(df)} rows, "
      f"numpy ScoreRule {len(df2)} rows")
PY
for command in "kvsim rules" "kvsim-mpi --help" "kvsim-dump --help" "kvsim-closed-loop --help" \
               "kvsim-study --help" "kvpress-parity --help" "llama2c-to-hf --help"; do
  # shellcheck disable=SC2086
  "$work/user/bin/"$command >"$work/out.txt" 2>&1 || {
    echo "kvsim package: '$command' failed (exit $?):" >&2
    tail -5 "$work/out.txt" >&2
    exit 1
  }
done
"$work/user/bin/python" -m kvsim.dump --help >/dev/null
"$work/user/bin/python" -m kvsim rules >/dev/null
"$work/user/bin/pip" uninstall --quiet --yes kvsim
left=$(find "$work/user" \( -name 'kvsim*' -o -name '_kvsim*' -o -name kvpress-parity -o -name llama2c-to-hf \))
[ -z "$left" ] || { echo "kvsim package: pip uninstall left $left" >&2; exit 1; }
echo "kvsim package: console scripts, kvsim, kvsim-mpi ran; uninstalled cleanly"
