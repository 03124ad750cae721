"""`import kvsim`: the Python module over the C++ engine.

- replay / analyze / prefill DataFrames equal the files the CLI writes for the same command;
- open_trace gives the trace's tensors as read-only zero-copy numpy views;
- rules written in numpy (knorm, SnapKV) select exactly what kvsim's C++ rules select, alone and
  wrapped by ada / critical / pyramid; MaskRule and write_selection + external() too;
- a Python rule's exception is a kvsim.RuleError naming the rule and the layer; wrong shapes and
  NaN are one-line errors; the GIL is released while the engine runs.
"""
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import tempfile
import unittest

import numpy as np

import dump_testutil as tu

try:
    import h5py
    import pandas as pd

    import kvsim
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest(f"needs the kvsim module in the project .venv ({e.name} missing; bash tools/build.sh)")

NIAH = os.path.join(tu.TRACES_DIR, "niah_stories260k.h5")
LONGBENCH = os.path.join(tu.TRACES_DIR, "longbench_stories260k.h5")


def cli(*args):
    r = subprocess.run([os.environ["KVSIM_CLI"], *args], capture_output=True, text=True,
                       env=dict(os.environ, KVSIM_PROGRESS="0"))
    assert r.returncode == 0, r.stderr
    return r


def numpy_knorm(layer):
    return -np.sqrt((layer.k.astype(np.float64) ** 2).sum(-1)).astype(np.float32)


def numpy_snapkv(w=16, kernel=5):
    """SnapKV (kvpress form: window attention mean, zero-padded average pooling, per query head)."""
    def fn(L):
        H, G, n = L.num_heads, L.num_heads // L.num_kv_heads, L.n_c
        q = L.q_window.astype(np.float64)
        k = np.repeat(L.k.astype(np.float64), G, axis=0)
        logits = np.einsum("hwd,hnd->hwn", q, k) * L.attn_scale
        causal = np.arange(n)[None, :] <= np.arange(n - w, n)[:, None]
        logits = np.where(causal[None], logits, -np.inf)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        s = p[:, :, : n - w].mean(1)
        padded = np.pad(s, ((0, 0), (kernel // 2, kernel // 2)))
        out = np.zeros((H, n), np.float32)
        out[:, : n - w] = sum(padded[:, i:i + n - w] for i in range(kernel)) / kernel
        return out
    return fn


class ModuleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tu.open_cli_class_dir(cls)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def test_replay_dataframe_equals_cli_metrics(self):
        rules = "snapkv;critical(ada(snapkv));tova(variant=stepwise);keydiff(block=128);think(snapkv)"
        for trace in (NIAH, LONGBENCH):
            out = os.path.join(self.dir, "cli_" + os.path.basename(trace))
            cli("replay", trace, "--rules", rules, "--budgets", "0.1,cr=0.5,200", "--per-query", "--out", out)
            # The engine hands its columns over: nothing written or read on the way (the temporary
            # folder Python would use stays empty).
            scratch = os.path.join(self.dir, "scratch_" + os.path.basename(trace))
            os.makedirs(scratch)
            old, tempfile.tempdir = tempfile.tempdir, scratch
            try:
                res = kvsim.replay(trace, rules=rules, budgets=[0.1, "cr=0.5", 200], per_query=True)
            finally:
                tempfile.tempdir = old
            self.assertEqual(os.listdir(scratch), [])
            for df, name in ((res.metrics, "metrics.csv"), (res.per_query, "metrics_per_query.csv")):
                # Bit for bit the CLI's file, in the declared dtypes (kvsim columns) ...
                pd.testing.assert_frame_equal(df, kvsim.read_table(os.path.join(out, name)), check_exact=True)
                # ... and the values a plain pd.read_csv of it gives (which infers its own dtypes).
                pd.testing.assert_frame_equal(df.astype({"budget": str}),
                                              pd.read_csv(os.path.join(out, name)).astype({"budget": str}),
                                              check_dtype=False)
            self.assertEqual(list(res.metrics.columns), [c[0] for c in kvsim._kvsim.output_tables()["metrics.csv"]])
            self.assertEqual(res.summary["protocol"]["n_c"], kvsim.open_trace(trace).meta["context_end"])
            # Provenance: the trace's digest and the source revision kvsim was built from.
            with open(trace, "rb") as fh:
                self.assertEqual(res.summary["trace"]["sha256"], hashlib.sha256(fh.read()).hexdigest())
            self.assertTrue(res.summary["source_revision"])
            self.assertEqual(res.summary["command"],
                             f"kvsim replay {trace} --rules {rules} --budgets 0.1,cr=0.5,200 --per-query")

    def test_budget_free_auc(self):
        """summary.json's rules[].auc: the trapezoid area of each metric over the kept fraction,
        divided by the range, recomputed here from the per-budget means; one budget: no auc."""
        summary = kvsim.replay(NIAH, rules="snapkv;dropkv;caote(snapkv)", budgets=[0.3, 0.1, 0.2, 0.5]).attrs["summary"]
        n_c = summary["protocol"]["n_c"]
        for r in summary["rules"]:
            pts = sorted((b["kept_tokens_mean"] / n_c, b) for b in r["budgets"])
            x = np.array([p[0] for p in pts])
            self.assertEqual(r["auc"]["points"], 4)
            self.assertAlmostEqual(r["auc"]["from"], x[0], places=12)
            self.assertAlmostEqual(r["auc"]["to"], x[-1], places=12)
            for key in ("pert_l1_mean", "rel_pert_l1_mean", "retained_mass_mean", "bound_critical_mean"):
                y = np.array([p[1][key] for p in pts])
                want = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))
                self.assertAlmostEqual(r["auc"][key], want, delta=1e-12 * abs(want))
        one = kvsim.replay(NIAH, rules="snapkv", budgets=[0.2]).attrs["summary"]
        self.assertNotIn("auc", one["rules"][0])

    def test_per_layer_budgets(self):
        """layers=... (kvpress PerLayerCompressionPress): each layer's rows equal a replay of that
        layer at its own plain budget; the summary's nominal budget is the mean; bad lists are one
        line naming the budget."""
        import h5py
        with h5py.File(NIAH, "r") as f:
            L = int(f.attrs["num_layers"])
        fracs = [0.1, 0.3, 0.2, 0.4, 0.25, 0.15, 0.35, 0.05][:L]
        self.assertEqual(len(fracs), L)
        res = kvsim.replay(NIAH, rules="snapkv;critical(snapkv)", budgets=["layers=" + "/".join(map(str, fracs))])
        m = res
        for layer, f in enumerate(fracs):
            one = kvsim.replay(NIAH, rules="snapkv;critical(snapkv)", budgets=[f], layers=str(layer))
            got = m[m["layer"] == layer].drop(columns=["budget"]).reset_index(drop=True)
            pd.testing.assert_frame_equal(got, one.drop(columns=["budget"]).reset_index(drop=True), check_exact=True)
        ratios = kvsim.replay(NIAH, rules="snapkv", budgets=["layers=cr:" + "/".join(str(1 - f) for f in fracs)])
        n_c = res.attrs["summary"]["protocol"]["n_c"]
        for layer, f in enumerate(fracs):  # kvpress's int(n_c * (1 - cr)) per layer
            rows = ratios[(ratios["layer"] == layer) & (ratios["head"] == -1)]
            self.assertEqual(int(rows["budget_tokens"].iloc[0]), max(1, int(n_c * (1 - (1 - f)))))
        for bad, why in (("layers=0.1/0.2", "lists 2 layers; the trace has"), ("layers=0.1/x/0.2", "layer 1"),
                         ("layers=cr:0.5/1.5", "compression ratio")):
            with self.assertRaises(kvsim.KvsimError) as e:
                kvsim.replay(NIAH, rules="snapkv", budgets=[bad])
            self.assertIn(why, str(e.exception))
            self.assertIn(bad, str(e.exception))

    def test_threshold_budget_calibrated(self):
        """thr=X with X from kvsim.calibrate_threshold: the trace-wide kept share equals the
        calibrated one, each head and layer keeps its own count, and rules that count tokens
        refuse the budget with one line naming it."""
        rule = "dms(knorm,window=32)"
        c = kvsim.calibrate_threshold(NIAH, rule, 0.2)
        self.assertGreaterEqual(c["kept_fraction"], 0.2)
        self.assertLess(c["kept_fraction"], 0.2 + 1e-3)
        budget = f"thr={c['threshold']!r}"
        m = kvsim.replay(NIAH, rules=rule, budgets=[budget])
        n_c = m.attrs["summary"]["protocol"]["n_c"]
        heads = m[m["head"] >= 0]
        layer_rows = m[m["head"] == -1]
        # kept_tokens of a layer row: the mean over its KV heads; over layers, the calibrated share
        self.assertAlmostEqual(layer_rows["kept_tokens"].mean() / n_c, c["kept_fraction"], delta=1e-12)
        self.assertGreater(heads["kept_tokens"].nunique(), 1)
        self.assertGreater(layer_rows["kept_tokens"].nunique(), 1)
        with self.assertRaises(kvsim.KvsimError) as e:
            kvsim.replay(NIAH, rules="ada(snapkv)", budgets=[budget])
        self.assertIn(budget, str(e.exception))
        with self.assertRaises(kvsim.KvsimError):
            kvsim.calibrate_threshold(NIAH, "ada(snapkv)", 0.2)

    def test_analyze_and_prefill_equal_cli_files(self):
        out = os.path.join(self.dir, "analyze")
        cli("analyze", NIAH, "--out", out)
        df = kvsim.analyze(NIAH)
        pd.testing.assert_frame_equal(df, kvsim.read_table(os.path.join(out, "key_stats.csv")), check_exact=True)
        pd.testing.assert_frame_equal(df.attrs["recall"], kvsim.read_table(os.path.join(out, "key_recall.csv")),
                                      check_exact=True)
        self.assertEqual(df.attrs["summary"]["protocol"], json.load(open(os.path.join(out, "summary.json")))["protocol"])
        out = os.path.join(self.dir, "prefill")
        args = dict(segment=128, block=16, budget=256, threshold=256)
        cli("prefill", NIAH, "--out", out, *sum(([f"--{k}", str(v)] for k, v in args.items()), []))
        df = kvsim.prefill(NIAH, **args)
        pd.testing.assert_frame_equal(df, kvsim.read_table(os.path.join(out, "metrics.csv")), check_exact=True)
        for name in ("locality", "locality_shuffled"):
            pd.testing.assert_frame_equal(df.attrs[name], kvsim.read_table(os.path.join(out, name + ".csv")),
                                          check_exact=True)
        self.assertIn("layer", df.attrs["table"])

    def test_open_trace_views(self):
        t = kvsim.open_trace(NIAH)
        m = t.meta
        self.assertEqual((m["num_layers"], m["num_heads"], m["num_kv_heads"], m["head_dim"]), (5, 8, 4, 8))
        L = t.layer(3)
        with h5py.File(NIAH, "r") as f:
            for name in ("q", "k", "v", "o", "o_proj"):
                np.testing.assert_array_equal(getattr(L, name), f[f"layers/3/{name}"][()].astype(np.float32))
            np.testing.assert_array_equal(t.q_pos, f["q_pos"][()])
            np.testing.assert_array_equal(t.segments, f["tokens/segment"][()])
        self.assertFalse(L.k.flags.writeable)
        k = L.k
        del L  # the view keeps the layer alive
        self.assertEqual(float(np.abs(k).sum()) > 0, True)
        with self.assertRaises(IndexError):
            t.layer(5)
        with self.assertRaises(kvsim.KvsimError) as e:
            kvsim.open_trace(os.path.join(self.dir, "missing.h5"))
        self.assertIn("missing.h5: no such file", str(e.exception))

    def test_numpy_rules_equal_cpp_rules(self):
        knorm = kvsim.ScoreRule("np_knorm", numpy_knorm, attention=False)
        snap = kvsim.ScoreRule("np_snapkv", numpy_snapkv(), protect_window=16, window=16)
        cpp_snap = "snapkv(window=16,kernel=5,pool=avg)"
        pairs = [("knorm", knorm), (cpp_snap, snap),
                 (f"ada({cpp_snap})", kvsim.wrap("ada", snap)),
                 (f"critical({cpp_snap})", kvsim.wrap("critical", snap)),
                 (f"critical(ada({cpp_snap}),alpha=0.25)", kvsim.wrap("critical", kvsim.wrap("ada", snap), alpha=0.25))]
        res = kvsim.replay(NIAH, rules=[r for p in pairs for r in p], budgets=[0.1, "cr=0.5"], return_selection=True)
        df = res.metrics
        specs = list(dict.fromkeys(df["rule"]))
        for i in range(0, len(specs), 2):
            a = df[df.rule == specs[i]].drop(columns=["rule", "label"]).reset_index(drop=True)
            b = df[df.rule == specs[i + 1]].drop(columns=["rule", "label"]).reset_index(drop=True)
            pd.testing.assert_frame_equal(a, b, check_exact=True, obj=f"{specs[i]} vs {specs[i + 1]}")
        for key, mask in res.selection.items():
            if key[0] in specs[1::2]:
                twin = specs[specs.index(key[0]) - 1]
                np.testing.assert_array_equal(mask, res.selection[(twin,) + key[1:]], f"{key}")

    def test_wrappers_on_the_same_scores(self):
        # A Python rule returning exactly kvsim's own snapkv scores (kvsim.scores): every wrapper,
        # pyramid included, must then select exactly as it does on the C++ rule.
        spec = "snapkv(window=16,kernel=5,pool=avg)"
        same = kvsim.ScoreRule("cpp_scores", lambda L: kvsim.scores(spec, L), protect_window=16)
        for wrapper, params in (("pyramid", {"variant": "float"}), ("ada", {"alpha": 0.3}), ("critical", {}),
                                ("chunkkv", {"len": 20})):
            ours = f"{wrapper}({spec}" + "".join(f",{k}={v}" for k, v in params.items()) + ")"
            df = kvsim.replay(NIAH, rules=[ours, kvsim.wrap(wrapper, same, **params)], budgets=[0.1, "cr=0.5"])
            a, b = (df[df.rule == r].drop(columns=["rule", "label"]).reset_index(drop=True) for r in df.rule.unique())
            pd.testing.assert_frame_equal(a, b, check_exact=True, obj=wrapper)

    def test_mask_rule_and_external_selection(self):
        t = kvsim.open_trace(NIAH)
        n_c = t.meta["context_end"]

        def recent(L, budget):
            m = np.zeros((L.num_kv_heads, L.n_c), bool)
            m[:, L.n_c - budget.tokens:] = True
            return m
        mask = kvsim.MaskRule("np_recent", recent)
        df = kvsim.replay(t, rules=["streaming(sink=0)", mask], budgets=[0.2])
        a, b = (df[df.rule == r].drop(columns=["rule", "label"]).reset_index(drop=True) for r in df.rule.unique())
        pd.testing.assert_frame_equal(a, b)
        # The same masks from a file any tool could write.
        path = os.path.join(self.dir, "mine.h5")
        tokens = int(0.2 * n_c)
        kept = {"0.2": {}}
        for l in range(t.num_layers):
            m = np.zeros((4, n_c), np.uint8)
            m[:, n_c - tokens:] = 1
            kept["0.2"][l] = m
        kvsim.write_selection(path, "recent", n_c, kept=kept, source="test")
        scores = {l: np.tile(np.arange(n_c, dtype=np.float32), (4, 1)) for l in range(t.num_layers)}
        kvsim.write_selection(path, "recent_scores", n_c, scores=scores)
        df = kvsim.replay(t, rules=["streaming(sink=0)", f"external(name=recent,file={path})",
                                    f"external(name=recent_scores,file={path},kind=scores)"], budgets=[0.2])
        rows = [df[df.rule == r].drop(columns=["rule", "label"]).reset_index(drop=True) for r in df.rule.unique()]
        pd.testing.assert_frame_equal(rows[0], rows[1])
        pd.testing.assert_frame_equal(rows[0], rows[2])

    def test_info_lists_stored_selections_and_their_budgets(self):
        """kvsim info names each stored selection, its kind and budgets, and the external() spelling."""
        path = os.path.join(self.dir, "with_selections.h5")
        shutil.copyfile(NIAH, path)
        t = kvsim.open_trace(NIAH)  # the sample, not the copy: an open trace holds its file's lock
        n_c = t.meta["context_end"]
        kept = {b: {l: np.ones((4, n_c), np.uint8) for l in range(t.num_layers)} for b in ("cr=0.25", "0.5")}
        kvsim.write_selection(path, "press", n_c, kept=kept, source="SnapKVPress")
        kvsim.write_selection(path, "ranked", n_c, scores={l: np.zeros((4, n_c), np.float32)
                                                           for l in range(t.num_layers)})
        out = kvsim.run("info", path)
        self.assertIn(f"selection   press: kept, mode kv, n_c {n_c}, from SnapKVPress; external(name=press) "
                      f"--budgets ", out)
        line = next(x for x in out.splitlines() if x.startswith("selection   press"))
        self.assertEqual(sorted(line.split("--budgets ")[1].split(",")), ["0.5", "cr=0.25"])
        self.assertIn("selection   ranked: scores, mode kv", out)
        self.assertIn("external(name=ranked) (any budget)", out)

    def test_select_on_arrays_equals_replay(self):
        """kvsim.select on one layer's arrays (no trace) keeps what the replay keeps."""
        t = kvsim.open_trace(NIAH)
        n_c = t.meta["context_end"]
        rules = ["snapkv(window=16)", "keydiff(block=64)", "knorm", "streaming", "critical(snapkv(window=16))",
                 "tova"]
        res = kvsim.replay(NIAH, rules=";".join(rules), budgets=[0.1, 64], layers="1", return_selection=True)
        L = t.layer(1)
        rows = np.flatnonzero(t.q_pos < n_c)
        for rule in rules:
            canon = kvsim._kvsim.canonical_spec(rule)
            got = kvsim.select(rule, L.k[:, :n_c], [0.1, 64], v=L.v[:, :n_c], q=L.q[:, rows], q_pos=t.q_pos[rows],
                               o_proj=L.o_proj, attn_scale=t.meta["attn_scale"])
            for mask, b in zip(got, ("0.1", "64")):
                np.testing.assert_array_equal(mask, res.selection[(canon, b, 1)], f"{rule} at {b}")
        with self.assertRaisesRegex(ValueError, "kvsim.select: v"):
            kvsim.select("knorm", L.k[:, :n_c], [0.1], v=L.v[:, :10])

    def test_errors_are_clean(self):
        def boom(L):
            if L.layer == 2:
                raise ZeroDivisionError("my bug")
            return numpy_knorm(L)
        kvsim.ScoreRule("np_boom", boom)
        with self.assertRaises(kvsim.RuleError) as e:
            kvsim.replay(NIAH, rules="np_boom", budgets=[0.2])
        self.assertIn("rule 'np_boom' on layer 2: my bug", str(e.exception))
        self.assertIsInstance(e.exception.__cause__, ZeroDivisionError)
        kvsim.ScoreRule("np_shape", lambda L: np.zeros((3, L.n_c)))
        with self.assertRaises(kvsim.KvsimError) as e:
            kvsim.replay(NIAH, rules="np_shape", budgets=[0.2])
        self.assertIn("rule 'np_shape' on layer 0: scores: returned shape [3, 2007], expected [4, 2007] or [8, 2007]",
                      str(e.exception))
        kvsim.ScoreRule("np_nan", lambda L: np.full((L.num_kv_heads, L.n_c), np.nan))
        with self.assertRaises(kvsim.KvsimError) as e:
            kvsim.replay(NIAH, rules="np_nan", budgets=[0.2])
        self.assertIn("scores: NaN at [0, 0]", str(e.exception))
        kvsim.ScoreRule("np_text", lambda L: "no")
        with self.assertRaises(kvsim.KvsimError) as e:
            kvsim.replay(NIAH, rules="np_text", budgets=[0.2])
        self.assertIn("must be a real (float, integer or bool) array, got dtype <U2", str(e.exception))
        with self.assertRaises(kvsim.KvsimError) as e:
            kvsim.ScoreRule("snapkv", numpy_knorm)
        self.assertIn("the name of a built-in rule", str(e.exception))
        with self.assertRaises(kvsim.KvsimError) as e:
            kvsim.wrap("ada", kvsim.ScoreRule("np_k2", numpy_knorm), alpah=0.1)
        self.assertIn("unknown parameter 'alpah'", str(e.exception))
        with self.assertRaises(kvsim.KvsimError) as e:
            kvsim.replay(NIAH, rules="snapkv", budgets=["cr=1.5"])
        self.assertIn("a compression ratio must be in [0, 1)", str(e.exception))
        # A replay that failed leaves nothing that looks complete in out=.
        out = os.path.join(self.dir, "failed")
        with self.assertRaises(kvsim.RuleError):
            kvsim.replay(NIAH, rules="np_boom", budgets=[0.2], out=out)
        self.assertFalse(os.path.exists(os.path.join(out, "metrics.csv")))

    def test_gil_released_while_the_engine_runs(self):
        ticks = []
        done = threading.Event()

        def count():
            while not done.is_set():
                ticks.append(time.perf_counter())
                time.sleep(0.001)
        thread = threading.Thread(target=count)
        thread.start()
        try:
            t0 = time.perf_counter()
            kvsim.replay(NIAH, rules="critical(ada(snapkv));h2o;keydiff", budgets=[0.05, 0.1, 0.2, 0.4],
                         nu_cache="off", threads=1)
            t1 = time.perf_counter()
        finally:
            done.set()
            thread.join()
        during = [x for x in ticks if t0 < x < t1]
        # A thread that needs the GIL kept ticking through the replay (~1 tick per ms).
        self.assertGreater(len(during), 0.3 * (t1 - t0) * 1000, f"{len(during)} ticks in {t1 - t0:.2f} s")

    def test_rules_catalogue(self):
        df = kvsim.rules()
        self.assertIn("snapkv", set(df.rule))
        row = df[(df.rule == "critical") & (df.param == "alpha")].iloc[0]
        self.assertEqual(row["default"], "0.5")


if __name__ == "__main__":
    unittest.main()
