"""The decode protocol from Python (rules doc 1.9): kvsim.replay(protocol="decode") and
kvsim.decode_masks, and kvpress's own DecodingPress against it (kvsim.decode_parity) on the
stories260K sample trace: Knorm, TOVA and KeyDiff keep kvsim's caches exactly; StreamingLLM and
SnapKV (whose next compression reads kvpress's cache order) exactly, up to ties at a cut, once
kvpress's cache is kept in position order; a deliberately wrong interval on kvsim's side breaks it.
"""
import os
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


class DecodingPressParity(unittest.TestCase):
    def test_against_kvpress(self):
        try:
            import kvpress  # noqa: F401
        except ImportError:
            self.skipTest("kvpress is not installed in the project environment")
        rows = []
        for order in (False, True):
            rows += dp.decode_parity(NIAH, every=16, targets=(128,), window=8, layers=[0, 3], position_order=order)
        for r in rows:
            self.assertEqual(r["error"], "", r)
            self.assertGreater(r["queries"], 0)
        self.assertTrue(dp.decode_parity_holds(rows), dp.format_rows(rows))
        by = {(r["label"], r["cache_order"]): r for r in rows}
        for label in ("Knorm", "TOVA", "KeyDiff"):
            self.assertEqual(by[label, "kvpress"]["differing_masks"], 0)
        self.assertEqual(by["StreamingLLM", "position"]["differing_masks"], 0)
        self.assertGreater(by["StreamingLLM", "kvpress"]["differing_masks"], 0)  # kvpress's top-k order

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
