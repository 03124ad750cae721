"""`kvsim bench --json` carries the in-run anchors a reader checks its ratios against: the BLAS
(name, version, core), the machine's FMA peak, the best sgemm, the metrics' GEMM floor, and torch
(its bmm on the core's shapes and a torch replay of the same selections whose rows must equal
kvsim's). A short run on a small length; the values are timings, so only their sanity and the
torch-vs-kvsim agreement are checked, never a speed."""
import json
import math
import os
import subprocess
import tempfile
import unittest

try:
    import torch  # noqa: F401  (the anchors need it; the project .venv has it)
except ImportError as e:
    MISSING = str(e)
else:
    MISSING = None


@unittest.skipIf(MISSING is not None, f"needs torch (the project .venv): {MISSING}")
class BenchAnchors(unittest.TestCase):
    def test_json_has_the_anchors_and_torch_agrees(self):
        cli = os.environ.get("KVSIM_CLI")
        if not cli or not os.access(cli, os.X_OK):
            raise RuntimeError(f"KVSIM_CLI must name the kvsim binary (got {cli!r}); run through ctest")
        with tempfile.TemporaryDirectory(prefix="kvsim_bench_anchors_") as tmp:
            out = os.path.join(tmp, "bench.json")
            run = subprocess.run([cli, "bench", "--quick", "--lengths", "512", "--no-numpy", "--no-replay",
                                  "--no-kernels", "--json", out], capture_output=True, text=True, timeout=1200)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
            with open(out) as f:
                j = json.load(f)
        self.assertEqual(j["blas"]["name"], "OpenBLAS")
        self.assertRegex(j["blas"]["version"], r"^\d+\.\d+\.\d+")
        self.assertTrue(j["blas"]["core"])
        for key in ("peak_gflops", "peak_gflops_per_core", "best_sgemm_gflops", "metrics_floor_ratio",
                    "core_vs_torch_bmm", "torch_replay_speedup"):
            self.assertTrue(isinstance(j[key], float) and math.isfinite(j[key]) and j[key] > 0, (key, j[key]))
        self.assertLessEqual(j["peak_gflops_per_core"], j["peak_gflops"] * (1 + 1e-9))
        # sgemm is timed by the wall clock, the peak by thread CPU time: sgemm cannot beat it.
        self.assertLess(j["best_sgemm_gflops"], 1.05 * j["peak_gflops"])
        t = j["torch"]
        self.assertEqual(t["selections"], 8)
        self.assertLess(t["max_rel_diff_l1"], 1e-4, t)
        self.assertLess(t["max_rel_diff_F"], 1e-5, t)


if __name__ == "__main__":
    unittest.main()
