"""kvsim-study on a reduced study (three short prompts from a prompt file, two rules, one budget):
the table schemas, the `full` row against the full-cache baseline, intervals around their point
estimates, the CriticalKV win rate against a direct count from metrics.csv, resuming, and the
real-model notebook executed on the study's tables."""
import json
import os
import subprocess
import unittest

import numpy as np
import pandas as pd

import dump_testutil as tu
from test_notebooks import python3_kernel_env

STUDY = os.path.join(tu.TOOLS_DIR, "kvsim-study")


class ReducedStudyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tu.require_smollm2()
        cls.tmp = tu.TempDir()
        cls.dir = cls.tmp.__enter__()
        cls.out = os.path.join(cls.dir, "study")
        prompts = os.path.join(cls.dir, "prompts.jsonl")
        with open(prompts, "w") as f:
            f.write(json.dumps({"id": "niah", "kind": "niah", "length": 320, "depth": 0.5,
                                "essays": tu.ESSAYS_DIR}) + "\n")
            f.write(json.dumps({"id": "news", "kind": "longbench", "file": tu.LONGBENCH, "record": 1,
                                "max_tokens": 300}) + "\n")
            f.write(json.dumps({"id": "capital", "kind": "text", "text": "Paris is the capital and "
                                "largest city of France. " * 40, "question": "What is the capital of France?",
                                "answer": "Paris"}) + "\n")
        cls.cmd = [STUDY, "--model", tu.SMOLLM2, "--prompts", prompts, "--rules", "snapkv;critical(snapkv)",
                   "--budgets", "0.3", "--claim-budgets", "0.2", "--generate", "12", "--out", cls.out]
        cls.r = subprocess.run(cls.cmd, capture_output=True, text=True)
        cls.acc = pd.read_csv(os.path.join(cls.out, "accuracy.csv"), dtype={"budget": str}) \
            if cls.r.returncode == 0 else None
        cls.claims = pd.read_csv(os.path.join(cls.out, "claims.csv"), dtype={"setting": str}) \
            if cls.r.returncode == 0 else None

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def setUp(self):
        self.assertEqual(self.r.returncode, 0, self.r.stderr[-3000:])

    def records(self):
        out = {}
        for pid in ("niah", "news", "capital"):
            with open(os.path.join(self.out, "prompts", pid, "done.json")) as f:
                out[pid] = json.load(f)
        return out

    def test_schemas(self):
        self.assertEqual(list(self.acc.columns),
                         ["rule", "label", "budget", "mode", "n_prompts", "accuracy", "acc_ci_low", "acc_ci_high",
                          "kl_mean", "kl_ci_low", "kl_ci_high", "pert_l1_mean", "pert_ci_low", "pert_ci_high"])
        self.assertEqual(list(self.claims.columns),
                         ["claim", "setting", "value", "ci_low", "ci_high", "n", "paper_value", "paper_source"])
        for claim in ("critical_head_win_rate", "ada_bound_not_larger_share", "ada_bound_mean_reduction",
                      "bound_tightness_median", "keydiff_premise_spearman", "keydiff_premise_share",
                      "critiprefill_locality_J1", "critiprefill_locality_shuffled", "critiprefill_locality_lift",
                      "critiprefill_block_recall", "offline_vs_closed_spearman"):
            self.assertIn(claim, set(self.claims["claim"]), claim)
        with open(os.path.join(self.out, "study.json")) as f:
            s = json.load(f)
        self.assertEqual(set(s["time_s"]), {"dump", "replay", "closed_loop", "total"})
        self.assertEqual((s["n_prompts"], s["n_answerable"]), (3, 2))
        with open(os.path.join(self.out, "prompts", "news", "done.json")) as f:
            self.assertNotIn("closed_loop", json.load(f))  # no answer to check: offline only
        for name in s["figures"]:
            self.assertTrue(os.path.getsize(os.path.join(self.out, "figures", name)) > 1000)
            with open(os.path.join(self.out, "figures", name[:-4] + ".pdf"), "rb") as fh:  # the paper's copy
                self.assertEqual(fh.read(5), b"%PDF-")
        # report.html: summary.md's tables and every figure inline, nothing fetched, no script.
        with open(os.path.join(self.out, "report.html"), encoding="utf-8") as f:
            page = f.read()
        self.assertIn("<h2>The CriticalKV claim (paper: &gt; 92% of heads)</h2>", page)
        self.assertIn("<th>claim</th><th>setting</th><th>value [95% CI]</th>", page)
        self.assertEqual(page.count('src="data:image/png;base64,'), len(s["figures"]))
        self.assertNotIn("<script", page)
        self.assertNotIn("http", page)

    def test_full_row_is_the_full_cache(self):
        recs = self.records()
        answerable = [r for r in recs.values() if r["answerable"]]
        full = self.acc[self.acc["mode"] == "full"]
        self.assertEqual(len(full), 1)
        f = full.iloc[0]
        self.assertEqual(f["n_prompts"], len(answerable))
        self.assertEqual(f["accuracy"], np.mean([r["closed_loop"]["full"]["answered"] for r in answerable]))
        self.assertEqual((f["kl_mean"], f["pert_l1_mean"]), (0.0, 0.0))
        rows = self.acc[self.acc["mode"] == "oneshot"]
        self.assertEqual(sorted(rows["label"]), ["critical(snapkv)", "snapkv"])
        self.assertTrue((rows["n_prompts"] == 2).all())
        self.assertTrue((rows["kl_mean"] > 0).all())

    def test_intervals_contain_their_estimates(self):
        for table, cols in ((self.acc, [("accuracy", "acc_ci_low", "acc_ci_high"), ("kl_mean", "kl_ci_low", "kl_ci_high"),
                                        ("pert_l1_mean", "pert_ci_low", "pert_ci_high")]),
                            (self.claims, [("value", "ci_low", "ci_high")])):
            for v, lo, hi in cols:
                t = table[np.isfinite(table[lo]) & np.isfinite(table[v])]
                self.assertGreater(len(t), 0, v)
                self.assertTrue(((t[lo] <= t[v] + 1e-12) & (t[v] <= t[hi] + 1e-12)).all(), t[[v, lo, hi]])

    def test_critical_win_rate_is_a_direct_count(self):
        import kvsim
        base, crit = kvsim._kvsim.canonical_spec("snapkv"), kvsim._kvsim.canonical_spec("critical(snapkv)")
        wins = trials = 0
        for pid in ("niah", "news", "capital"):
            m = pd.read_csv(os.path.join(self.out, "prompts", pid, "claims-aware", "metrics.csv"), dtype={"budget": str})
            m = m[(m["head"] >= 0) & (m["eval"] == "window") & (m["budget"] == "0.2")]
            a = m[m["rule"] == crit].set_index(["layer", "head"])["pert_l1"].sort_index()
            b = m[m["rule"] == base].set_index(["layer", "head"])["pert_l1"].sort_index()
            wins += int((a < b).sum())
            trials += len(a)
        row = self.claims[(self.claims["claim"] == "critical_head_win_rate") &
                          (self.claims["setting"] == "base=snapkv,budget=0.2,point=aware,eval=window,norm=l1")]
        self.assertEqual(len(row), 1)
        self.assertEqual(int(row["n"].iloc[0]), trials)
        self.assertAlmostEqual(float(row["value"].iloc[0]), wins / trials, places=12)
        self.assertEqual(trials, 3 * 30 * 9)

    def test_resume_reuses_finished_prompts(self):
        trace = os.path.join(self.out, "prompts", "niah", "trace.h5")
        before = os.stat(trace).st_mtime_ns
        r = subprocess.run(self.cmd, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertEqual(os.stat(trace).st_mtime_ns, before)
        again = pd.read_csv(os.path.join(self.out, "accuracy.csv"), dtype={"budget": str})
        pd.testing.assert_frame_equal(again, self.acc)

    def test_notebook_on_the_study(self):
        """notebooks/03_real_model.ipynb draws its figures from this study's tables."""
        import nbclient
        import nbformat
        kernel = python3_kernel_env()
        os.environ["KVSIM_STUDY_DIR"] = self.out
        try:
            path = os.path.join(tu.SOURCE_DIR, "notebooks", "03_real_model.ipynb")
            nb = nbformat.read(path, as_version=4)
            nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                    resources={"metadata": {"path": os.path.dirname(path)}}).execute()
        finally:
            if kernel is not None:
                kernel.cleanup()
        images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if "image/png" in o.get("data", {}))
        self.assertGreaterEqual(images, 3, "the figures did not render")

if __name__ == "__main__":
    unittest.main()
