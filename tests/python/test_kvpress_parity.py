"""kvpress as a live peer (the real kvpress package from .venv, its press code unmodified):

- parity: kvpress's presses on the bundled traces and on a trace dumped through transformers
  keep exactly the tokens (and ThinK's key channels) that kvsim's rules keep, outside exact
  ties, at several compression ratios (kvsim/parity.py);
- the two deviations found earlier stay fixed: PyramidKV's float schedule and CriticalAdaKV's
  first stage agree token for token on the NIAH sample at 0.5;
- ExpectedAttention: kvpress's float32 scores tie at exact zeros across the cut; kvsim's log
  space scores do not;
- any press: `kvsim-dump --kvpress-press` stores what a press keeps, `kvsim replay` measures it
  as external(name=...), the kept sets equal kvsim's own rule, and a press kvsim does not
  implement (LagKV) appears in a kvsim report.
"""
import json
import os
import subprocess
import unittest

import numpy as np

import dump_testutil as tu

try:
    import h5py
    import kvpress  # noqa: F401
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest(f"needs the project .venv ({e.name} missing)")

from kvsim import parity as kp

CONVERTER = os.path.join(tu.TOOLS_DIR, "llama2c-to-hf")


def kvsim(*args):
    return subprocess.run([os.environ["KVSIM_CLI"], *args], capture_output=True, text=True,
                          env=dict(os.environ, KVSIM_PROGRESS="0"))


class KvpressTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tu.open_cli_class_dir(cls)
        cls.hf = os.path.join(cls.dir, "stories260K-hf")
        r = subprocess.run([CONVERTER, tu.CHECKPOINT, cls.hf], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        # A trace dumped through transformers, with kvpress presses run live on the same model.
        cls.hf_trace = os.path.join(cls.dir, "hf_niah.h5")
        r = tu.run_dump("--model", cls.hf, "--niah", "--niah-dir", tu.ESSAYS_DIR, "--niah-length", "1500",
                        "--generate", "8", "--max-positions", "1508", "--out", cls.hf_trace,
                        "--kvpress-press", "snapkv=SnapKVPress(window_size=64, kernel_size=5)",
                        "--kvpress-press", "ada=AdaKVPress(press=SnapKVPress(window_size=64, kernel_size=5))",
                        "--kvpress-press", "think=ComposedPress(presses=[SnapKVPress(window_size=64, "
                                           "kernel_size=5), ThinKPress(key_channel_compression_ratio=0.5)])",
                        "--kvpress-press", "lagkv=LagKVPress()",
                        "--compression-ratio", "0.25,0.5")
        assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def check_parity(self, traces, ratios):
        rows = kp.parity_table(traces, ratios=ratios)
        table = kp.format_table(rows)
        print("\n" + table)
        self.assertTrue(kp.parity_holds(rows), table)
        self.assertEqual({r["press"] for r in rows}, {p[0] for p in kp.PAIRS})
        return rows

    def test_every_preset_is_checked_against_its_press(self):
        """Each NAME@kvpress preset is a row of the parity table, paired with the press it names."""
        from kvsim import _kvsim
        import kvsim
        by_spec = {}
        for _, expr, spec, _ in kp.PAIRS:  # a preset's own row comes first (wrappers reuse it later)
            by_spec.setdefault(spec, expr)
        for name, spec, press in _kvsim.kvpress_presets():
            self.assertIn(name, by_spec, f"{name} is not checked by kvpress-parity")
            self.assertTrue(by_spec[name].startswith(press.split("(")[0]), (name, by_spec[name], press))
            self.assertEqual(_kvsim.canonical_spec(name), _kvsim.canonical_spec(spec))
        with self.assertRaisesRegex(kvsim.KvsimError, "unknown preset 'snapkv@nowhere'"):
            _kvsim.canonical_spec("snapkv@nowhere")

    def test_a_failing_press_is_a_row_and_the_others_still_run(self):
        trace = os.path.join(tu.TRACES_DIR, "niah_stories260k.h5")
        pairs = [("Broken kvpress side", "NoSuchPress(compression_ratio={cr})", "snapkv", "post"),
                 ("Broken kvsim side", "KnormPress(compression_ratio={cr})", "nosuchrule", "post"),
                 kp.PAIRS[2]]  # Knorm
        rows = kp.parity_table([trace], pairs, ratios=(0.5,))
        by = {r["press"]: r for r in rows}
        self.assertEqual(len(rows), 3)
        self.assertIn("NoSuchPress", by["Broken kvpress side"]["error"])
        self.assertTrue(by["Broken kvsim side"]["error"].startswith("kvsim: "), by["Broken kvsim side"]["error"])
        self.assertNotIn("kvsim replay: kvsim replay", by["Broken kvsim side"]["error"])
        self.assertIsNone(by["Knorm"]["error"])
        self.assertEqual(by["Knorm"]["differing"], by["Knorm"]["explained_by_ties"] + by["Knorm"]["explained_by_tolerance"])
        self.assertFalse(kp.parity_holds(rows))  # a failure is never a pass
        self.assertTrue(kp.parity_holds([by["Knorm"]]))
        text = kp.format_compact(rows)
        self.assertIn("FAILED: ", text)
        # The command: every pair printed, exit status 1 only for the failure.
        code = kp.main([trace, "--ratios", "0.5", "--only", "Knorm"])
        self.assertEqual(code, 0)
        # A label with a comma is selected by --press; an unknown label is an error naming it.
        self.assertEqual(kp.main([trace, "--ratios", "0.5", "--press", "ExpectedAttention, log space"]), 0)
        self.assertEqual(kp.main([trace, "--ratios", "0.5", "--only", "NoSuchPress"]), 2)

    def test_near_ties_are_counted_apart_from_exact_ties(self):
        # One row of 6 scores, top 3 kept: the cut is 0.5; 0.5 (again) is an exact tie, 0.5 + 2e-8 a
        # float32 near-tie, 0.4 a real difference.
        x = np.array([[0.9, 0.8, 0.5, 0.5, 0.5 + 2e-8, 0.4]], dtype=np.float64)
        calls = [(x, np.array([[0.9, 0.8, 0.5]]), True)]
        exact, near = kp.tie_positions(calls, Hkv=1, n=6)
        self.assertEqual(exact, {(0, 2), (0, 3)})
        self.assertEqual(near, {(0, 2), (0, 3), (0, 4)})  # the near group the cut splits (compare counts exact first)
        # The cut's own token belongs to the near-tie it splits (a swap with it is explained on both sides) ...
        x = np.array([[0.9, 0.8, 0.5, 0.5 + 2e-8, 0.4]], dtype=np.float64)
        exact, near = kp.tie_positions([(x, np.array([[0.9, 0.8, 0.5 + 2e-8]]), True)], Hkv=1, n=5)
        self.assertEqual((exact, near), (set(), {(0, 2), (0, 3)}))
        # ... and a near group the cut keeps whole explains nothing.
        x = np.array([[0.9, 0.5, 0.5 + 2e-8, 0.1]], dtype=np.float64)
        exact, near = kp.tie_positions([(x, np.array([[0.9, 0.5 + 2e-8, 0.5]]), True)], Hkv=1, n=4)
        self.assertEqual((exact, near), (set(), set()))

    def test_parity_niah_sample(self):
        rows = self.check_parity([os.path.join(tu.TRACES_DIR, "niah_stories260k.h5")], (0.25, 0.5, 0.75))
        at = {(r["press"], r["ratio"]): r for r in rows}
        # The two fixed deviations: token for token, no tie involved.
        for press in ("PyramidKV", "CriticalAdaKV"):
            self.assertEqual((at[press, 0.5]["differing"], at[press, 0.5]["jaccard_min"]), (0, 1.0), press)
        # ExpectedAttention's float32 scores tie across the cut (exact zeros): ties explain every
        # difference, and there are many.
        self.assertGreater(at["ExpectedAttention", 0.5]["explained_by_ties"], 1000)
        channels = [r["channels_equal"] for r in rows if r["press"].startswith("ThinK")]
        self.assertEqual(channels, [True] * 3)

    def test_parity_longbench_sample_and_transformers_trace(self):
        self.check_parity([os.path.join(tu.TRACES_DIR, "longbench_stories260k.h5"), self.hf_trace], (0.5,))

    def test_expected_log_space_removes_the_tie(self):
        out = os.path.join(self.dir, "expected")
        r = kvsim("replay", os.path.join(tu.TRACES_DIR, "niah_stories260k.h5"), "--rules",
                  "expected(space=linear);expected", "--budgets", "cr=0.5", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "summary.json")) as fh:
            rules = json.load(fh)["rules"]
        linear, log = (rule["budgets"][0]["tied_at_cut_mean"] for rule in rules)
        self.assertGreater(linear, 100)  # tokens per KV head and layer tied at the cut
        self.assertEqual(log, 0)

    def test_presses_recorded_by_the_dumper(self):
        with h5py.File(self.hf_trace, "r") as f:
            self.assertEqual(sorted(f["selections"]), ["ada", "lagkv", "snapkv", "think"])
            g = f["selections/ada"]
            self.assertEqual((g.attrs["kind"], g.attrs["mode"]), ("kept", "kv"))
            self.assertIn("AdaKVPress", g.attrs["source"])
            self.assertEqual(sorted(g), ["cr=0.25", "cr=0.5"])
            self.assertIn("key_channels", f["selections/think/cr=0.5/layers/0"])
        out = os.path.join(self.dir, "live")
        specs = ["snapkv(window=64,kernel=5,pool=avg)", "external(name=snapkv)",
                 "ada(snapkv(window=64,kernel=5,pool=avg),window_in_floor=true)", "external(name=ada)",
                 "think(snapkv(window=64,kernel=5,pool=avg),ratio=0.5)", "external(name=think)",
                 "external(name=lagkv)"]
        r = kvsim("replay", self.hf_trace, "--rules", ";".join(specs), "--budgets", "cr=0.25,cr=0.5",
                  "--window", "64", "--save-selection", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with h5py.File(os.path.join(out, "selection.h5"), "r") as f:
            for ours, theirs in ((0, 1), (2, 3), (4, 5)):
                for b in ("0", "1"):
                    for l in f[f"{ours}/{b}/layers"]:
                        a, c = f[f"{ours}/{b}/layers/{l}"], f[f"{theirs}/{b}/layers/{l}"]
                        np.testing.assert_array_equal(a["kept"][()], c["kept"][()], f"{specs[ours]} layer {l}")
                        if "key_channels" in a:
                            np.testing.assert_array_equal(a["key_channels"][()], c["key_channels"][()])
        # A press kvsim does not implement, measured and reported like any rule.
        report = os.path.join(self.dir, "report.html")
        r = kvsim("report", out, "--out", report)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(report) as fh:
            html = fh.read()
        self.assertIn("external(name=lagkv", html)
        with open(os.path.join(out, "metrics.csv")) as fh:
            lag = [line for line in fh if line.startswith('"external(name=lagkv') or line.startswith("external(name=lagkv")]
        self.assertTrue(lag)

    def test_external_errors(self):
        trace = os.path.join(tu.TRACES_DIR, "niah_stories260k.h5")
        r = kvsim("replay", trace, "--rules", "external(name=nope)", "--budgets", "cr=0.5",
                  "--out", os.path.join(self.dir, "x"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("/selections/nope: no such stored selection (stored: none)", r.stderr)
        r = kvsim("replay", self.hf_trace, "--rules", "external(name=ada)", "--budgets", "cr=0.3",
                  "--out", os.path.join(self.dir, "y"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("no stored selection for budget 'cr=0.3' (stored: cr=0.25, cr=0.5)", r.stderr)
        r = kvsim("replay", self.hf_trace, "--rules", "external(name=ada)", "--budgets", "cr=0.5",
                  "--compression-point", "aware", "--out", os.path.join(self.dir, "z"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("use the same --compression-point", r.stderr)
        bad = tu.run_dump("--model", self.hf, "--token-ids", "1,2,3", "--out", os.path.join(self.dir, "b.h5"),
                          "--kvpress-press", "os.system('true')")
        self.assertEqual(bad.returncode, 1)
        self.assertIn("only kvpress press calls", bad.stderr)


if __name__ == "__main__":
    unittest.main()
