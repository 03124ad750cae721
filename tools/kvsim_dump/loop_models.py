"""Models that run with an evicted KV cache, for the closed loop (closed_loop.py).

A run keeps every key and value it computed; eviction is an `alive` mask per layer and query head
([num_heads, positions], bool; a KV-head selection is repeated over its group), so a key that is
not alive is invisible to every later query of that head, exactly as if it had been dropped from
the cache. forward() processes a block of tokens at the
next positions against the alive keys (causal inside the block) and returns, per position, the
logits, every layer's output hidden state, every layer's attention output (before o_proj), and
every layer's post-RoPE queries (for rules that re-select with queries).

Two backends: the llama2.c numpy model (the same math as the dumper's, run.c's float32) and any
Hugging Face causal LM (its own attention kernel, with a per-head mask added for evicted keys).
"""
import copy
import os

import numpy as np

from .errors import DumpError


class BlockOut:
    def __init__(self, logits, hidden, attn, queries):
        self.logits = logits    # [n, vocab] float64
        self.hidden = hidden    # [layers] of [n, hidden]
        self.attn = attn        # [layers] of [heads, n, head_dim]: attention output before o_proj
        self.queries = queries  # [layers] of [heads, n, head_dim]: post-RoPE queries


class Llama2cLoop:
    """The llama2.c checkpoint in numpy, attention restricted to alive keys."""

    def __init__(self, checkpoint):
        from .llama2c_model import Llama2cModel
        self.m = Llama2cModel(checkpoint)
        c = self.m.cfg
        self.num_layers, self.num_heads, self.num_kv_heads, self.head_dim = c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim
        self.scale = np.float32(self.m.scale)

    def o_proj(self, layer):
        return self.m.w["wo"][layer]

    def new_state(self):
        L, Hkv, d = self.num_layers, self.num_kv_heads, self.head_dim
        return {"k": [np.zeros((Hkv, 0, d), np.float32) for _ in range(L)],
                "v": [np.zeros((Hkv, 0, d), np.float32) for _ in range(L)],
                "alive": [np.zeros((self.num_heads, 0), bool) for _ in range(L)], "n": 0}

    def copy_state(self, s):
        return copy.deepcopy(s)

    def forward(self, s, tokens):
        from .llama2c_model import rmsnorm, rope_interleaved
        w, c = self.m.w, self.m.cfg
        tokens = np.asarray(tokens, dtype=np.int64)
        n, start = len(tokens), s["n"]
        pos = np.arange(start, start + n)
        H, Hkv, hd, G = c.n_heads, c.n_kv_heads, c.head_dim, c.n_heads // c.n_kv_heads
        x = w["token_embedding"][tokens].astype(np.float32)
        hidden, attn, queries = [], [], []
        for l in range(c.n_layers):
            xb = rmsnorm(x, w["rms_att"][l])
            q = (xb @ w["wq"][l].T).reshape(n, H, hd).transpose(1, 0, 2)
            k = (xb @ w["wk"][l].T).reshape(n, Hkv, hd).transpose(1, 0, 2)
            v = np.ascontiguousarray((xb @ w["wv"][l].T).reshape(n, Hkv, hd).transpose(1, 0, 2))
            q, k = rope_interleaved(q, pos), rope_interleaved(k, pos)
            s["k"][l] = np.concatenate([s["k"][l], k], axis=1)
            s["v"][l] = np.concatenate([s["v"][l], v], axis=1)
            s["alive"][l] = np.concatenate([s["alive"][l], np.ones((H, n), bool)], axis=1)
            o = self._attention(q, s["k"][l], s["v"][l], s["alive"][l], pos, G)
            hidden_attn = o.transpose(1, 0, 2).reshape(n, H * hd)
            x = x + hidden_attn @ w["wo"][l].T
            xb = rmsnorm(x, w["rms_ffn"][l])
            h1, h3 = xb @ w["w1"][l].T, xb @ w["w3"][l].T
            x = x + ((h1 / (1.0 + np.exp(-h1))) * h3) @ w["w2"][l].T
            hidden.append(x.copy())
            attn.append(o)
            queries.append(q)
        s["n"] = start + n
        xf = rmsnorm(x, w["rms_final"])
        return BlockOut((xf @ w["wcls"].T).astype(np.float64), hidden, attn, queries)

    def _attention(self, q, K, V, alive, pos, G):
        """The dumper's causal attention (llama2c_model.causal_attention) with dead keys masked."""
        H, n, hd = q.shape
        T = K.shape[1]
        out = np.empty_like(q)
        key_pos = np.arange(T)
        causal = key_pos[None, :] > pos[:, None]
        for g in range(K.shape[0]):
            hidden = causal[None] | ~alive[g * G:(g + 1) * G, None, :]  # [G, n, T]
            bias = np.where(hidden, np.float32(-np.inf), np.float32(0))
            logits = q[g * G:(g + 1) * G] @ K[g].T
            logits *= self.scale
            logits += bias
            logits -= logits.max(axis=-1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=-1, keepdims=True)
            out[g * G:(g + 1) * G] = logits @ V[g]
        return out


class HFLoop:
    """A transformers causal LM; its attention kernel gets a per-head mask hiding evicted keys."""

    def __init__(self, backend):
        import torch
        self.torch = torch
        self.backend = backend
        self.model = backend.model
        m = backend.meta
        self.num_layers, self.num_heads, self.num_kv_heads, self.head_dim = (
            m["num_layers"], m["num_heads"], m["num_kv_heads"], m["head_dim"])
        self.scale = float(m["attn_scale"])
        self.tokenizer = backend.tokenizer
        self.device = next(self.model.parameters()).device
        self._o_proj = {l: backend.o_proj(l) for l, _ in backend.attn}

    def o_proj(self, layer):
        return self._o_proj[layer]

    def new_state(self):
        return {"cache": None, "alive": [np.zeros((self.num_heads, 0), bool) for _ in range(self.num_layers)], "n": 0}

    def copy_state(self, s):
        return {"cache": copy.deepcopy(s["cache"]), "alive": [a.copy() for a in s["alive"]], "n": s["n"]}

    def forward(self, s, tokens):
        import sys
        torch = self.torch
        from .hf_capture import install_interface_capture
        n, start = len(tokens), s["n"]
        for l in range(self.num_layers):
            s["alive"][l] = np.concatenate([s["alive"][l], np.ones((self.num_heads, n), bool)], axis=1)
        seen = {}
        # Layers that evicted nothing keep the model's own (causal) attention path: a custom
        # [H, n, T] mask forces the slow masked kernel, which at 8K positions made the full-cache
        # prefill 5x slower than the model's.
        intact = [bool(a.all()) for a in s["alive"]]

        def wrap(original):
            def masked_attention(module, query, key, value, attention_mask, *args, **kwargs):
                layer = module.layer_idx
                result = original(module, query, key, value, attention_mask, *args, **kwargs) \
                    if intact[layer] else evicted_attention(original, module, query, key, value, args, kwargs)
                out = result[0] if isinstance(result, tuple) else result
                seen[layer] = (query[0].detach().float().cpu().numpy(),
                               out[0].transpose(0, 1).detach().float().cpu().numpy())
                return result
            return masked_attention

        def evicted_attention(original, module, query, key, value, args, kwargs):
            """The kernel with each head's evicted keys masked."""
            T, nq = key.shape[2], query.shape[2]
            pos = torch.arange(start, start + nq, device=query.device)
            causal = torch.arange(T, device=query.device)[None, :] <= pos[:, None]
            alive = torch.as_tensor(s["alive"][module.layer_idx][:, :T], device=query.device)
            visible = causal[None] & alive[:, None, :]  # [H, n, T]
            mask = torch.zeros(visible.shape, dtype=query.dtype, device=query.device)
            mask = mask.masked_fill(~visible, torch.finfo(query.dtype).min)[None]
            kwargs.pop("is_causal", None)
            if impl == "sdpa" and not kwargs.get("softcap") and kwargs.get("s_aux") is None:
                # torch's own grouped-query path: transformers' sdpa wrapper repeats K and V per
                # query head whenever a mask is given (a third of a step at 4K positions).
                out = torch.nn.functional.scaled_dot_product_attention(
                    query, key, value, attn_mask=mask, scale=kwargs.get("scaling"),
                    enable_gqa=query.shape[1] != key.shape[1])
                return out.transpose(1, 2).contiguous(), None
            return original(module, query, key, value, mask, *args, **kwargs)

        registry = self.backend.registry
        impl = self.model.config._attn_implementation or "eager"
        modeling = sys.modules[type(self.backend.attn[0][1]).__module__]
        if impl == "eager" or impl not in registry:
            original = modeling.eager_attention_forward
            modeling.eager_attention_forward = wrap(original)
            restore = lambda: setattr(modeling, "eager_attention_forward", original)  # noqa: E731
        else:
            original = registry[impl]
            registry[impl] = wrap(original)
            local = getattr(registry, "_local_mapping", None)

            def restore():
                if local is not None and impl in local:
                    del local[impl]
                else:
                    registry[impl] = original
        residual = {}  # each decoder layer's output (the residual stream, before the final norm)
        hooks = [layer.register_forward_hook(lambda mod, inp, res, i=i: residual.__setitem__(
            i, (res[0] if isinstance(res, tuple) else res)[0].float().cpu().numpy()))
            for i, layer in enumerate(self._decoder_layers())]
        try:
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([list(tokens)], device=self.device),
                                 past_key_values=s["cache"], use_cache=True,
                                 position_ids=torch.arange(start, start + n, device=self.device)[None])
        finally:
            restore()
            for h in hooks:
                h.remove()
        if len(seen) != self.num_layers:
            raise DumpError("closed loop", f"the attention kernel was reached by {len(seen)} of {self.num_layers} layers")
        s["cache"] = out.past_key_values
        s["n"] = start + n
        hidden = [residual[l] for l in range(self.num_layers)]
        return BlockOut(out.logits[0].double().cpu().numpy(), hidden, [seen[l][1] for l in range(self.num_layers)],
                        [seen[l][0] for l in range(self.num_layers)])

    def _decoder_layers(self):
        inner = getattr(self.model, "model", None)
        layers = getattr(inner, "layers", None) if inner is not None else None
        if layers is None or len(layers) != self.num_layers:
            raise DumpError("--model", "the closed loop needs the decoder layers at model.model.layers")
        return list(layers)

    def cache_kv(self, s, layer):
        """Keys and values of the layer's cache as numpy [Hkv, T, d]."""
        c = s["cache"]
        lay = c.layers[layer]
        return lay.keys[0].float().cpu().numpy(), lay.values[0].float().cpu().numpy()


def llama2c_kv(s, layer):
    return s["k"][layer], s["v"][layer]


def make_loop_model(args, seq_len):
    """The closed loop's model for kvsim-dump's --model / --backend options; every layer must
    attend to all seq_len positions (a sliding-window layer would need its own mask)."""
    from .llama2c_backend import looks_like_llama2c
    if args.backend == "llama2c" or (args.backend == "auto" and (looks_like_llama2c(args.model) or args.model.endswith(".bin"))):
        from .llama2c_backend import find_llama2c_files
        from .llama2c_tokenizer import Llama2cTokenizer
        checkpoint, tokenizer = find_llama2c_files(args.model, args.tokenizer)
        loop = Llama2cLoop(checkpoint)
        loop.tokenizer = Llama2cTokenizer(tokenizer)
        loop.kv = llama2c_kv
        return loop
    from .hf_backend import HFBackend
    tokenizer = args.tokenizer if args.tokenizer and os.path.isdir(args.tokenizer) else None
    backend = HFBackend.load(args.model, args.torch_dtype or "float32", args.device, args.attn_implementation,
                             args.trust_remote_code, tokenizer)
    if backend.legacy:
        raise DumpError("--model", "the closed loop needs transformers >= 4.48 (attention-function registry)")
    full = backend.full_attention_layers(seq_len)
    if len(full) != backend.meta["num_layers"]:
        raise DumpError("--model", f"layers {sorted(set(range(backend.meta['num_layers'])) - set(full))} have a "
                                   f"sliding window shorter than {seq_len} positions; the closed loop needs every "
                                   "layer to see the whole prompt")
    loop = HFLoop(backend)
    loop.kv = loop.cache_kv
    return loop
