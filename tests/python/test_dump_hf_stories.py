"""Real pretrained weights through the Hugging Face code path: stories260K (llama2.c) converted by
tools/llama2c-to-hf into a transformers LlamaForCausalLM folder, dumped by the HF backend, gives
the llama2.c backend's trace: the same tokens (prompt and greedy continuation), and q, k, v, o
within 2e-5 of each tensor's largest value. q and k come out with each head's components in
rotate_half order (the converter permutes wq/wk rows), so they are compared after the same
permutation; dot products, v, o and o_proj are unchanged by it."""
import os
import subprocess
import unittest

import numpy as np

import dump_testutil as tu

try:
    import h5py
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover
    raise unittest.SkipTest(f"needs the project .venv ({e.name} missing)")

CONVERTER = os.path.join(tu.TOOLS_DIR, "llama2c-to-hf")
# Of max |x| per tensor. Two float32 implementations (numpy and torch), each ~3.3e-6 off a float64
# attention over its own q/k/v at 2064 tokens, so their difference is float32 noise of ~1e-5:
# 7e-6 measured with torch's AVX-512 kernels (Intel), 1.02e-5 (layer 1 o) with its AVX2 ones (AMD EPYC).
RTOL = 2e-5


class StoriesThroughTransformersTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tu.TempDir()
        cls.dir = cls.tmp.__enter__()
        cls.hf = os.path.join(cls.dir, "stories260K-hf")
        r = subprocess.run([CONVERTER, tu.CHECKPOINT, cls.hf], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        prompt = ["--niah", "--niah-dir", tu.ESSAYS_DIR, "--niah-length", "2048", "--generate", "16",
                  "--max-positions", "2064"]
        cls.paths = {}
        for name, model in (("hf", cls.hf), ("llama2c", tu.CHECKPOINT)):
            cls.paths[name] = os.path.join(cls.dir, f"{name}.h5")
            r = tu.run_dump("--model", model, *prompt, "--out", cls.paths[name])
            assert r.returncode == 0, r.stderr

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def test_converted_folder(self):
        self.assertEqual(sorted(os.listdir(self.hf)),
                         ["config.json", "generation_config.json", "model.safetensors", "tokenizer.bin"])
        r = subprocess.run([CONVERTER, tu.CHECKPOINT, self.hf], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn("output folder exists and is not empty", r.stderr)

    def test_same_trace_as_llama2c_backend(self):
        with h5py.File(self.paths["hf"], "r") as a, h5py.File(self.paths["llama2c"], "r") as b:
            self.assertEqual(a.attrs["rope_style"], "half")
            self.assertEqual(b.attrs["rope_style"], "interleaved")
            self.assertIn("Hugging Face backend, transformers", a.attrs["source"])
            np.testing.assert_array_equal(a["tokens/input_ids"][()], b["tokens/input_ids"][()])
            np.testing.assert_array_equal(a["tokens/segment"][()], b["tokens/segment"][()])
            d = int(a.attrs["head_dim"])
            half = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
            worst = {}
            for l in range(int(a.attrs["num_layers"])):
                for name in ("q", "k", "v", "o", "o_proj"):
                    x, y = a[f"layers/{l}/{name}"][()], b[f"layers/{l}/{name}"][()]
                    if name in ("q", "k"):
                        y = y[..., half]
                    err = float(np.abs(x - y).max() / np.abs(y).max())
                    worst[name] = max(worst.get(name, 0.0), err)
                    self.assertLessEqual(err, RTOL, f"layer {l} {name}")
            print(f"\nstories260K HF vs llama2c, max |diff| / max |x|: {worst}")

    def test_hf_trace_reproduces_o(self):
        r = subprocess.run([os.environ["KVSIM_CLI"], "validate", "--check-o", "--o-tolerance", "1e-4",
                            self.paths["hf"]], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()
