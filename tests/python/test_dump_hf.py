"""The Hugging Face backend's capture and bookkeeping, exercised on a small fake transformers-style
model built here (no transformers needed): GQA shapes without repeat_kv, rotate_half RoPE, the
attention scale, the recorded attention output, KV-cache decoding, and both capture paths
(AttentionInterface-style registry / eager global, and the legacy apply_rotary_pos_emb hooks)."""
import os
import sys
import types
import unittest

import h5py
import numpy as np

import dump_testutil as tu
from kvsim.dump.errors import DumpError
from kvsim.dump.recorder import Recorder
from kvsim.dump.trace_file import TraceFileWriter

try:
    import torch
    import torch.nn as nn
except ImportError:  # pragma: no cover - torch is a Debian package on the dev machine
    torch = None

H, HKV, HD, HIDDEN, VOCAB, LAYERS, THETA = 4, 2, 8, 24, 50, 2, 500.0
SCALE = 1.3 / np.sqrt(HD)  # deliberately not 1/sqrt(head_dim): must come from the module


# ---- a transformers-like modeling file ------------------------------------------------------
def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x, n_rep):
    return x.repeat_interleave(n_rep, dim=1)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, **kwargs):
    key, value = repeat_kv(key, H // HKV), repeat_kv(value, H // HKV)
    w = torch.softmax(query @ key.transpose(2, 3) * scaling + attention_mask, dim=-1)
    return (w @ value).transpose(1, 2).contiguous(), w


def fake_sdpa(module, query, key, value, attention_mask, scaling=None, **kwargs):
    # A second implementation (log-sum-exp form) so that the wrapper is shown to call the original.
    key, value = repeat_kv(key, H // HKV), repeat_kv(value, H // HKV)
    logits = query @ key.transpose(2, 3) * scaling + attention_mask
    w = torch.exp(logits - torch.logsumexp(logits, dim=-1, keepdim=True))
    return (w @ value).transpose(1, 2).contiguous(), None


REGISTRY = {"fake_sdpa": fake_sdpa}


class FakeCache:
    def __init__(self):
        self.k, self.v = {}, {}

    def length(self):
        return self.k[0].shape[2] if self.k else 0

    def update(self, layer, k, v):
        if layer in self.k:
            self.k[layer] = torch.cat([self.k[layer], k], dim=2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        else:
            self.k[layer], self.v[layer] = k, v
        return self.k[layer], self.v[layer]


class FakeConfig:
    num_hidden_layers, num_attention_heads, num_key_value_heads = LAYERS, H, HKV
    head_dim, hidden_size, rope_theta, vocab_size = HD, HIDDEN, THETA, VOCAB
    max_position_embeddings = 64
    rope_scaling = {"rope_type": "linear", "factor": 2.0}

    def __init__(self, impl):
        self._attn_implementation = impl


if torch is not None:
    class FakeAttention(nn.Module):
        def __init__(self, config, layer_idx, legacy):
            super().__init__()
            self.config, self.layer_idx, self.legacy = config, layer_idx, legacy
            self.scaling = SCALE
            self.q_proj = nn.Linear(HIDDEN, H * HD, bias=False)
            self.k_proj = nn.Linear(HIDDEN, HKV * HD, bias=False)
            self.v_proj = nn.Linear(HIDDEN, HKV * HD, bias=False)
            self.o_proj = nn.Linear(H * HD, HIDDEN, bias=False)

        def forward(self, x, positions, cache):
            b, n, _ = x.shape
            q = self.q_proj(x).view(b, n, H, HD).transpose(1, 2)
            k = self.k_proj(x).view(b, n, HKV, HD).transpose(1, 2)
            v = self.v_proj(x).view(b, n, HKV, HD).transpose(1, 2)
            inv = 1.0 / THETA ** (torch.arange(0, HD, 2, dtype=torch.float32) / HD)
            ang = positions[:, None].float() * inv[None, :]
            emb = torch.cat([ang, ang], dim=-1)
            q, k = apply_rotary_pos_emb(q, k, emb.cos(), emb.sin())  # module global, looked up now
            k_all, v_all = cache.update(self.layer_idx, k, v)
            T = k_all.shape[2]
            mask = torch.zeros(n, T)
            mask[torch.arange(T)[None, :] > positions[:, None]] = float("-inf")
            if self.legacy:
                w = torch.softmax(q @ repeat_kv(k_all, H // HKV).transpose(2, 3) * self.scaling + mask, -1)
                out = (w @ repeat_kv(v_all, H // HKV)).transpose(1, 2)
            else:
                impl = self.config._attn_implementation
                fn = eager_attention_forward if impl == "eager" else REGISTRY[impl]
                out, _ = fn(self, q, k_all, v_all, mask, scaling=self.scaling, dropout=0.0)
            return self.o_proj(out.reshape(b, n, H * HD))

    class FakeBlock(nn.Module):
        def __init__(self, config, i, legacy):
            super().__init__()
            self.self_attn = FakeAttention(config, i, legacy)
            self.mlp = nn.Linear(HIDDEN, HIDDEN)

    class FakeCausalLM(nn.Module):
        def __init__(self, impl="fake_sdpa", legacy=False, seed=0):
            super().__init__()
            torch.manual_seed(seed)
            self.config = FakeConfig(impl)
            self.embed = nn.Embedding(VOCAB, HIDDEN)
            self.layers = nn.ModuleList(FakeBlock(self.config, i, legacy) for i in range(LAYERS))
            self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

        def forward(self, input_ids, past_key_values=None, use_cache=True, position_ids=None,
                    logits_to_keep=0):
            cache = past_key_values if past_key_values is not None else FakeCache()
            n = input_ids.shape[1]
            pos = position_ids[0] if position_ids is not None else torch.arange(cache.length(), cache.length() + n)
            x = self.embed(input_ids)
            for blk in self.layers:
                x = x + blk.self_attn(x, pos, cache)
                x = x + torch.tanh(blk.mlp(x))
            logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
            return types.SimpleNamespace(logits=logits, past_key_values=cache)


class FakeTokenizer:
    bos_id = 1

    def encode(self, text, continuation=False):
        return [2 + ord(c) % (VOCAB - 2) for c in text]

    def decode(self, ids):
        return " ".join(map(str, ids))


# ---- independent numpy reference of the fake model (float64, full sequence, no cache) --------
def reference_forward(model, ids):
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    S = len(ids)
    x = p["embed.weight"][ids]
    inv = THETA ** (-np.arange(0, HD, 2) / HD)
    ang = np.arange(S)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope_half(t):  # t [heads, S, HD]; rotates pairs (i, i + HD/2)
        a, b = t[..., : HD // 2], t[..., HD // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    per_layer = []
    for l in range(LAYERS):
        pre = f"layers.{l}."
        q = rope_half((x @ p[pre + "self_attn.q_proj.weight"].T).reshape(S, H, HD).transpose(1, 0, 2))
        k = rope_half((x @ p[pre + "self_attn.k_proj.weight"].T).reshape(S, HKV, HD).transpose(1, 0, 2))
        v = (x @ p[pre + "self_attn.v_proj.weight"].T).reshape(S, HKV, HD).transpose(1, 0, 2)
        o = np.empty((H, S, HD))
        for h in range(H):
            logits = q[h] @ k[h // (H // HKV)].T * SCALE
            logits[np.triu_indices(S, 1)] = -np.inf
            w = np.exp(logits - logits.max(1, keepdims=True))
            o[h] = (w / w.sum(1, keepdims=True)) @ v[h // (H // HKV)]
        per_layer.append((q, k, v, o))
        x = x + o.transpose(1, 0, 2).reshape(S, H * HD) @ p[pre + "self_attn.o_proj.weight"].T
        x = x + np.tanh(x @ p[pre + "mlp.weight"].T + p[pre + "mlp.bias"])
    return per_layer, x @ p["lm_head.weight"].T


@unittest.skipIf(torch is None, "torch is not installed")
class HFCaptureTest(unittest.TestCase):
    def dump(self, model, legacy, queries, n_new=5, layers=None, registry=REGISTRY):
        from kvsim.dump.hf_backend import HFBackend
        warnings = []
        backend = HFBackend(model, FakeTokenizer(), "fake", registry=registry, legacy=legacy,
                            warn=warnings.append)
        tok = backend.tokenizer
        prompt = [tok.bos_id] + tok.encode("hello world, kv")
        P, S = len(prompt), len(prompt) + n_new
        meta = dict(backend.meta, prefill_len=P)
        layers = layers or list(range(LAYERS))
        meta["num_layers"] = len(layers)
        tmp = tu.TempDir()
        d = tmp.__enter__()
        self.addCleanup(tmp.__exit__, None, None, None)
        path = os.path.join(d, "hf.h5")
        w = TraceFileWriter(path, meta, S, queries(P, S), "float32")
        gen = backend.run(prompt, n_new, Recorder(w, layers, queries(P, S)))
        w.meta["attn_scale"] = backend.meta["attn_scale"]
        w.finish(prompt + gen, [0] * P + [2] * n_new)
        return path, prompt + gen, warnings

    def check_against_reference(self, model, path, ids, layers=None):
        per_layer, logits = reference_forward(model, ids)
        layers = layers or list(range(LAYERS))
        with h5py.File(path, "r") as f:
            tu.check_trace_structure(self, path)
            self.assertEqual(f.attrs["rope_style"], "half")
            self.assertAlmostEqual(float(f.attrs["attn_scale"]), SCALE, places=12)
            self.assertAlmostEqual(float(f.attrs["rope_theta"]), THETA)
            self.assertIn("linear", f.attrs["rope_scaling"])
            q_pos = f["q_pos"][()]
            for slot, l in enumerate(layers):
                q, k, v, o = per_layer[l]
                g = f[f"layers/{slot}"]
                self.assertEqual(g["k"].shape, (HKV, len(ids), HD))  # not repeated for GQA
                np.testing.assert_allclose(g["q"][()], q[:, q_pos], atol=1e-5)
                np.testing.assert_allclose(g["k"][()], k, atol=1e-5)
                np.testing.assert_allclose(g["v"][()], v, atol=1e-5)
                np.testing.assert_allclose(g["o"][()], o[:, q_pos], atol=1e-5)
                np.testing.assert_array_equal(
                    g["o_proj"][()], model.layers[l].self_attn.o_proj.weight.detach().numpy())
        # Greedy decoding with the cache picked the reference argmax at every step.
        P = int(h5py.File(path, "r").attrs["prefill_len"])
        for t in range(P, len(ids)):
            self.assertEqual(int(np.argmax(logits[t - 1])), ids[t])

    def test_interface_capture(self):
        model = FakeCausalLM("fake_sdpa")
        original = REGISTRY["fake_sdpa"]
        path, ids, warnings = self.dump(model, False, lambda P, S: np.arange(S))
        self.check_against_reference(model, path, ids)
        self.assertIs(REGISTRY["fake_sdpa"], original)  # restored after the run
        self.assertEqual(warnings, [])

    def test_eager_capture_patches_module_global(self):
        model = FakeCausalLM("eager")
        original = sys.modules[__name__].eager_attention_forward
        path, ids, _ = self.dump(model, False, lambda P, S: np.arange(P - 3, S), layers=[1])
        self.check_against_reference(model, path, ids, layers=[1])
        self.assertIs(sys.modules[__name__].eager_attention_forward, original)

    def test_legacy_capture(self):
        model = FakeCausalLM(legacy=True)
        original = sys.modules[__name__].apply_rotary_pos_emb
        path, ids, _ = self.dump(model, True, lambda P, S: np.arange(P - 2, S))
        self.check_against_reference(model, path, ids)
        self.assertIs(sys.modules[__name__].apply_rotary_pos_emb, original)

    def test_repeated_kv_is_refused(self):
        # Keys with H heads (already repeat_kv'ed) would silently change the trace's GQA layout.
        from kvsim.dump.hf_capture import AttentionCapture
        cap = AttentionCapture(None, H, HKV, HD, print)
        q = torch.zeros(1, H, 3, HD)
        with self.assertRaises(DumpError) as e:
            cap.on_attention(0, q, torch.zeros(1, H, 3, HD), torch.zeros(1, H, 3, HD), q)
        self.assertIn("not repeated", str(e.exception))


class MissingTransformersTest(unittest.TestCase):
    def test_clear_message_without_transformers(self):
        import importlib.util
        if importlib.util.find_spec("transformers") is not None:
            self.skipTest("transformers is installed here")
        with tu.TempDir() as d:
            prompt = os.path.join(d, "p.txt")
            with open(prompt, "w") as fh:
                fh.write("hello")
            r = tu.run_dump("--model", "meta-llama/Llama-3.2-1B", "--prompt", prompt,
                            "--out", os.path.join(d, "t.h5"))
            self.assertEqual(r.returncode, 1)
            self.assertEqual(r.stderr.strip(), "kvsim-dump: error: transformers is not installed; "
                             "the Hugging Face backend needs it (bash tools/install-deps.sh makes "
                             ".venv with it)")
            self.assertEqual(os.listdir(d), ["p.txt"])


if __name__ == "__main__":
    unittest.main()
