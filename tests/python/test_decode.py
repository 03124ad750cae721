"""The decode protocol from Python (rules doc 1.9): kvsim.replay(protocol="decode") and
kvsim.decode_masks, and kvpress's own DecodingPress against it (kvsim.decode_parity) on the
stories260K sample trace: Knorm, TOVA and KeyDiff keep kvsim's caches exactly; StreamingLLM and
SnapKV (whose next compression reads kvpress's cache order) exactly, up to ties at a cut, once
kvpress's cache is kept in position order; a deliberately wrong interval on kvsim's side breaks it.
"""
import os
import tempfile
import unittest

import numpy as np

import dump_testutil as tu

try:
    import kvsim
    import kvsim.decode_parity as dp
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest(f"needs the kvsim module in the project .venv ({e.name} missing; bash tools/build.sh)")

NIAH = os.path.join(tu.TRACES_DIR, "niah_stories260k.h5")


class DecodeApi(unittest.TestCase):
    def test_replay_and_masks(self):
        df = kvsim.replay(NIAH, rules="snapkv;knorm", budgets=[0.1, 256], protocol="decode", every=8,
                          decode_start="compressed", threads=2)
        proto = df.attrs["summary"]["protocol"]
        self.assertEqual((proto["name"], proto["every"], proto["decode_start"]), ("decode", 8, "compressed"))
        b = df.attrs["summary"]["rules"][0]["budgets"][1]
        self.assertGreater(b["decode_compressions"], 0)
        self.assertLess(abs(b["decode_cache_tokens_mean"] - 256 - 3.5), 2)  # 256 + the tokens since the last cut
        self.assertIn("--protocol decode", df.attrs["summary"]["command"])
        with tempfile.TemporaryDirectory() as d:  # the report's section: the error over the generation
            kvsim.replay(NIAH, rules="snapkv;knorm", budgets=[0.1], protocol="decode", every=8, per_query=True, out=d)
            page = tu.render_report(d)
            self.assertIn("Compression while generating", page)
            self.assertIn("last / first quarter", page)
        m = kvsim.decode_masks(NIAH, "knorm", "256", layer=2, every=8)
        masks, pos = m["masks"], m["positions"]
        self.assertEqual(masks.shape[:2], (4, len(pos)))
        for qi, t in enumerate(pos):  # every query holds itself, nothing after itself
            self.assertTrue(masks[:, qi, t].all())
            self.assertFalse(masks[:, qi, t + 1:].any())
        held = masks[:, 1:, :] & ~masks[:, :-1, :]  # tokens a query holds that the previous one did not
        held[:, np.arange(len(pos) - 1), pos[1:]] = False  # its own token
        self.assertFalse(held.any())  # an evicted token never returns
        with self.assertRaises(kvsim.KvsimError):
            kvsim.decode_masks(NIAH, "knorm", "256", every=0)


    def test_quantized_cache_bytes(self):
        """cache_bytes of quant(...) under the decode protocol: the context tokens the last query
        still holds, at 2-bit codes (plus scales) where quantized, below float16's 4 head_dim."""
        df = kvsim.replay(NIAH, rules="snapkv;quant(snapkv,group=8,residual=16)", budgets=[0.25], protocol="decode",
                          every=8, threads=2)
        m = df[(df["head"] == -1) & (df["eval"] == "queries")]
        q, s = (m[m["rule"].str.startswith(x)] for x in ("quant", "snapkv("))
        self.assertTrue((q["kept_tokens"] > 400).all())
        self.assertTrue((s["cache_bytes"] == 4 * 8 * s["kept_tokens"]).all())
        self.assertTrue((q["cache_bytes"] < 0.5 * 4 * 8 * q["kept_tokens"]).all())

    def test_cross_layer_rule_keeps_its_plan(self):
        """decode_masks of a cross-layer rule plans over every layer of the trace first (as the
        replay does); each cut scales the plan, so the heads' caches keep its order."""
        plan = kvsim._kvsim._decode_plan(NIAH, "global(snapkv)", "0.25")
        self.assertIsNone(kvsim._kvsim._decode_plan(NIAH, "snapkv", "0.25"))
        self.assertEqual(sorted(plan), list(range(5)))
        r = kvsim.decode_masks(NIAH, "global(snapkv)", "0.25", layer=2, every=8)
        held = r["masks"][:, -1].sum(axis=1)
        self.assertEqual(list(np.argsort(held)), list(np.argsort(plan[2])))
        self.assertGreater(held.max() - held.min(), 100)  # uneven heads, as planned


class LongGeneration(unittest.TestCase):
    """stories260K at its limit (512 positions: a 102-token prompt, 400 generated): every rule of the
    default set and a quantized cache replay under the decode protocol, cut every 64 tokens; full is
    exactly zero, every query has its row, and the cache holds the budget (and its bytes shrink)."""

    def test_default_rules_over_a_long_generation(self):
        with tempfile.TemporaryDirectory() as d:
            prompt = os.path.join(d, "p.txt")
            with open(prompt, "w") as f:
                f.write("Once upon a time, there was a little girl named Lily. She liked to play in the park with her "
                        "dog. One day, Lily saw a big red ball under a tree. She ran to the tree and picked up the "
                        "ball. Her dog was happy and they played all day. When the sun went down, they went home.")
            trace = os.path.join(d, "long.h5")
            r = tu.run_dump("--model", tu.CHECKPOINT, "--prompt", prompt, "--generate", "400", "--out", trace)
            self.assertEqual(r.returncode, 0, r.stderr)
            rules = kvsim._kvsim.expand_rules("default") + ["quant(snapkv,group=8,residual=16)"]
            res = kvsim.replay(trace, rules=rules, budgets=[0.25, 64], protocol="decode", every=64,
                               decode_start="full", per_query=True, threads=2)
            pq = res.per_query
            layer_rows = pq[(pq["head"] == -1) & (pq["eval"] == "queries")]
            n_eval = res.summary["protocol"]["n_eval_queries"]
            self.assertGreaterEqual(n_eval, 400)
            self.assertEqual(len(layer_rows), len(rules) * 2 * 5 * n_eval)
            self.assertTrue((layer_rows[layer_rows["rule"] == "full"]["pert_l1"] == 0).all())
            for rule in res.summary["rules"]:
                for b in rule["budgets"]:
                    if rule["spec"] == "full":
                        continue
                    self.assertGreater(b["decode_compressions"], 0, rule["spec"])
                    if b["budget"] == "64" and not rule["spec"].startswith(("quest", "chunkkv")):
                        # 64 after each cut, up to 63 tokens since: about 64 + 32 held on average
                        self.assertLess(abs(b["decode_cache_tokens_mean"] - 96), 16, rule["spec"])
            m = res.metrics[(res.metrics["head"] == -1) & (res.metrics["eval"] == "queries")]
            for spec in ("think", "quant"):
                rows = m[m["rule"].str.startswith(spec)]
                self.assertEqual(len(rows), 2 * 5, spec)
                self.assertTrue((rows["pert_l1"] > 0).all(), spec)
                self.assertTrue((rows["pert_l1"] <= rows["bound_critical"]).all(), spec)



class DecodingPressParity(unittest.TestCase):
    def test_against_kvpress(self):
        try:
            import kvpress  # noqa: F401
        except ImportError:
            self.skipTest("kvpress is not installed in the project environment")
        rows = []
        for order in (False, True):
            rows += dp.decode_parity(NIAH, every=16, targets=(128, "cr=0.9"), window=8, layers=[0, 3],
                                     position_order=order)
        for r in rows:
            self.assertEqual(r["error"], "", r)
            self.assertGreater(r["queries"], 0)
        self.assertTrue(dp.decode_parity_holds(rows), dp.format_rows(rows))
        by = {(r["label"], r["target"], r["cache_order"]): r for r in rows}
        for target in ("128", "cr=0.9"):
            for label in ("Knorm", "TOVA", "KeyDiff"):
                self.assertEqual(by[label, target, "kvpress"]["differing_masks"], 0)
            self.assertEqual(by["StreamingLLM", target, "position"]["differing_masks"], 0)
            self.assertGreater(by["StreamingLLM", target, "kvpress"]["differing_masks"], 0)  # kvpress's top-k order

    def test_a_wrong_interval_is_caught(self):
        try:
            import kvpress  # noqa: F401
        except ImportError:
            self.skipTest("kvpress is not installed in the project environment")
        import h5py
        from kvsim.parity import trace_meta
        mine = kvsim.decode_masks(NIAH, "knorm", "128", layer=1, every=12)  # kvsim at 12, kvpress at 16
        with h5py.File(NIAH, "r") as f:
            theirs, _ = dp.kvpress_decode_caches(f, trace_meta(f, NIAH), 1, int(mine["positions"][0]), "KnormPress()",
                                                 16, 128, 16, mine["positions"])
        differ = sum(len(np.setxor1d(np.flatnonzero(mine["masks"][g, qi, :t + 1]), theirs[int(t)][g])) > 0
                     for qi, t in enumerate(mine["positions"]) for g in range(mine["masks"].shape[0]))
        self.assertGreater(differ, 0)


if __name__ == "__main__":
    unittest.main()
