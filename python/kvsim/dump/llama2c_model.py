"""A numpy forward pass for llama2.c legacy checkpoints that reports every layer's attention.

Checkpoint (llama2.c export.py legacy_export, all little-endian): 7 int32 (dim, hidden_dim,
n_layers, n_heads, n_kv_heads, vocab_size (negative = unshared classifier), seq_len), then float32
token_embedding [vocab, dim], rms_att [L, dim], wq [L, dim, dim], wk [L, kv_dim, dim],
wv [L, kv_dim, dim], wo [L, dim, dim], rms_ffn [L, dim], w1 [L, hidden, dim], w2 [L, dim, hidden],
w3 [L, hidden, dim], rms_final [dim], freq_cis_real/imag [seq_len, head_dim/2] (unused: RoPE is
computed, which also works past seq_len), wcls [vocab, dim] if unshared.
Every matrix is (out, in), which is also Hugging Face's layout, so wo is o_proj as stored.

Math as in llama2.c run.c: RMSNorm eps 1e-5, interleaved RoPE on pairs (2i, 2i+1) with
theta 10000, query head h reads KV head h // (n_heads / n_kv_heads), SwiGLU FFN, float32.
"""
import os
import struct
from dataclasses import dataclass

import numpy as np

from kvsim.dump.errors import DumpError

RMS_EPS = 1e-5
ROPE_THETA = 10000.0


@dataclass
class Llama2cConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @property
    def kv_dim(self):
        return self.n_kv_heads * self.head_dim


def read_checkpoint(path):
    """Returns (config, dict of float32 weight arrays); raises DumpError naming the bad field."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DumpError(path, f"cannot read checkpoint: {e.strerror}")
    if raw.size < 28:
        raise DumpError(path, "header: file shorter than the 7-int32 header")
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", raw[:28].tobytes())
    for name, v in (("dim", dim), ("hidden_dim", hidden), ("n_layers", n_layers),
                    ("n_heads", n_heads), ("n_kv_heads", n_kv), ("seq_len", seq_len)):
        if v <= 0:
            raise DumpError(path, f"header.{name}: must be positive, got {v}")
    if dim % n_heads or n_heads % n_kv:
        raise DumpError(path, f"header.n_heads: dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv} "
                              "do not divide evenly")
    cfg = Llama2cConfig(dim, hidden, n_layers, n_heads, n_kv, abs(vocab), seq_len, vocab > 0)
    L, hd, kvd, V = n_layers, cfg.head_dim, cfg.kv_dim, cfg.vocab_size
    shapes = [("token_embedding", (V, dim)), ("rms_att", (L, dim)), ("wq", (L, dim, dim)),
              ("wk", (L, kvd, dim)), ("wv", (L, kvd, dim)), ("wo", (L, dim, dim)),
              ("rms_ffn", (L, dim)), ("w1", (L, hidden, dim)), ("w2", (L, dim, hidden)),
              ("w3", (L, hidden, dim)), ("rms_final", (dim,)),
              ("freq_cis_real", (seq_len, hd // 2)), ("freq_cis_imag", (seq_len, hd // 2))]
    if not cfg.shared_classifier:
        shapes.append(("wcls", (V, dim)))
    need = sum(int(np.prod(s)) for _, s in shapes)
    floats = raw[28:]
    if floats.size != 4 * need:
        raise DumpError(path, f"weights: expected {4 * need} bytes after the header for this "
                              f"shape, found {floats.size}")
    floats = floats.view("<f4")
    weights, off = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        weights[name] = np.array(floats[off:off + n].reshape(shape), dtype=np.float32)
        off += n
    if cfg.shared_classifier:
        weights["wcls"] = weights["token_embedding"]
    return cfg, weights


def rope_interleaved(x, positions, theta=ROPE_THETA):
    """Rotates pairs (2i, 2i+1) of x [..., n, head_dim] by positions[n] * theta^(-2i/head_dim)."""
    hd = x.shape[-1]
    # float32 frequencies and angles, as run.c (powf, pos * freq) and transformers compute them.
    freqs = (np.float32(1.0) / np.float32(theta) ** (np.arange(0, hd, 2).astype(np.float32) / np.float32(hd)))
    ang = np.asarray(positions).astype(np.float32)[:, None] * freqs[None, :]
    cos, sin = np.cos(ang.astype(np.float64)).astype(np.float32), np.sin(ang.astype(np.float64)).astype(np.float32)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def rmsnorm(x, w, eps=RMS_EPS):
    ss = np.mean(x.astype(np.float32) ** 2, axis=-1, keepdims=True) + np.float32(eps)
    return (x / np.sqrt(ss) * w).astype(np.float32)


def causal_attention(q, k, v, q_positions, scale, group, block=512):
    """q [H, n, hd] at q_positions; k, v [Hkv, T, hd] for positions 0..T-1 -> o [H, n, hd].
    Query head h reads KV head h // group; the G heads of a group are one batched product."""
    H, n, hd = q.shape
    out = np.empty_like(q)
    key_pos = np.arange(k.shape[1])
    scale = np.float32(scale)
    for s in range(0, n, block):
        qp = np.asarray(q_positions[s:s + block])
        t = int(qp.max()) + 1
        # Additive causal mask shared by every head of the block.
        bias = np.where(key_pos[None, :t] > qp[:, None], np.float32(-np.inf), np.float32(0))
        for kvh in range(k.shape[0]):
            qb = q[kvh * group:(kvh + 1) * group, s:s + block]      # [G, b, hd]
            logits = qb @ k[kvh, :t].T                               # [G, b, t]
            logits *= scale
            logits += bias
            logits -= logits.max(axis=-1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=-1, keepdims=True)
            out[kvh * group:(kvh + 1) * group, s:s + block] = logits @ v[kvh, :t]
    return out


class Llama2cModel:
    """Holds the weights and a growing KV cache; forward() runs a block of new positions."""

    def __init__(self, checkpoint_path, weights=None, rope_theta=ROPE_THETA, rms_eps=RMS_EPS):
        """A llama2.c checkpoint, or (checkpoint_path = a name, weights = (Llama2cConfig, dict of
        the arrays read_checkpoint returns)) for other Llama-architecture weights in Meta's
        layout (interleaved RoPE), e.g. a GGUF file's."""
        self.path = checkpoint_path
        self.cfg, self.w = weights if weights is not None else read_checkpoint(checkpoint_path)
        self.name = os.path.basename(checkpoint_path)
        self.scale = 1.0 / np.sqrt(self.cfg.head_dim)
        self.rope_theta, self.rms_eps = rope_theta, rms_eps
        self.reset()

    def reset(self):
        c = self.cfg
        self.k_cache = [np.zeros((c.n_kv_heads, 0, c.head_dim), np.float32) for _ in range(c.n_layers)]
        self.v_cache = [np.zeros((c.n_kv_heads, 0, c.head_dim), np.float32) for _ in range(c.n_layers)]

    @property
    def num_cached(self):
        return self.k_cache[0].shape[1]

    def forward(self, tokens, on_layer=None):
        """Runs tokens at positions num_cached .. num_cached+len-1; returns last position's logits.

        on_layer(l, start, q, k, v, o) receives post-RoPE q [H, n, hd], k and v [Hkv, n, hd]
        (not repeated for GQA) and the attention output o [H, n, hd] before wo.
        """
        c, w = self.cfg, self.w
        tokens = np.asarray(tokens, dtype=np.int64)
        n, start = len(tokens), self.num_cached
        if np.any(tokens < 0) or np.any(tokens >= c.vocab_size):
            raise DumpError(self.path, f"token id outside the vocabulary of {c.vocab_size}")
        pos = np.arange(start, start + n)
        H, Hkv, hd = c.n_heads, c.n_kv_heads, c.head_dim
        x = w["token_embedding"][tokens].astype(np.float32)
        for l in range(c.n_layers):
            xb = rmsnorm(x, w["rms_att"][l], self.rms_eps)
            q = (xb @ w["wq"][l].T).reshape(n, H, hd).transpose(1, 0, 2)
            k = (xb @ w["wk"][l].T).reshape(n, Hkv, hd).transpose(1, 0, 2)
            v = np.ascontiguousarray((xb @ w["wv"][l].T).reshape(n, Hkv, hd).transpose(1, 0, 2))
            q, k = rope_interleaved(q, pos, self.rope_theta), rope_interleaved(k, pos, self.rope_theta)
            self.k_cache[l] = np.concatenate([self.k_cache[l], k], axis=1)
            self.v_cache[l] = np.concatenate([self.v_cache[l], v], axis=1)
            o = causal_attention(q, self.k_cache[l], self.v_cache[l], pos, self.scale, H // Hkv)
            if on_layer is not None:
                on_layer(l, start, q, k, v, o)
            x = x + o.transpose(1, 0, 2).reshape(n, H * hd) @ w["wo"][l].T
            xb = rmsnorm(x, w["rms_ffn"][l], self.rms_eps)
            h1, h3 = xb @ w["w1"][l].T, xb @ w["w3"][l].T
            x = x + ((h1 / (1.0 + np.exp(-h1))) * h3) @ w["w2"][l].T
        x = rmsnorm(x[-1:], w["rms_final"], self.rms_eps)
        return (x @ w["wcls"].T)[0]

    def greedy(self, prompt, n_new, on_layer=None, on_token=None, forced=None):
        """Prefill prompt, then generate n_new tokens greedily (forced[i], when given and not None,
        is fed instead: a later question); each token is also run through the model so that its
        q/k/v are recorded. Returns the ids fed after the prompt."""
        self.reset()
        logits = self.forward(prompt, on_layer)
        out = []
        for i in range(n_new):
            nxt = int(np.argmax(logits)) if forced is None or forced[i] is None else int(forced[i])
            out.append(nxt)
            if on_token is not None:
                on_token(i, nxt)
            logits = self.forward([nxt], on_layer)
        return out
