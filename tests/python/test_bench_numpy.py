"""tools/bench_numpy.py does the same work as `kvsim replay`: its own functions (attention_core,
attention_probs, projected_l1_norms, selection_metrics), fed layer 1 of the bundled NIAH trace and
the kept mask kvsim saved for snapkv at 20%, reproduce kvsim's metrics.csv rows to 1e-4 relative.
The test only loads files and averages; every formula under test is the bench's own code."""
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

try:
    import h5py
    import numpy as np
except ImportError as e:  # Debian's python3-numpy / python3-h5py
    h5py = np = None
    MISSING = str(e)
else:
    MISSING = None

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("KVSIM_SOURCE_DIR", os.path.abspath(os.path.join(HERE, "..", "..")))
BENCH = os.path.join(SOURCE_DIR, "tools", "bench_numpy.py")
TRACE = os.path.join(SOURCE_DIR, "traces", "niah_stories260k.h5")
LAYER = 1
RTOL = 1e-4       # float32 on both sides
NU_RTOL = 1e-5    # float32 nu against a float64 product


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_numpy", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_float(ds):
    """Trace tensor widened to float32 (bfloat16 is stored as uint16 with attribute dtype)."""
    x = ds[:]
    if ds.attrs.get("dtype") == "bfloat16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def rel_diff(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)


@unittest.skipIf(MISSING is not None, f"needs numpy and h5py (the project .venv): {MISSING}")
class BenchNumpyMatchesReplay(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cli = os.environ.get("KVSIM_CLI")
        if not cli or not os.access(cli, os.X_OK):
            raise RuntimeError(f"KVSIM_CLI must name the kvsim binary (got {cli!r}); run through ctest")
        cls.tmp = tempfile.mkdtemp(prefix="kvsim_bench_numpy_")
        out = os.path.join(cls.tmp, "replay")
        cmd = [cli, "replay", TRACE, "--rules", "snapkv", "--budgets", "0.2", "--layers", str(LAYER),
               "--nu", "exact", "--save-selection", "--nu-cache", "off", "--out", out]
        run = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, KVSIM_PROGRESS="0"))
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({run.returncode}): {run.stderr.strip()}")
        with open(os.path.join(out, "metrics.csv"), newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["layer"]) == LAYER and r["eval"] == "queries"]
        cls.rows = {int(r["head"]): r for r in rows}
        with open(os.path.join(out, "summary.json")) as f:
            cls.summary = json.load(f)

        with h5py.File(TRACE, "r") as f:
            a = f.attrs
            cls.H, cls.Hkv, cls.d = int(a["num_heads"]), int(a["num_kv_heads"]), int(a["head_dim"])
            cls.scale = float(a["attn_scale"]) if "attn_scale" in a else 1.0 / np.sqrt(cls.d)
            L = f["layers"][str(LAYER)]
            q, cls.k, cls.v, cls.o_proj = (read_float(L[name]) for name in ("q", "k", "v", "o_proj"))
            q_pos = f["q_pos"][:]
            segment = f["tokens/segment"][:]
        # Question-agnostic compression point: end of the context segment (segment 0);
        # evaluation queries: stored positions at or after it.
        not_context = np.nonzero(segment != 0)[0]
        cls.n_c = int(not_context[0]) if len(not_context) else len(segment)
        eval_rows = np.nonzero(q_pos >= cls.n_c)[0]
        cls.pos = q_pos[eval_rows]
        cls.q = np.ascontiguousarray(q[:, eval_rows])
        cls.group = cls.H // cls.Hkv

        with h5py.File(os.path.join(out, "selection.h5"), "r") as f:
            ds = f["0/0/layers"][str(LAYER)]["kept"]
            cls.mode = ds.attrs["mode"]
            cls.keep = ds[:].astype(bool)

        bench = cls.bench = load_bench()
        cls.nu = np.empty((cls.H, cls.v.shape[1]), dtype=np.float32)
        for h in range(cls.H):
            cls.nu[h] = bench.projected_l1_norms(cls.v[h // cls.group], cls.w_head(h))
        cls.probs = bench.attention_probs(cls.q, cls.k, cls.pos, cls.scale, cls.group)
        cls.out = bench.attention_core(cls.q, cls.k, cls.v, cls.pos, cls.scale, cls.group)
        cls.res = bench.selection_metrics(cls.probs, cls.out, cls.v, cls.o_proj, cls.nu, cls.keep, cls.pos,
                                          cls.n_c, cls.group)
        cls.worst = {}

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if cls.worst:
            print("\nmax relative difference, bench_numpy vs kvsim: " +
                  ", ".join(f"{k} {v:.2e}" for k, v in sorted(cls.worst.items())), file=sys.stderr)

    @classmethod
    def w_head(cls, h):
        return cls.o_proj[:, h * cls.d:(h + 1) * cls.d]

    def check(self, name, bench_value, kvsim_value, rtol, what):
        r = float(np.max(rel_diff(bench_value, kvsim_value)))
        self.worst[name] = max(self.worst.get(name, 0.0), r)
        self.assertLessEqual(r, rtol, f"{what}: bench {bench_value!r} vs kvsim {kvsim_value!r}")

    def test_inputs_agree_with_kvsim(self):
        """Same protocol and selection as kvsim: n_c, query count, kv-mode mask, kept counts."""
        self.assertEqual(self.summary["protocol"]["n_c"], self.n_c)
        self.assertTrue(self.summary["projected"])
        self.assertEqual(self.mode, "kv")
        self.assertEqual(self.keep.shape, (self.Hkv, self.n_c))
        self.assertEqual(sorted(self.rows), list(range(-1, self.H)))
        for h in range(self.H):
            row = self.rows[h]
            self.assertEqual(int(row["n_queries"]), len(self.pos))
            self.assertEqual(int(row["kept_tokens"]), int(self.keep[h // self.group].sum()))
        self.assertGreater(len(self.pos), 10)
        self.assertTrue(0 < self.keep.sum() < self.keep.size)

    def test_head_rows(self):
        for h in range(self.H):
            row = self.rows[h]
            for key, col in (("l1", "pert_l1"), ("l2", "pert_l2"), ("theta", "bound_critical"),
                             ("ada", "bound_ada")):
                with self.subTest(head=h, column=col):
                    ours = self.res[key, h]
                    self.assertEqual(ours.shape, (len(self.pos),))
                    self.assertGreater(float(row[col]), 0.0)
                    self.check(col, ours.mean(dtype=np.float64), float(row[col]), RTOL, f"head {h} {col}")
            with self.subTest(head=h, column="pert_l1_max"):
                self.check("pert_l1_max", self.res["l1", h].max(), float(row["pert_l1_max"]), RTOL,
                           f"head {h} pert_l1_max")

    def test_layer_row(self):
        row = self.rows[-1]
        for key, col in (("layer_l1", "pert_l1"), ("layer_l2", "pert_l2")):
            with self.subTest(column=col):
                self.check("layer " + col, self.res[key].mean(dtype=np.float64), float(row[col]), RTOL,
                           f"layer {col}")
        with self.subTest(column="bound_critical"):  # layer theta = sum over heads
            theta = sum(self.res["theta", h].astype(np.float64) for h in range(self.H))
            self.check("layer bound_critical", theta.mean(), float(row["bound_critical"]), RTOL,
                       "layer bound_critical")

    def test_projected_l1_norms_against_float64(self):
        for h in range(self.H):
            v64 = self.v[h // self.group].astype(np.float64)
            want = np.abs(v64 @ self.w_head(h).astype(np.float64).T).sum(axis=1)
            with self.subTest(head=h):
                self.check("nu", self.nu[h], want, NU_RTOL, f"nu of head {h}")
                # Row blocks: a block smaller than S exercises the blocked path too.
                blocked = self.bench.projected_l1_norms(self.v[h // self.group], self.w_head(h), block=100)
                self.check("nu", blocked, want, NU_RTOL, f"nu of head {h}, block=100")


if __name__ == "__main__":
    unittest.main()
