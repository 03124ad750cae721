"""Several questions on one context (kvsim-dump --questions, rules doc 1.8): the dump feeds each
later question after the previous answer and marks /spans/question_K and /spans/answer_K; the
replay compresses the context once (question-agnostic) and writes metrics_per_question.csv, whose
rows are checked here against the per-query rows of each question's positions, and summary.json's
across-question fields (per question, worst, spread)."""
import json
import os
import subprocess
import tempfile
import unittest

import numpy as np

import dump_testutil as tu

try:
    import h5py
    import kvsim
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest(f"needs the kvsim module in the project .venv ({e.name} missing; bash tools/build.sh)")

QUESTIONS = ["What is the best thing to do in San Francisco?", "Who wrote the essays?", "What did Lily find?"]


class MultiQuestionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        qfile = os.path.join(d, "questions.txt")
        with open(qfile, "w") as f:
            f.write("\n".join(QUESTIONS) + "\n\n")
        cls.trace = os.path.join(d, "multi.h5")
        r = tu.run_dump("--model", tu.CHECKPOINT, "--niah", "--niah-dir", tu.ESSAYS_DIR, "--niah-length", "300",
                        "--questions", qfile, "--answer-tokens", "8", "--out", cls.trace)
        assert r.returncode == 0, r.stderr
        cls.qfile = qfile

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_spans_and_segments(self):
        with h5py.File(self.trace, "r") as f:
            spans = {k: tuple(int(x) for x in f["spans"][k][()]) for k in f["spans"]}
            seg = f["tokens/segment"][()]
            P = int(f.attrs["prefill_len"])
        for k in (1, 2, 3):
            self.assertIn(f"question_{k}", spans)
            self.assertEqual(spans[f"answer_{k}"][1] - spans[f"answer_{k}"][0], 8)
        self.assertEqual(spans["question_1"][1], P)  # question 1 is the question segment
        self.assertTrue((seg[spans["question_1"][0]:P] == 1).all())
        self.assertEqual(spans["answer_1"][0], P)
        self.assertEqual(spans["question_2"][0], spans["answer_1"][1])  # fed right after the answer
        self.assertEqual(spans["answer_3"][1], len(seg))
        self.assertTrue((np.diff(seg) >= 0).all())

    def test_per_question_rows_and_summary(self):
        res = kvsim.replay(self.trace, rules="full;snapkv(window=8);knorm", budgets=[0.2], per_query=True, threads=2)
        pq = res.metrics.attrs["per_question"]
        per_query = res.per_query
        summary = res.summary
        spans = {q["question"]: (q["begin"], q["end"]) for q in summary["questions"]}
        self.assertEqual(sorted(spans), [1, 2, 3])
        for rule in pq["rule"].unique():
            for k, (a, b) in spans.items():
                rows = pq[(pq["rule"] == rule) & (pq["question"] == k)]
                self.assertEqual(len(rows), 5)  # one per layer
                for _, row in rows.iterrows():
                    q = per_query[(per_query["rule"] == rule) & (per_query["layer"] == row["layer"]) &
                                  (per_query["head"] == -1) & (per_query["query_pos"] >= a) &
                                  (per_query["query_pos"] < b)]
                    self.assertEqual(row["n_queries"], len(q))
                    self.assertAlmostEqual(row["pert_l1"], q["pert_l1"].mean(), delta=1e-9 * max(1, row["pert_l1"]))
            b = next(r for r in summary["rules"] if r["spec"] == rule)["budgets"][0]
            means = [pq[(pq["rule"] == rule) & (pq["question"] == k)]["pert_l1"].mean() for k in (1, 2, 3)]
            np.testing.assert_allclose(b["question_pert_l1"], means, rtol=1e-9, atol=1e-12)
            self.assertAlmostEqual(b["question_pert_l1_worst"], max(means), delta=1e-9 * max(1, max(means)))
        self.assertTrue((pq[pq["rule"] == "full"]["pert_l1"] == 0).all())

    def test_cli_writes_the_file(self):
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run([os.environ.get("KVSIM_CLI", "kvsim"), "replay", self.trace, "--rules",
                                "snapkv(window=8)", "--budgets", "0.2", "--out", d], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(os.path.exists(os.path.join(d, "metrics_per_question.csv")))
            with open(os.path.join(d, "summary.json")) as f:
                self.assertEqual(len(json.load(f)["questions"]), 3)
            page = tu.render_report(d)
            self.assertIn("One context, several questions", page)
            self.assertIn("question 3", page)

    def test_sweep_equals_replay_under_the_decode_protocol(self):
        """kvsim sweep in layer-range units writes the same metrics_per_question.csv and the same
        summary (per-question and decode fields included) as one kvsim replay."""
        kvsim_cli = os.environ.get("KVSIM_CLI", "kvsim")
        opts = ["--rules", "snapkv(window=8);knorm", "--budgets", "0.2,64", "--protocol", "decode", "--every", "8",
                "--decode-start", "compressed"]
        with tempfile.TemporaryDirectory() as d:
            ref, sw = os.path.join(d, "replay"), os.path.join(d, "sweep")
            r = subprocess.run([kvsim_cli, "replay", self.trace, *opts, "--out", ref], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = subprocess.run([kvsim_cli, "sweep", "--traces", self.trace, *opts, "--layers-per-unit", "2", "--out", sw],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            got = os.path.join(sw, "multi")
            for f in ("metrics.csv", "metrics_per_question.csv"):
                with open(os.path.join(got, f), "rb") as a, open(os.path.join(ref, f), "rb") as b:
                    self.assertEqual(a.read(), b.read(), f)

            def budgets(path):
                with open(os.path.join(path, "summary.json")) as fh:
                    doc = json.load(fh)
                return doc["questions"], [[{k: v for k, v in b.items() if k != "select_seconds"} for b in r["budgets"]]
                                          for r in doc["rules"]]

            want_q, want = budgets(ref)
            got_q, have = budgets(got)
            self.assertEqual(got_q, want_q)
            self.assertEqual(have, want)
            self.assertGreater(want[0][0]["decode_compressions"], 0)  # the fields compared are not empty
            self.assertEqual(len(want[0][0]["question_pert_l1"]), 3)

    def test_several_needles(self):
        needles = ["The secret number is forty two.", "The cat is named Tom.", "The key is under the red pot."]
        with tempfile.TemporaryDirectory() as d:
            nfile = os.path.join(d, "needles.txt")
            with open(nfile, "w") as f:
                f.write("\n".join(needles) + "\n")
            trace = os.path.join(d, "needles.h5")
            r = tu.run_dump("--model", tu.CHECKPOINT, "--niah", "--niah-dir", tu.ESSAYS_DIR, "--niah-length", "400",
                            "--needles", nfile, "--questions", self.qfile, "--answer-tokens", "4", "--out", trace)
            self.assertEqual(r.returncode, 0, r.stderr)
            with h5py.File(trace, "r") as f:
                spans = {k: tuple(int(x) for x in f["spans"][k][()]) for k in f["spans"]}
                P = int(f.attrs["prefill_len"])
            self.assertNotIn("needle", spans)
            starts = [spans[f"needle_{i}"][0] for i in (1, 2, 3)]
            self.assertEqual(starts, sorted(starts))
            self.assertTrue(0 < starts[0] and spans["needle_3"][1] < spans["question_1"][0] < P)
            t = kvsim.open_trace(trace)
            ids = [int(x) for x in t.input_ids]
            lengths = [spans[f"needle_{i}"][1] - spans[f"needle_{i}"][0] for i in (1, 2, 3)]
            self.assertTrue(all(n >= 5 for n in lengths), lengths)
            self.assertEqual(len(set(tuple(ids[a:b]) for a, b in (spans[f"needle_{i}"] for i in (1, 2, 3)))), 3)

    def test_closed_loop_per_question(self):
        """The closed loop on a multi-question dump: closed_loop.json's question_kl is each question's
        mean teacher-forced KL over its positions in closed_loop.csv; zero for full."""
        import pandas as pd
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "cl")
            r = subprocess.run([os.path.join(tu.TOOLS_DIR, "kvsim-closed-loop"), "--model", tu.CHECKPOINT, "--niah",
                                "--niah-dir", tu.ESSAYS_DIR, "--niah-length", "300", "--questions", self.qfile,
                                "--answer-tokens", "4", "--rules", "full;snapkv(window=8)", "--budgets", "0.2",
                                "--no-free-run", "--out", out], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(out, "closed_loop.json")) as f:
                doc = json.load(f)
            cl = pd.read_csv(os.path.join(out, "closed_loop.csv"), dtype={"budget": str})
            with h5py.File(os.path.join(out, "trace.h5"), "r") as f:
                spans = {k: tuple(int(x) for x in f["spans"][k][()]) for k in f["spans"]}
            for run in doc["runs"]:
                self.assertEqual(len(run["question_kl"]), 3)
                tok = cl[(cl["rule"] == run["rule"]) & (cl["decoding"] == "teacher_forced") & (cl["layer"] == -1)]
                for k in (1, 2, 3):
                    a, b = spans[f"question_{k}"][0], spans[f"answer_{k}"][1]
                    want = tok[(tok["position"] >= a) & (tok["position"] < b)]["kl_next_token"].mean()
                    self.assertAlmostEqual(run["question_kl"][k - 1], want, delta=1e-12 + 1e-9 * abs(want))
                if run["rule"] == "full":
                    self.assertTrue(all(x < 1e-9 for x in run["question_kl"]))

    def test_errors(self):
        with tempfile.TemporaryDirectory() as d:
            empty = os.path.join(d, "empty.txt")
            open(empty, "w").close()
            r = tu.run_dump("--model", tu.CHECKPOINT, "--niah", "--niah-dir", tu.ESSAYS_DIR, "--questions", empty,
                            "--out", os.path.join(d, "x.h5"))
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("--questions", r.stderr)
            r = tu.run_dump("--model", tu.CHECKPOINT, "--niah", "--niah-dir", tu.ESSAYS_DIR, "--questions", self.qfile,
                            "--question", "x", "--out", os.path.join(d, "y.h5"))
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("--questions", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(d, "y.h5")))


if __name__ == "__main__":
    unittest.main()
