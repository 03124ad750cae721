"""kvsim.write_trace: tensors captured by another tool become a trace that replays, equal to what
was given; bad tensors raise KvsimError naming the field and leave no file; a foreign HDF5 file
is answered with one line, "not a kvsim trace"."""
import os
import tempfile
import unittest

import h5py
import numpy as np

import kvsim

L, H, HKV, D, S, NQ = 2, 4, 2, 8, 96, 24


def tensors(seed=0):
    rng = np.random.default_rng(seed)
    return dict(q=rng.standard_normal((L, H, NQ, D)).astype(np.float32),
                k=rng.standard_normal((L, HKV, S, D)).astype(np.float32),
                v=rng.standard_normal((L, HKV, S, D)).astype(np.float32),
                o_proj=(rng.standard_normal((L, 16, H * D)) / 8).astype(np.float32),
                q_positions=np.arange(S - NQ, S),
                segment=["context"] * 80 + ["question"] * 8 + ["generated"] * 8,
                rope_theta=10000.0)


class WriteTraceTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="kvsim_write_trace_")
        self.addCleanup(self.tmp.cleanup)

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def test_written_tensors_replay_and_read_back_equal(self):
        x = tensors()
        p = kvsim.write_trace(self.path("t.h5"), model="my-capture", **x)
        t = kvsim.open_trace(p)
        self.assertEqual(t.meta["model"], "my-capture")
        self.assertEqual((t.meta["num_heads"], t.meta["num_kv_heads"], t.meta["hidden_size"]), (H, HKV, 16))
        self.assertEqual(t.meta["prefill_len"], 88)
        for l in range(L):
            layer = t.layer(l)
            np.testing.assert_array_equal(layer.q, x["q"][l])
            np.testing.assert_array_equal(layer.k, x["k"][l])
            np.testing.assert_array_equal(layer.o_proj, x["o_proj"][l])
        df = kvsim.replay(t, rules="snapkv(window=8);streaming", budgets=[0.25])
        self.assertGreater(len(df), 0)
        self.assertTrue(np.isfinite(df["pert_l1"]).all())
        self.assertEqual(os.listdir(self.tmp.name), ["t.h5"])

    def test_bad_tensors_name_the_field_and_leave_no_file(self):
        nan = tensors()
        nan["k"][1, 0, 5, 3] = np.nan
        shape = tensors()
        shape["v"] = shape["v"][:, :, :50]
        unsorted = tensors()
        unsorted["q_positions"] = unsorted["q_positions"][::-1]
        segments = tensors()
        segments["segment"] = ["generated"] * 8 + ["context"] * 88  # decreasing: refused by the validator
        for name, x, field in (("nan", nan, "/layers/1/k"), ("shape", shape, "/layers/0/v"),
                               ("unsorted", unsorted, "--queries"), ("segments", segments, "segment")):
            with self.subTest(name):
                with self.assertRaises(kvsim.KvsimError) as cm:
                    kvsim.write_trace(self.path(f"{name}.h5"), **x)
                self.assertIn(field, str(cm.exception))
                self.assertEqual(len(str(cm.exception).splitlines()), 1, str(cm.exception))
        self.assertEqual(os.listdir(self.tmp.name), [])

    def test_outputs_given_are_checked_against_kvsims_attention(self):
        x = tensors(1)
        q, k, v = x["q"], x["k"], x["v"]
        G = H // HKV
        o = np.empty_like(q)
        for l in range(L):  # full causal attention of the stored queries, float64
            for h in range(H):
                for i, t in enumerate(x["q_positions"]):
                    z = k[l, h // G, :t + 1].astype(np.float64) @ q[l, h, i] / np.sqrt(D)
                    a = np.exp(z - z.max())
                    o[l, h, i] = (a / a.sum()) @ v[l, h // G, :t + 1]
        kvsim.write_trace(self.path("good.h5"), o=o, **x)
        bad = o.copy()
        bad[1, 2] *= 1.01  # 1% off in one head of layer 1: a wrong scale or RoPE looks like this
        with self.assertRaises(kvsim.KvsimError) as cm:
            kvsim.write_trace(self.path("bad.h5"), o=bad, **x)
        self.assertIn("/layers/1/o: not reproduced by kvsim's full attention", str(cm.exception))
        self.assertEqual(sorted(os.listdir(self.tmp.name)), ["good.h5"])

    def test_a_foreign_hdf5_file_is_one_line(self):
        p = self.path("foreign.h5")
        with h5py.File(p, "w") as f:
            f["activations"] = np.zeros(3)
        with self.assertRaises(kvsim.KvsimError) as cm:
            kvsim.open_trace(p)
        self.assertIn("not a kvsim trace (see traces/README.md)", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
