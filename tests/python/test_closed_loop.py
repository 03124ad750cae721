"""kvsim-closed-loop: the model re-run with each rule's eviction in its KV cache.

On stories260K (llama2.c numpy backend) and through transformers (the converted stories260K and a
tiny random Qwen2): the full cache gives zero divergence exactly; a rule that keeps everything
equals full; streaming at a small budget diverges; true block-wise KeyDiff with a budget that
covers the prompt equals full; the first layer's attention output change in the teacher-forced
continuation is exactly the offline replay's per-query perturbation (layer 0 sees the same
queries and keys in both); the block-wise process keeps the simulated set at layer 0; the
llama2.c and transformers paths give the same closed-loop numbers; bad requests are refused."""
import json
import os
import re
import subprocess
import unittest

import numpy as np

import dump_testutil as tu

try:
    import pandas as pd
    import torch
    import transformers
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest(f"needs the project .venv ({e.name} missing)")

TOOL = os.path.join(tu.TOOLS_DIR, "kvsim-closed-loop")
RULES = "full;snapkv(window=8);keydiff(block=32);streaming;tova(variant=stepwise)"
PROMPT = ["--niah", "--niah-dir", tu.ESSAYS_DIR, "--niah-length", "300", "--generate", "12"]
KEYDIFF = "keydiff(block=32,anchor=unit,recent=0)"
SNAPKV = "snapkv(window=8,kernel=7,pool=max,agg=mean,gqa=mean,order=pool_then_reduce)"


def closed_loop(*args):
    return subprocess.run([TOOL, *args], capture_output=True, text=True)


def read(folder):
    cl = pd.read_csv(os.path.join(folder, "closed_loop.csv"), dtype={"budget": str})
    table = pd.read_csv(os.path.join(folder, "offline_vs_closed.csv"), dtype={"budget": str})
    with open(os.path.join(folder, "closed_loop.json")) as fh:
        doc = json.load(fh)
    return cl, table, doc


def run_of(table, rule, budget, mode="oneshot"):
    r = table[(table["rule"] == rule) & (table["budget"] == budget) & (table["mode"] == mode)]
    assert len(r) == 1, (rule, budget, mode, len(r))
    return r.iloc[0]


class ClosedLoopStoriesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tu.TempDir()
        cls.dir = cls.tmp.__enter__()
        cls.out = os.path.join(cls.dir, "llama2c")
        r = closed_loop("--model", tu.CHECKPOINT, *PROMPT, "--rules", RULES, "--budgets", "0.05,1.0", "--out", cls.out)
        assert r.returncode == 0, r.stderr
        cls.stdout = r.stdout
        cls.cl, cls.table, cls.doc = read(cls.out)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def assert_equals_full(self, rule, budget, mode="oneshot"):
        g = self.cl[(self.cl["rule"] == rule) & (self.cl["budget"] == budget) & (self.cl["mode"] == mode)]
        self.assertGreater(len(g), 0)
        tok = g[g["layer"] == -1]
        self.assertTrue((tok["kl_next_token"] == 0).all(), (rule, budget, mode))
        self.assertTrue((tok["token_agreement"] == 1).all())
        tf = g[(g["decoding"] == "teacher_forced") & (g["layer"] == -1)]
        np.testing.assert_array_equal(tf["logprob"].dropna(), tf["logprob_full"].dropna())
        lay = g[g["layer"] >= 0]
        self.assertTrue((lay["hidden_drift"] == 0).all() and (lay["attn_out_l1"] == 0).all())

    def test_files(self):
        self.assertEqual(sorted(os.listdir(self.out)), ["closed_loop.csv", "closed_loop.json", "closed_loop.pdf",
                                                        "closed_loop.png", "offline_vs_closed.csv", "replay",
                                                        "trace.h5"])
        with open(os.path.join(self.out, "closed_loop.pdf"), "rb") as fh:
            self.assertEqual(fh.read(5), b"%PDF-")
        for c in ("rule", "budget", "mode", "step", "layer", "kl_next_token", "token_agreement", "hidden_drift"):
            self.assertIn(c, self.cl.columns)
        with open(os.path.join(self.out, "closed_loop.png"), "rb") as fh:
            self.assertEqual(fh.read(8), b"\x89PNG\r\n\x1a\n")
        self.assertEqual(self.doc["context_end"], self.doc["reference"]["n_c"])
        self.assertIn("Spearman(offline pert_l1, closed-loop KL)", self.stdout)
        # continuation: every position from the compression point to the end, teacher forced
        n = self.doc["seq_len"] - self.doc["reference"]["n_c"]
        tf = self.cl[(self.cl["rule"] == "full") & (self.cl["budget"] == "0.05") & (self.cl["layer"] == -1)
                     & (self.cl["decoding"] == "teacher_forced")]
        self.assertEqual(len(tf), n)
        self.assertEqual(set(self.cl["mode"]), {"oneshot", "blockwise", "decode"})

    def test_full_is_exactly_zero(self):
        for b in ("0.05", "1.0"):
            self.assert_equals_full("full", b)

    def test_keep_everything_equals_full(self):
        self.assert_equals_full(SNAPKV, "1.0")
        self.assert_equals_full("streaming(sink=4)", "1.0")
        self.assert_equals_full(KEYDIFF, "1.0")

    def test_true_blockwise_with_budget_covering_the_prompt_equals_full(self):
        self.assert_equals_full(KEYDIFF, "1.0", "blockwise")

    def test_small_budgets_diverge(self):
        for rule, mode in (("streaming(sink=4)", "oneshot"), (SNAPKV, "oneshot"), (KEYDIFF, "blockwise"),
                           ("tova(variant=stepwise)", "decode")):
            r = run_of(self.table, rule, "0.05", mode)
            self.assertGreater(r["kl_mean"], 1e-3, rule)
            self.assertGreater(r["hidden_drift_last"], 1e-3, rule)
            self.assertGreater(r["offline_pert_l1"], 0)

    def test_first_layer_matches_offline_perturbation(self):
        pq = pd.read_csv(os.path.join(self.out, "replay", "metrics_per_query.csv"), dtype={"budget": str})
        for rule in (SNAPKV, "streaming(sink=4)", KEYDIFF):
            a = self.cl[(self.cl["rule"] == rule) & (self.cl["budget"] == "0.05") & (self.cl["layer"] == 0)
                        & (self.cl["mode"] == "oneshot") & (self.cl["decoding"] == "teacher_forced")]
            b = pq[(pq["rule"] == rule) & (pq["budget"] == "0.05") & (pq["layer"] == 0) & (pq["head"] == -1)]
            a, b = a.set_index("position")["attn_out_l1"], b.set_index("query_pos")["pert_l1"]
            self.assertEqual(list(a.index), list(b.index))
            first = self.doc["reference"]["n_c"]
            self.assertEqual(a.index[0], first)
            np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-4, atol=1e-6, err_msg=rule)

    def test_blockwise_keeps_the_simulated_set_at_layer_0(self):
        gap = [g for g in self.doc["keydiff_gap"] if g["budget"] == "0.05"][0]
        self.assertGreaterEqual(gap["jaccard_by_layer"][0], 0.99)  # layer 0 keys do not depend on evictions
        self.assertLess(min(gap["jaccard_by_layer"][1:]), 1.0)  # later layers see evicted hidden states

    def test_correlations_reported(self):
        c = self.doc["correlations"][0]
        self.assertEqual((c["offline"], c["closed"]), ("offline_pert_l1", "kl_mean"))
        self.assertGreater(c["spearman_all"], 0.5)

    def test_report_section(self):
        """kvsim report renders the folder and its rank correlations equal closed_loop.json's."""
        html = os.path.join(self.dir, "report.html")
        r = subprocess.run([os.environ["KVSIM_CLI"], "report", self.out, "--out", html], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("1 closed-loop folder", r.stdout)
        with open(html, encoding="utf-8") as fh:
            text = fh.read()
        for table_id in ("closed1-correlation", "closed1-runs", "closed1-keydiff-gap", 'id="closed1-replay"'):
            self.assertIn(table_id, text)
        start = text.index('id="closed1-correlation"')
        block = text[start:text.index("</table>", start)]
        cells = [float(v) for v in re.findall(r'data-v="([^"]+)"', block)]
        expected = []
        for c in self.doc["correlations"]:
            expected += [c["n"], c["spearman_all"], c["spearman_within_budget_mean"]]
        finite = [(a, b) for a, b in zip(cells, expected) if b is not None]
        self.assertEqual(len(cells), len(expected))
        np.testing.assert_allclose([a for a, _ in finite], [b for _, b in finite], rtol=1e-12)

    def test_refusals(self):
        r = closed_loop("--model", tu.CHECKPOINT, *PROMPT, "--rules", "full", "--out", self.out)
        self.assertEqual(r.returncode, 1)
        self.assertIn("already holds a closed loop", r.stderr)
        for rules, msg in (("think(quant(snapkv,group=8))", "quantized"),
                           ("h2o(variant=stepwise)", "H2O"),
                           ("snapkv(windw=3)", "windw")):
            r = closed_loop("--model", tu.CHECKPOINT, *PROMPT, "--rules", rules, "--out", os.path.join(self.dir, "x"))
            self.assertEqual(r.returncode, 1, rules)
            self.assertIn(msg, r.stderr)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        r = closed_loop("--model", tu.CHECKPOINT, *PROMPT[:-1], "0", "--out", os.path.join(self.dir, "y"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("--generate", r.stderr)


class ClosedLoopTransformersTest(unittest.TestCase):
    """The same closed loop through transformers' attention code."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tu.TempDir()
        cls.dir = cls.tmp.__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def test_converted_stories_matches_llama2c(self):
        hf = os.path.join(self.dir, "stories-hf")
        r = subprocess.run([os.path.join(tu.TOOLS_DIR, "llama2c-to-hf"), tu.CHECKPOINT, hf], capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        tables = {}
        for name, model in (("hf", hf), ("llama2c", tu.CHECKPOINT)):
            out = os.path.join(self.dir, name)
            r = closed_loop("--model", model, *PROMPT, "--rules", "full;snapkv(window=8);keydiff(block=32)", "--budgets", "0.1",
                            "--out", out, "--no-free-run")
            self.assertEqual(r.returncode, 0, r.stderr)
            tables[name] = read(out)[1].set_index(["rule", "budget", "mode"]).sort_index()
        a, b = tables["hf"], tables["llama2c"]
        self.assertEqual(list(a.index), list(b.index))
        for c in ("kl_mean", "hidden_drift_last", "attn_out_l1", "offline_pert_l1"):
            np.testing.assert_allclose(a[c], b[c], rtol=2e-3, atol=1e-7, err_msg=c)
        self.assertTrue((a.loc[("full", "0.1", "oneshot"), ["kl_mean", "hidden_drift_last"]] == 0).all())

    def tiny_qwen2(self):
        """A tiny random Qwen2 (4 query heads over 2 KV heads) and a 96-token prompt."""
        folder = os.path.join(self.dir, "qwen2")
        if not os.path.isdir(folder):
            cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                           max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                                           eos_token_id=2)
            torch.manual_seed(0)
            transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
        return folder, ",".join(str(3 + (7 * i) % 120) for i in range(96))

    def test_batched_and_compacted_runs_equal_single_masked_ones(self):
        # Batches change only float rounding: the same rows to 1e-4 and the same greedy tokens.
        # ada gives its KV heads different counts (padding inside a layer), pyramid its layers
        # different widths (padding across a batch), 1.0 keeps everything (never compacted).
        folder, ids = self.tiny_qwen2()
        rules = "full;snapkv(window=8);ada(snapkv(window=8));pyramid(snapkv(window=8),variant=int);streaming;random"
        outs = {}
        for batch in ("1", "4"):
            outs[batch] = os.path.join(self.dir, f"qwen2-batch{batch}")
            r = closed_loop("--model", folder, "--token-ids", ids, "--generate", "8", "--rules", rules, "--budgets",
                            "0.2,0.5,1.0", "--batch", batch, "--out", outs[batch])
            self.assertEqual(r.returncode, 0, r.stderr)
        (one, _, doc1), (four, _, doc4) = read(outs["1"]), read(outs["4"])
        self.assertEqual(list(one["rule"]), list(four["rule"]))
        for c in ("kl_next_token", "logprob", "hidden_drift", "attn_out_l1"):
            np.testing.assert_allclose(one[c], four[c], rtol=1e-4, atol=1e-6, err_msg=c)
        self.assertEqual([r["free_tokens"] for r in doc1["runs"]], [r["free_tokens"] for r in doc4["runs"]])
        # Dropping evicted entries from the cache equals masking them in place.
        import kvsim
        from kvsim.closed_loop.loop import ClosedLoop, Plan, TraceInfo, build_parser, load_model, offline_kept
        trace = os.path.join(outs["1"], "trace.h5")
        info = TraceInfo(trace, "agnostic")
        model = load_model(build_parser().parse_args(["--model", folder, "--token-ids", ids, "--out", "x"]), info)
        loop = ClosedLoop(model, info, kvsim.select, True, 1)
        offline = kvsim.replay(trace, ["ada(snapkv(window=8))", "streaming"], "0.2", return_selection=True, progress=False)
        for canon in dict.fromkeys(offline.metrics["rule"]):
            plan, kept = Plan(canon), offline_kept(offline, canon, "0.2", info.num_layers)
            state = loop.start(plan, "oneshot", kept)[0]
            self.assertLess(state["cache"].layers[0].keys.shape[2], info.n_c, "nothing was dropped")
            compacted = loop.run(plan, "0.2", "oneshot", kept)
            model.drop_evicted = lambda s: None
            masked = loop.run(plan, "0.2", "oneshot", kept)
            del model.drop_evicted
            self.assertEqual(compacted[1]["free_tokens"], masked[1]["free_tokens"])
            for c in ("kl_next_token", "hidden_drift", "attn_out_l1"):
                np.testing.assert_allclose([r[c] for r in compacted[0]], [r[c] for r in masked[0]], rtol=1e-4,
                                           atol=1e-6, err_msg=(canon, c))

    def test_tiny_random_qwen2(self):
        folder, ids = self.tiny_qwen2()
        out = os.path.join(self.dir, "qwen2-loop")
        r = closed_loop("--model", folder, "--token-ids", ids, "--generate", "8", "--rules",
                        "full;streaming;keydiff(block=16);tova(variant=stepwise)", "--budgets", "0.1,1.0", "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        _, table, _ = read(out)
        for b in ("0.1", "1.0"):
            self.assertEqual(run_of(table, "full", b)["kl_mean"], 0)
        self.assertEqual(run_of(table, "keydiff(block=16,anchor=unit,recent=0)", "1.0", "blockwise")["kl_mean"], 0)
        self.assertGreater(run_of(table, "streaming(sink=4)", "0.1")["kl_mean"], 0)
        self.assertGreater(run_of(table, "tova(variant=stepwise)", "0.1", "decode")["hidden_drift_last"], 0)



class ClosedLoopDecodeTest(unittest.TestCase):
    """--protocol decode in the closed loop (rules doc 1.9): the model runs and every 8 fed tokens
    each layer's cache is cut by the engine's own decode step, from the keys and queries the model
    computed. Before the first cut nothing changed (full start); at the first cut layer 0's keys and
    queries are still the trace's, so its attention output change equals the offline decode replay's
    per-query perturbation at every layer-0 position up to the next cut; rules that undo RoPE get
    the model's (interleaved for llama2.c). ThinK and quant write their rows into the model's cache;
    the oracle reads the full-cache run's next interval and a cross-layer rule keeps the trace's
    plan, both as offline; Quest attends densely until the first cut, then to its pages per query;
    TOVA and H2O step-wise keep their own cache per step from each cut on, as offline."""

    RULES = ("full;snapkv(window=8);ada(snapkv(window=8));streaming;expected;think(snapkv(window=8),ratio=0.25);"
             "quant(snapkv(window=8),group=8,residual=8);oracle;global(snapkv(window=8));quest(page=4,dense_layers=0);"
             "tova(variant=stepwise);h2o(variant=stepwise);think(tova(variant=stepwise),ratio=0.25)")

    @classmethod
    def setUpClass(cls):
        cls.tmp = tu.TempDir()
        cls.dir = cls.tmp.__enter__()
        cls.out = os.path.join(cls.dir, "decode")
        prompt = PROMPT[:-1] + ["40"]
        r = closed_loop("--model", tu.CHECKPOINT, *prompt, "--rules", cls.RULES, "--budgets", "0.25,64",
                        "--protocol", "decode", "--every", "8", "--no-free-run", "--out", cls.out)
        assert r.returncode == 0, r.stderr
        cls.cl, cls.table, cls.doc = read(cls.out)
        cls.off = pd.read_csv(os.path.join(cls.out, "replay", "metrics_per_query.csv"), dtype={"budget": str})

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def test_recorded(self):
        self.assertEqual(self.doc["protocol"], {"name": "decode", "every": 8, "decode_start": "full", "admission": "evict"})
        self.assertEqual(set(self.table["mode"]), {"decode"})
        self.assertEqual(len(self.table), 13 * 2)

    def test_layer0_equals_offline_until_the_second_cut(self):
        n_c = int(self.off["query_pos"].min())
        compared = 0
        for rule in self.table["rule"].unique():
            for b in ("0.25", "64"):
                c = self.cl[(self.cl["rule"] == rule) & (self.cl["budget"] == b) & (self.cl["layer"] >= 0)]
                o = self.off[(self.off["rule"] == rule) & (self.off["budget"] == b) & (self.off["head"] == -1)]
                before = c[c["position"] < n_c + 8]["attn_out_l1"]
                self.assertLess(before.abs().max(), 1e-3, rule)  # float rounding only
                for L in range(n_c + 8, n_c + 24):  # layer 0 sees the trace's keys and queries at both cuts
                    x = c[(c["position"] == L) & (c["layer"] == 0)]["attn_out_l1"].iloc[0]
                    y = o[(o["query_pos"] == L) & (o["layer"] == 0)]["pert_l1"].iloc[0]
                    self.assertLess(abs(x - y), 1e-4 * max(abs(y), 1.0), (rule, b, L))
                    compared += 1
                if rule.startswith(("think", "quant")):  # pruned keys / codes changed layer 0 itself
                    self.assertGreater(c[(c["position"] >= n_c + 8) & (c["layer"] == 0)]["attn_out_l1"].min(), 0, rule)
        self.assertEqual(compared, 13 * 2 * 16)

    def test_errors(self):
        r = closed_loop("--model", tu.CHECKPOINT, *PROMPT, "--rules", "snapkv", "--protocol", "decode", "--every", "0",
                        "--out", os.path.join(self.dir, "bad"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--every", r.stderr)
        r = closed_loop("--model", tu.CHECKPOINT, *PROMPT, "--rules", "snapkv;think(quant(snapkv,group=8))",
                        "--protocol", "decode", "--out", os.path.join(self.dir, "bad2"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("quantized", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "bad2", "trace.h5")))

if __name__ == "__main__":
    unittest.main()


class ClosedLoopQuantTest(unittest.TestCase):
    """quant(...) in the closed loop (rules doc 2.33): the model runs with the kept span's keys and
    values replaced by kvsim.quantize's rows, the codes the replay measures, so layer 0's attention
    output change equals the offline per-query perturbation; 16 bits equals full to the last bit.
    ThinK (2.12) likewise, with the kept span's pruned key channels zeroed in the model's cache
    and the keys from n_c on whole; Quest (2.15) with every fed query attending to its own pages
    (state["step_mask"]), nothing evicted."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tu.TempDir()
        cls.dir = cls.tmp.__enter__()
        cls.out = os.path.join(cls.dir, "quant")
        rules = ("full;quant(full,k=16,v=16,group=8);quant(full,k=4,v=4,group=8);quant(snapkv(window=8),group=8);"
                 "think(snapkv(window=8),ratio=0.25);quest(page=4,dense_layers=0)")
        r = closed_loop("--model", tu.CHECKPOINT, *PROMPT, "--rules", rules, "--budgets", "0.25", "--out", cls.out)
        assert r.returncode == 0, r.stderr
        cls.cl, cls.table, cls.doc = read(cls.out)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def rows(self, prefix):
        return self.cl[self.cl["rule"].str.startswith(prefix) & (self.cl["budget"] == "0.25")]

    def test_sixteen_bits_equals_full(self):
        g = self.rows("quant(full,scheme=asym,k=16,v=16")
        tok = g[g["layer"] == -1]
        self.assertGreater(len(tok), 0)
        self.assertTrue((tok["kl_next_token"] == 0).all())
        self.assertTrue((g[g["layer"] >= 0]["attn_out_l1"] == 0).all())

    def test_first_layer_matches_offline_perturbation(self):
        pq = pd.read_csv(os.path.join(self.out, "replay", "metrics_per_query.csv"), dtype={"budget": str})
        for prefix in ("quant(full,scheme=asym,k=4,v=4", "quant(snapkv(", "think(", "quest("):
            a = self.rows(prefix)
            a = a[(a["layer"] == 0) & (a["mode"] == "oneshot") & (a["decoding"] == "teacher_forced")]
            b = pq[pq["rule"].str.startswith(prefix) & (pq["budget"] == "0.25") & (pq["layer"] == 0) & (pq["head"] == -1)]
            a, b = a.set_index("position")["attn_out_l1"], b.set_index("query_pos")["pert_l1"]
            self.assertGreater(len(a), 0)
            self.assertEqual(list(a.index), list(b.index))
            self.assertGreater(float(b.min()), 0.0)
            np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-4, atol=1e-6, err_msg=prefix)

    def test_quantization_diverges(self):
        r = run_of(self.table, self.rows("quant(full,scheme=asym,k=4,v=4")["rule"].iloc[0], "0.25")
        self.assertGreater(r["kl_mean"], 0)
