"""The Hugging Face backend on real transformers code: tiny randomly initialised models of each
supported architecture, built from a config here and saved as model folders, then dumped with
`kvsim-dump --model DIR --token-ids ...` and checked end to end:

- `kvsim validate --check-o`: kvsim's own full attention (the replay engine) reproduces the
  model's attention output o to 1e-4 (float32 trace);
- the recorded prompt keys/values equal the model's own KV cache after a plain forward pass;
- the recorded greedy tokens equal model.generate(do_sample=False);
- `kvsim replay --rules full` runs on the trace (zero perturbation);
- what kvsim cannot replay (sliding windows shorter than the trace, attention sinks) is refused.

The stories260K equality (real weights through the HF code path) is in test_dump_hf_stories.py.
"""
import os
import subprocess
import sys
import unittest

import numpy as np

import dump_testutil as tu

try:
    import h5py
    import torch
    import transformers
except ImportError as e:  # pragma: no cover - .venv has them (tools/install-deps.sh)
    raise unittest.SkipTest(f"needs the project .venv ({e.name} missing)")
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

N_NEW = 6
PROMPT = list(range(3, 83, 2))  # 40 ids
COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)


def configs():
    """name -> (config, what the architecture exercises)."""
    T = transformers
    return {
        "llama": (T.LlamaConfig(**COMMON), "GQA, rotate_half RoPE"),
        "qwen2": (T.Qwen2Config(**COMMON), "q/k/v bias"),
        "qwen3": (T.Qwen3Config(**COMMON, head_dim=24), "QK-norm, head_dim != hidden/heads"),
        "mistral": (T.MistralConfig(**COMMON, sliding_window=4096), "sliding window longer than the trace"),
        "phi3": (T.Phi3Config(**COMMON, partial_rotary_factor=0.5), "fused qkv_proj, partial rotary"),
        "gemma2": (T.Gemma2Config(**COMMON, head_dim=16, query_pre_attn_scalar=24,
                                  attn_logit_softcapping=2.0, sliding_window=4096),
                   "logit soft-capping, query_pre_attn_scalar, alternating sliding layers"),
        "gemma3": (T.Gemma3TextConfig(**COMMON, head_dim=16, query_pre_attn_scalar=24, sliding_window=4096,
                                      layer_types=["sliding_attention", "full_attention"]),
                   "QK-norm, per-layer RoPE base, sliding layers"),
    }


def sharpen(model, factor=3.0):
    """Random init gives near-uniform attention; larger q/k weights make it peaked, so a wrong
    scale, soft-cap or mask would show in o."""
    with torch.no_grad():
        for m in model.modules():
            for name in ("q_proj", "k_proj", "qkv_proj"):
                p = getattr(m, name, None)
                if p is not None and hasattr(p, "weight"):
                    p.weight.mul_(factor)


def build(folder, cfg, seed=0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    sharpen(model)
    model.save_pretrained(folder)
    return model.eval()


def ids_arg(ids):
    return ",".join(map(str, ids))


def kvsim(*args):
    return subprocess.run([os.environ["KVSIM_CLI"], *args], capture_output=True, text=True)


class ArchitectureTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tu.open_cli_class_dir(cls)
        for name, (cfg, _) in configs().items():
            build(os.path.join(cls.dir, name), cfg)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.__exit__(None, None, None)

    def dump(self, name, *extra, expect_ok=True):
        out = os.path.join(self.dir, f"{name}.h5")
        r = tu.run_dump("--model", os.path.join(self.dir, name), "--token-ids", ids_arg(PROMPT),
                        "--generate", str(N_NEW), "--out", out, *extra)
        if expect_ok:
            self.assertEqual(r.returncode, 0, r.stderr)
        return out, r

    def expected_greedy(self, model):
        ids = torch.tensor([PROMPT])
        model.generation_config.eos_token_id = None  # exactly N_NEW tokens, as the dumper does
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, pad_token_id=0)
        return out[0, len(PROMPT):].tolist()

    def model_cache(self, model):
        """The model's own post-RoPE keys and values of the prompt: [layers] of [Hkv, P, d]."""
        with torch.no_grad():
            past = model(torch.tensor([PROMPT]), use_cache=True).past_key_values
        return [(layer.keys[0].numpy(), layer.values[0].numpy()) for layer in past.layers]

    def load(self, name, impl):
        """The saved model as the dumper loads it (same attention implementation)."""
        return transformers.AutoModelForCausalLM.from_pretrained(
            os.path.join(self.dir, name), attn_implementation=impl, dtype=torch.float32).eval()

    def check_architecture(self, name, impl="sdpa"):
        model = self.load(name, impl)
        path, r = self.dump(name, "--attn-implementation", impl)
        v = kvsim("validate", "--check-o", "--o-tolerance", "1e-4", "--window", "8", path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        worst = max(float(line.split("max rel err ")[1].split(",")[0])
                    for line in v.stdout.splitlines() if line.startswith("o layer"))
        print(f"\n{name}: max rel err of o {worst:.2e} ({configs()[name][1]})", file=sys.stderr)
        with h5py.File(path, "r") as f:
            tu.check_trace_structure(self, path)
            self.assertEqual(int(f.attrs["version"]), 2)
            P = int(f.attrs["prefill_len"])
            self.assertEqual(f["tokens/input_ids"][P:].tolist(), self.expected_greedy(model))
            for l, (k, vv) in enumerate(self.model_cache(model)):
                np.testing.assert_allclose(f[f"layers/{l}/k"][:, :P], k, rtol=0, atol=1e-5)
                np.testing.assert_allclose(f[f"layers/{l}/v"][:, :P], vv, rtol=0, atol=1e-5)
            scale = model.model.layers[0].self_attn.scaling
            self.assertAlmostEqual(float(f.attrs["attn_scale"]), scale, places=12)
        out_dir = os.path.join(self.dir, f"{name}_replay")
        rep = kvsim("replay", path, "--rules", "full", "--budgets", "0.5", "--window", "8", "--out", out_dir)
        self.assertEqual(rep.returncode, 0, rep.stderr)
        import csv
        with open(os.path.join(out_dir, "metrics.csv")) as fh:
            rows = list(csv.DictReader(fh))
        self.assertTrue(rows)
        self.assertTrue(all(float(row["pert_l1"]) == 0.0 for row in rows))
        return path

    def test_llama(self):
        self.check_architecture("llama")

    def test_qwen2_bias(self):
        self.check_architecture("qwen2")

    def test_qwen3_qk_norm(self):
        self.check_architecture("qwen3")

    def test_mistral_window_longer_than_trace(self):
        path = self.check_architecture("mistral")
        with h5py.File(path, "r") as f:
            self.assertEqual(int(f["layers/0"].attrs["sliding_window"]), 4096)

    def test_phi3_fused_qkv_partial_rotary(self):
        path = self.check_architecture("phi3")
        with h5py.File(path, "r") as f:
            self.assertEqual(int(f.attrs["rotary_dim"]), 8)

    def test_gemma2_softcap(self):
        # eager applies the soft-cap; transformers' sdpa kernel ignores it (checked below).
        path = self.check_architecture("gemma2", "eager")
        with h5py.File(path, "r") as f:
            self.assertEqual(float(f.attrs["attn_logit_softcap"]), 2.0)
            self.assertEqual(f["layers/0"].attrs["attention_type"], "sliding_attention")
        # Without the soft-cap attribute kvsim's attention no longer reproduces o: it matters.
        plain = path.replace(".h5", "_nocap.h5")
        with h5py.File(path, "r") as src, h5py.File(plain, "w") as dst:
            for key in src:
                src.copy(src[key], dst, name=key)
            for key, value in src.attrs.items():
                if key != "attn_logit_softcap":
                    dst.attrs[key] = value
        v = kvsim("validate", "--check-o", "--o-tolerance", "1e-4", "--window", "8", plain)
        self.assertEqual(v.returncode, 1, v.stdout)
        p = kvsim("prefill", path, "--out", os.path.join(self.dir, "g2_prefill"))
        self.assertEqual(p.returncode, 1)
        self.assertIn("soft-caps attention logits", p.stderr)
        # sdpa: the trace records the plain softmax the kernel computed, and says why.
        path, r = self.dump("gemma2")
        self.assertIn("ignores the model's logit soft-capping", r.stderr)
        with h5py.File(path, "r") as f:
            self.assertNotIn("attn_logit_softcap", f.attrs)
        v = kvsim("validate", "--check-o", "--o-tolerance", "1e-4", "--window", "8", path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def test_gemma3_per_layer_rope(self):
        path = self.check_architecture("gemma3")
        with h5py.File(path, "r") as f:
            self.assertEqual(float(f.attrs["rope_theta"]), 1e6)  # the full-attention layers'
            self.assertEqual(float(f["layers/0"].attrs["rope_theta"]), 1e4)  # local layer override

    def test_sliding_window_shorter_than_trace(self):
        cfg = transformers.Gemma3TextConfig(**COMMON, head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                                            layer_types=["sliding_attention", "full_attention"])
        build(os.path.join(self.dir, "gemma3_w8"), cfg)
        model = self.load("gemma3_w8", "sdpa")
        _, r = self.dump("gemma3_w8", expect_ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("layer 0: sliding-window attention (window 8) over 46 positions", r.stderr)
        self.assertIn("--layers full-attention", r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "gemma3_w8.h5")))
        path, r = self.dump("gemma3_w8", "--layers", "full-attention")
        with h5py.File(path, "r") as f:
            self.assertEqual(f.attrs["model_layers"], "1")
            P = int(f.attrs["prefill_len"])
            self.assertEqual(f["tokens/input_ids"][P:].tolist(), self.expected_greedy(model))
        v = kvsim("validate", "--check-o", "--o-tolerance", "1e-4", "--window", "8", path)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def test_attention_sinks_refused(self):
        cfg = transformers.GptOssConfig(**COMMON, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                        sliding_window=4096)
        build(os.path.join(self.dir, "gptoss"), cfg)
        _, r = self.dump("gptoss", expect_ok=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("attention sinks", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "gptoss.h5")))

    def test_clear_errors(self):
        # A missing folder, an unknown architecture, a prompt longer than the model's context.
        r = tu.run_dump("--model", os.path.join(self.dir, "nope"), "--token-ids", "1,2",
                        "--out", os.path.join(self.dir, "x.h5"))
        self.assertEqual((r.returncode, r.stderr.strip().endswith("--model: no such model folder")), (1, True),
                         r.stderr)
        odd = os.path.join(self.dir, "odd")
        os.makedirs(odd)
        with open(os.path.join(odd, "config.json"), "w") as fh:
            fh.write('{"model_type": "no-such-architecture", "architectures": ["NoSuchForCausalLM"]}')
        r = tu.run_dump("--model", odd, "--token-ids", "1,2", "--out", os.path.join(self.dir, "x.h5"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot read its config", r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        r = tu.run_dump("--model", os.path.join(self.dir, "llama"), "--token-ids", ids_arg(range(1, 120)),
                        "--generate", "200", "--out", os.path.join(self.dir, "x.h5"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("the model was trained on 256", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "x.h5")))


class MaskCheckTest(unittest.TestCase):
    """The capture's backstop: masks that are not plain causal are recognised."""

    def test_deviations(self):
        from kvsim.dump.hf_capture import mask_deviation
        n = T = 6
        pos = torch.arange(T)
        causal = pos[None, :] <= pos[:, None]
        self.assertIsNone(mask_deviation(causal[None, None], 0, n, T))
        self.assertIsNone(mask_deviation(torch.where(causal, 0.0, torch.finfo(torch.float32).min)[None, None],
                                         0, n, T))
        window = causal & (pos[:, None] - pos[None, :] < 3)
        self.assertIn("sliding-window", mask_deviation(window[None, None], 0, n, T))
        self.assertIn("later positions", mask_deviation(torch.ones(1, 1, n, T, dtype=torch.bool), 0, n, T))
        alibi = torch.where(causal, -0.5 * (pos[:, None] - pos[None, :]).float(), float("-inf"))
        self.assertIn("additive attention bias", mask_deviation(alibi[None, None], 0, n, T))
        # A decode step: one query at position 5 over 6 keys.
        self.assertIsNone(mask_deviation(torch.ones(1, 1, 1, 6, dtype=torch.bool), 5, 1, 6))


if __name__ == "__main__":
    unittest.main()
