"""Traces written by `kvsim synth` read back with h5py: every dataset and attribute has the
documented shape and type, and float16/bfloat16 traces decode to the float32 trace's values
(same seed) within their precision."""
import os
import subprocess
import tempfile
import unittest

import h5py
import numpy as np

CLI = os.environ.get("KVSIM_CLI", "kvsim")
SHAPE = ["--layers", "2", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--hidden", "32",
         "--seq-len", "300", "--question-len", "12", "--gen-len", "6", "--window", "40", "--seed", "3"]


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


class H5pyReadback(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.paths = {}
        for dtype in ("float32", "float16", "bfloat16"):
            path = os.path.join(cls.tmp.name, dtype + ".h5")
            subprocess.run([CLI, "synth", "--out", path, "--dtype", dtype] + SHAPE, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, KVSIM_PROGRESS="0"))
            cls.paths[dtype] = path

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_root_attributes(self):
        with h5py.File(self.paths["float16"], "r") as f:
            a = f.attrs
            self.assertEqual(a["format"], "kvsim-trace")  # variable-length UTF-8 -> str
            self.assertIsInstance(a["model"], str)
            self.assertIsInstance(a["source"], str)
            self.assertEqual(int(a["version"]), 2)
            self.assertEqual((int(a["num_layers"]), int(a["num_heads"]), int(a["num_kv_heads"]),
                              int(a["head_dim"]), int(a["hidden_size"])), (2, 4, 2, 16, 32))
            self.assertEqual(a["rope_style"], "half")
            self.assertEqual(float(a["rope_theta"]), 500000.0)
            self.assertAlmostEqual(float(a["attn_scale"]), 0.25, places=15)
            self.assertEqual(int(a["prefill_len"]), 294)

    def test_positions(self):
        with h5py.File(self.paths["float32"], "r") as f:
            ids, seg, qpos = f["tokens/input_ids"], f["tokens/segment"], f["q_pos"]
            self.assertEqual((ids.shape, ids.dtype), ((300,), np.int32))
            self.assertEqual((seg.shape, seg.dtype), ((300,), np.uint8))
            s = seg[:]
            self.assertTrue((s[:282] == 0).all() and (s[282:294] == 1).all() and (s[294:] == 2).all())
            self.assertEqual(qpos.dtype, np.int64)
            self.assertEqual(list(qpos[:]), list(range(242, 300)))
            needle = f["spans/needle"][:]
            self.assertEqual(needle.dtype, np.int64)
            self.assertTrue(0 <= needle[0] < needle[1] <= 242)
            self.assertEqual(list(f["spans/question"][:]), [282, 294])

    def test_layer_shapes_and_types(self):
        expect = {"q": (4, 58, 16), "k": (2, 300, 16), "v": (2, 300, 16), "o_proj": (32, 64)}
        for dtype, np_type in (("float32", np.float32), ("float16", np.float16), ("bfloat16", np.uint16)):
            with h5py.File(self.paths[dtype], "r") as f:
                self.assertEqual(sorted(f["layers"].keys()), ["0", "1"])
                for l in ("0", "1"):
                    for name, shape in expect.items():
                        ds = f["layers"][l][name]
                        self.assertEqual(ds.shape, shape, (dtype, l, name))
                        self.assertEqual(ds.dtype, np_type, (dtype, l, name))
                        if dtype == "bfloat16":
                            self.assertEqual(ds.attrs["dtype"], "bfloat16")
                        else:
                            self.assertNotIn("dtype", ds.attrs)
                        if name != "o_proj":
                            self.assertEqual(ds.chunks, (1, min(shape[1], 1024), 16))

    def test_narrow_values_match_float32(self):
        with h5py.File(self.paths["float32"], "r") as f32, h5py.File(self.paths["float16"], "r") as f16, \
                h5py.File(self.paths["bfloat16"], "r") as bf:
            for l in ("0", "1"):
                for name in ("q", "k", "v", "o_proj"):
                    ref = f32["layers"][l][name][:]
                    self.assertTrue(np.isfinite(ref).all())
                    half = f16["layers"][l][name][:]
                    # Round to nearest: exactly numpy's own float16 conversion.
                    np.testing.assert_array_equal(half, ref.astype(np.float16))
                    np.testing.assert_allclose(half.astype(np.float32), ref, rtol=2 ** -11, atol=2 ** -24)
                    b = bf16_to_f32(bf["layers"][l][name][:])
                    np.testing.assert_allclose(b, ref, rtol=2 ** -8, atol=0)
                    # Not just close: the bfloat16 value is the nearest one.
                    err = np.abs(b.astype(np.float64) - ref)
                    ulp = np.abs(np.spacing(b.astype(np.float32)) * 2 ** 16).astype(np.float64)
                    self.assertTrue((err <= ulp / 2 + 1e-30).all())


if __name__ == "__main__":
    unittest.main()
