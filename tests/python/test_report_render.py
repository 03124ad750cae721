"""kvsim replay + analyze + prefill + report on a real sample trace: every number in the HTML
tables is recomputed here from the CSV files with pandas, and the page is rendered in a real
browser (Debian chromium, headless) to check it draws."""
# Helpers (also used by test_notebooks.py): run kvsim, read the report tables back.
import html.parser
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import numpy as np
import pandas as pd

import dump_testutil as tu

SOURCE_DIR = os.environ.get("KVSIM_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))


def kvsim_cli():
    cli = os.environ.get("KVSIM_CLI") or os.path.join(SOURCE_DIR, "build", "tools", "kvsim")
    if not os.path.exists(cli):
        raise unittest.SkipTest(f"kvsim binary not found at {cli} (set KVSIM_CLI)")
    return cli


def sample_trace(name="niah_stories260k.h5"):
    path = os.path.join(SOURCE_DIR, "traces", name)
    if not os.path.exists(path):
        raise unittest.SkipTest(f"sample trace {path} is missing")
    return path


def run_kvsim(*args):
    res = subprocess.run([kvsim_cli(), *args], capture_output=True, text=True,
                         env={**os.environ, "KVSIM_PROGRESS": "0"})
    if res.returncode != 0:
        raise AssertionError(f"kvsim {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    return res.stdout


class _TableParser(html.parser.HTMLParser):
    """Collects every <table id=...>: header texts and rows of cells. A cell's value is its
    data-v (numbers, full precision), else its data-full (rule specs), else its text."""

    def __init__(self):
        super().__init__()
        self.tables, self._table, self._cell, self._row, self._in_th = {}, None, None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "id" in a:
            self._table = {"headers": [], "rows": []}
            self.tables[a["id"]] = self._table
        elif self._table is not None and tag == "tr":
            self._row = []
        elif self._table is not None and tag in ("td", "th"):
            self._in_th = tag == "th"
            self._cell = {"text": "", "v": a.get("data-v"), "full": a.get("data-full")}

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    def handle_endtag(self, tag):
        if self._table is None:
            return
        if tag in ("td", "th") and self._cell is not None:
            c = self._cell
            if self._in_th:
                self._table["headers"].append(c["text"])
            else:
                self._row.append(float(c["v"]) if c["v"] is not None else (c["full"] or c["text"]))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self._table["rows"].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


def read_tables(path):
    """{table id: list of dicts header -> value}"""
    p = _TableParser()
    with open(path, encoding="utf-8") as f:
        p.feed(f.read())
    return {tid: [dict(zip(t["headers"], r)) for r in t["rows"]] for tid, t in p.tables.items()}


def chromium_screenshot(html_path, png_path, height=3000):
    """Renders a page with Debian chromium headless; returns False when chromium is missing."""
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if chromium is None:
        return False
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", f"--screenshot={png_path}", f"--window-size=1400,{height}",
                        "file://" + os.path.abspath(html_path)],
                       capture_output=True, timeout=180, check=False)
    return True


RULES = "snapkv;critical(snapkv);ada(snapkv);critical(ada(snapkv));tova;oracle_greedy"
BUDGETS = "0.05,0.2"


def close(a, b, rel=1e-9, abs_=1e-12):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(a - b) <= abs_ + rel * abs(b)


class ReportRenderTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        t = cls.tmp.name
        trace = sample_trace()
        cls.replay, cls.analyze, cls.prefill = (os.path.join(t, d) for d in ("replay", "analyze", "prefill"))
        run_kvsim("replay", trace, "--rules", RULES, "--budgets", BUDGETS, "--out", cls.replay)
        run_kvsim("analyze", trace, "--out", cls.analyze, "--top", "0.1,32")
        run_kvsim("prefill", trace, "--out", cls.prefill, "--segment", "128", "--block", "16", "--budget", "256",
                  "--threshold", "256", "--fusion", "both", "--locality-anchors", "4")
        cls.html = os.path.join(t, "report.html")
        cls.stdout = run_kvsim("report", cls.replay, cls.analyze, "--prefill", cls.prefill, "--out", cls.html)
        cls.tables = read_tables(cls.html)
        m = pd.read_csv(os.path.join(cls.replay, "metrics.csv"), keep_default_na=False, na_values=["nan"])
        m["budget"] = m["budget"].astype(str)
        cls.m = m[m["eval"] == "queries"]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_page_is_self_contained(self):
        with open(self.html, encoding="utf-8") as f:
            text = f.read()
        self.assertEqual(tu.partial_files(self.html), [])
        self.assertNotIn("<script", text)
        self.assertNotIn("https://", text)
        self.assertEqual(set(re.findall(r"http://[^\"' ]+", text)), {"http://www.w3.org/2000/svg"})
        self.assertGreater(text.count("<svg"), 10)
        self.assertIn("wrote " + self.html, self.stdout)

    def test_rule_budget_table_matches_metrics_and_summary(self):
        rows = self.tables["run1-rule-budget"]
        layer_rows = self.m[self.m["head"] == -1]
        with open(os.path.join(self.replay, "summary.json")) as f:
            summary = json.load(f)
        from_summary = {(r["spec"], b["budget"]): b for r in summary["rules"] for b in r["budgets"]}
        self.assertEqual(len(rows), layer_rows.groupby(["rule", "budget"]).ngroups)
        for r in rows:
            g = layer_rows[(layer_rows["rule"] == r["rule"]) & (layer_rows["budget"] == r["budget"])]
            self.assertEqual(r["layers"], len(g))
            for col in ("budget_tokens", "kept_tokens", "retained_mass", "pert_l1", "rel_pert_l1", "bound_ada",
                        "bound_critical"):
                self.assertTrue(close(r[col], g[col].mean()), (r["rule"], r["budget"], col, r[col], g[col].mean()))
            s = from_summary[(r["rule"], r["budget"])]
            self.assertTrue(close(r["pert_l1"], s["pert_l1_mean"], rel=1e-6), (r["rule"], r["budget"]))

    def test_critical_win_rates_match_metrics(self):
        heads = self.m[self.m["head"] >= 0].set_index(["rule", "budget", "layer", "head"])["pert_l1"]
        rows = self.tables["run1-critical-total"]
        self.assertEqual(len(rows), 2 * len(BUDGETS.split(",")))  # critical(snapkv), critical(ada(snapkv))
        for r in rows:
            self.assertTrue(r["rule"].startswith("critical(" + r["base"] + ","))
            a = heads.xs((r["rule"], r["budget"]), level=["rule", "budget"])
            b = heads.xs((r["base"], r["budget"]), level=["rule", "budget"])
            a, b = a.align(b, join="inner")
            self.assertEqual(r["heads"], len(a))
            self.assertEqual(r["wins"], int((a < b).sum()))
            self.assertEqual(r["ties"], int((a == b).sum()))
            self.assertTrue(close(r["win rate"], (a < b).mean()))
        per_layer = self.tables["run1-critical-layers"]
        layers = self.m[self.m["head"] == -1].set_index(["rule", "budget", "layer"])["pert_l1"]
        cum = {}
        for r in per_layer:
            key = (r["rule"], r["budget"])
            diff = layers[(r["base"], r["budget"], int(r["layer"]))] - layers[(r["rule"], r["budget"], int(r["layer"]))]
            cum[key] = cum.get(key, 0.0) + diff
            self.assertTrue(close(r["cumulative advantage"], cum[key], rel=1e-9, abs_=1e-12))

    def test_optimum_ratios_match_metrics(self):
        """Ratio to oracle_greedy (rules doc 2.19) recomputed from the layer rows."""
        rows = self.tables["run1-optimum-ratio"]
        layers = self.m[self.m["head"] == -1].set_index(["rule", "budget", "layer"])
        greedy = "oracle_greedy(alloc=layer,gqa=kv,step=0.02)"
        self.assertEqual(len(rows), len(RULES.split(";")) * len(BUDGETS.split(",")))
        for r in rows:
            a = layers.xs((r["rule"], r["budget"]), level=["rule", "budget"])
            b = layers.xs((greedy, r["budget"]), level=["rule", "budget"])
            self.assertEqual(r["layers"], len(a))
            self.assertTrue(close(r["ratio pert_l2"], a["pert_l2"].mean() / b["pert_l2"].mean()))
            self.assertTrue(close(r["ratio pert_l1"], a["pert_l1"].mean() / b["pert_l1"].mean()))
            self.assertTrue(close(r["median layer ratio pert_l2"], (a["pert_l2"] / b["pert_l2"]).median()))
            self.assertEqual(r["layers below"], int((a["pert_l2"] < b["pert_l2"]).sum()))
            if r["rule"] == greedy:
                self.assertEqual(r["ratio pert_l2"], 1.0)
            else:  # the greedy descent beats every rule here on its own objective's norm
                self.assertGreater(r["ratio pert_l2"], 1.0, r)

    def test_budget_free_heads_match_metrics(self):
        """Per-head budget-free table: each head's rel_pert_l1 mean over its kept-fraction range
        (trapezoids), recomputed from the head rows; per rule median, p90, max and the worst head."""
        rows = self.tables["run1-budget-free-heads"]
        with open(os.path.join(self.replay, "summary.json")) as f:
            n_c = json.load(f)["protocol"]["n_c"]
        heads = self.m[self.m["head"] >= 0]
        self.assertEqual(len(rows), len(RULES.split(";")))
        for r in rows:
            aucs = []
            for (layer, head), g in heads[heads["rule"] == r["rule"]].groupby(["layer", "head"]):
                pts = g.assign(x=g["kept_tokens"] / n_c).groupby("x")["rel_pert_l1"].mean().sort_index()
                x, y = pts.index.to_numpy(), pts.to_numpy()
                aucs.append((float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0])), layer, head))
            v = np.array([a[0] for a in aucs])
            self.assertEqual(r["heads"], len(v))
            self.assertTrue(close(r["median"], float(np.quantile(v, 0.5)), rel=1e-9))
            self.assertTrue(close(r["p90"], float(np.quantile(v, 0.9)), rel=1e-9))
            worst = max(aucs)
            self.assertTrue(close(r["max"], worst[0], rel=1e-9))
            self.assertEqual((r["worst layer"], r["worst head"]), (worst[1], worst[2]))

    def test_ada_effect_matches_metrics(self):
        rows = self.tables["run1-ada-layers"]
        self.assertEqual(len(rows), 2 * 5)  # ada(snapkv) at two budgets x 5 layers
        for r in rows:
            def sel(rule, head_rows):
                g = self.m[(self.m["rule"] == rule) & (self.m["budget"] == r["budget"]) & (self.m["layer"] == r["layer"])]
                return g[g["head"] >= 0] if head_rows else g[g["head"] == -1].iloc[0]
            self.assertTrue(close(r["ΣF uniform"], sel(r["base"], True)["retained_mass"].sum()))
            self.assertTrue(close(r["ΣF adaptive"], sel(r["rule"], True)["retained_mass"].sum()))
            self.assertTrue(close(r["bound uniform"], sel(r["base"], False)["bound_ada"]))
            self.assertTrue(close(r["bound adaptive"], sel(r["rule"], False)["bound_ada"]))

    def test_tightness_matches_metrics_and_bounds_hold(self):
        heads = self.m[self.m["head"] >= 0]
        for r in self.tables["run1-tightness"]:
            g = heads[(heads["layer"] == r["layer"]) & (heads["bound_critical"] > 0)]
            ratio = g["pert_l1"] / g["bound_critical"]
            self.assertEqual(r["n (θ)"], len(g))
            self.assertTrue(close(r["median /θ"], float(np.median(ratio))))
            self.assertTrue(close(r["max /θ"], ratio.max()))
            self.assertEqual(r["rows over θ"], 0)  # CriticalKV's theta bounds the measured perturbation
            self.assertEqual(r["rows over Ada"], 0)

    def test_keydiff_and_prefill_tables_match_their_csvs(self):
        ks = pd.read_csv(os.path.join(self.analyze, "key_stats.csv"))
        rows = self.tables["keydiff1-layers"]
        self.assertEqual(len(rows), ks.groupby(["eval", "layer"]).ngroups)
        for r in rows:
            g = ks[(ks["eval"] == r["eval"]) & (ks["layer"] == r["layer"])]
            self.assertTrue(close(r["spearman mean"], g["spearman"].mean()))
            self.assertEqual(r["heads with ρ > 0"], int((g["spearman"] > 0).sum()))
        rec = pd.read_csv(os.path.join(self.analyze, "key_recall.csv"), dtype={"top": str})
        for r in self.tables["keydiff1-recall"]:
            g = rec[(rec["eval"] == r["eval"]) & (rec["layer"] == r["layer"]) & (rec["top"] == r["top"])]
            self.assertTrue(close(r["recall mean"], g["recall"].mean()))
        pm = pd.read_csv(os.path.join(self.prefill, "metrics.csv"))
        pm = pm[pm["head"] == -1].set_index(["layer", "fusion"])
        for r in self.tables["prefill1-layers"]:
            x = pm.loc[(int(r["layer"]), r["fusion"])]
            if r["block_recall"] == "dense":
                self.assertTrue(math.isnan(x["block_recall"]))
            else:
                self.assertTrue(close(r["block_recall"], x["block_recall"]))
        loc = pd.read_csv(os.path.join(self.prefill, "locality.csv"))
        loc = loc[loc["pairs"] > 0]
        for r in self.tables["prefill1-locality"]:
            g = loc[(loc["layer"] == r["layer"]) & (loc["delta"] == 1)]
            self.assertTrue(close(r["J(1)"], g["jaccard"].mean()))

    def test_renders_in_chromium(self):
        png = os.path.join(self.tmp.name, "report.png")
        if not chromium_screenshot(self.html, png):
            self.skipTest("chromium is not installed (tools/install-deps.sh installs it)")
        self.assertTrue(os.path.exists(png), "chromium wrote no screenshot")
        import matplotlib.image
        img = matplotlib.image.imread(png)
        self.assertEqual(img.shape[1], 1400)
        gray = img[..., :3].mean(axis=2)
        self.assertGreater(float(gray.std()), 0.05, "screenshot is blank")
        # Plot colours are drawn: some strongly coloured pixels (not only black text on white).
        sat = img[..., :3].max(axis=2) - img[..., :3].min(axis=2)
        self.assertGreater(float((sat > 0.3).mean()), 0.002)


if __name__ == "__main__":
    unittest.main()
