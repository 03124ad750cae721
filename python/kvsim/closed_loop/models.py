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

from kvsim.dump.errors import DumpError


class BlockOut:
    def __init__(self, logits, hidden, attn, queries):
        self.logits = logits    # [n, vocab] float64
        self.hidden = hidden    # [layers] of [n, hidden]
        self.attn = attn        # [layers] of [heads, n, head_dim]: attention output before o_proj
        self.queries = queries  # [layers] of [heads, n, head_dim]: post-RoPE queries


class Llama2cLoop:
    """The llama2.c checkpoint in numpy, attention restricted to alive keys."""

    def __init__(self, checkpoint):
        from kvsim.dump.llama2c_model import Llama2cModel
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

    def drop_evicted(self, s):
        """Evicted keys stay in place, masked by `alive`: tiny checkpoints, nothing to gain."""

    def forward(self, s, tokens):
        from kvsim.dump.llama2c_model import rmsnorm, rope_interleaved
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
            o = self._attention(q, s["k"][l], s["v"][l], s["alive"][l], pos, G, step_mask(s, l, q, pos, s["k"][l], s["v"][l]))
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

    def _attention(self, q, K, V, alive, pos, G, visible=None):
        """The dumper's causal attention (llama2c_model.causal_attention) with dead keys masked,
        and keys a query does not attend to (visible [H, n, T] False: Quest's pages) too."""
        H, n, hd = q.shape
        T = K.shape[1]
        out = np.empty_like(q)
        key_pos = np.arange(T)
        causal = key_pos[None, :] > pos[:, None]
        for g in range(K.shape[0]):
            hidden = causal[None] | ~alive[g * G:(g + 1) * G, None, :]  # [G, n, T]
            if visible is not None:
                hidden |= ~visible[g * G:(g + 1) * G]
            bias = np.where(hidden, np.float32(-np.inf), np.float32(0))
            logits = q[g * G:(g + 1) * G] @ K[g].T
            logits *= self.scale
            logits += bias
            logits -= logits.max(axis=-1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=-1, keepdims=True)
            out[g * G:(g + 1) * G] = logits @ V[g]
        return out


def step_mask(s, layer, q, pos, K, V):
    """The keys each query attends to under a query-aware or step-wise rule (state["step_mask"]:
    Quest's pages, TOVA's or H2O's per-step cache; bool [H, n, T]), or None (every key the cache
    holds). K, V: the layer's keys and values [Hkv, T, d] by position."""
    hook = s.get("step_mask")
    T = int(pos[-1]) + 1
    return None if hook is None else hook(s, layer, q, pos, np.ascontiguousarray(K[:, :T]), np.ascontiguousarray(V[:, :T]))


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
        return {"cache": None, "alive": [np.zeros((self.num_heads, 0), bool) for _ in range(self.num_layers)], "n": 0,
                "slot_pos": None}

    def copy_state(self, s):
        # The cache's layers only ever rebind their tensors (DynamicLayer.update concatenates into
        # new ones), so copies may share them: no 190 MB deep copy of a 4K prompt per run.
        cache = s["cache"]
        if cache is not None:
            cache = copy.copy(cache)
            cache.layers = [copy.copy(layer) for layer in cache.layers]
        slots = s.get("slot_pos")
        return dict(s, cache=cache, alive=[a.copy() for a in s["alive"]],
                    slot_pos=None if slots is None else [p.copy() for p in slots])

    def drop_evicted(self, s):
        """Removes the evicted keys and values from the cache, as a compressed cache holds them:
        per KV head the slots any of its query heads still sees, padded to the layer's longest
        head (padding and a query head's other heads' slots stay masked by `alive`). Every later
        step then attends over the kept entries only (at 10% of a 4K prompt, a tenth of the
        work) instead of masking the whole prompt. `alive` and the new `slot_pos` are indexed by
        cache slot from here on; a state that keeps everything is left as it is (the same
        arithmetic as the full cache, to the last bit)."""
        torch = self.torch
        if all(a.all() for a in s["alive"]):
            return
        G, Hkv = self.num_heads // self.num_kv_heads, self.num_kv_heads
        s["slot_pos"] = []
        for l, layer in enumerate(s["cache"].layers):
            alive = s["alive"][l]
            seen_by_kv_head = alive.reshape(Hkv, G, -1).any(axis=1)
            idx = [np.flatnonzero(row) for row in seen_by_kv_head]
            width = max(len(i) for i in idx)
            padded = np.stack([np.pad(i, (0, width - len(i)), constant_values=i[0] if len(i) else 0) for i in idx])
            live = np.arange(width)[None, :] < np.array([len(i) for i in idx])[:, None]  # [Hkv, width]
            gather = torch.as_tensor(padded, device=layer.keys.device)[None, :, :, None].expand(
                1, Hkv, width, layer.keys.shape[-1])
            layer.keys = torch.gather(layer.keys, 2, gather)
            layer.values = torch.gather(layer.values, 2, gather)
            rows = np.take_along_axis(alive.reshape(Hkv, G, -1), padded[:, None, :], axis=2)
            s["alive"][l] = (rows & live[:, None, :]).reshape(self.num_heads, width)
            s["slot_pos"].append(padded)

    def forward(self, s, tokens):
        """Feeds `tokens` (ids) at the next positions. A batched state (stack_states) takes one
        list of ids per run, all of one length, and gives one BlockOut per run."""
        import sys
        torch = self.torch
        batched = "batch" in s
        ids = [list(t) for t in tokens] if batched else [list(tokens)]
        B, n, start = len(ids), len(ids[0]), s["n"]
        slots = s.get("slot_pos")
        for l in range(self.num_layers):
            a = s["alive"][l]
            s["alive"][l] = np.concatenate([a, np.ones(a.shape[:-1] + (n,), bool)], axis=-1)
            if slots is not None:
                p = slots[l]
                slots[l] = np.concatenate([p, np.broadcast_to(np.arange(start, start + n), p.shape[:-1] + (n,))],
                                          axis=-1)
        seen = {}
        # Layers that evicted nothing keep the model's own (causal) attention path: a custom
        # [H, n, T] mask forces the slow masked kernel, which at 8K positions made the full-cache
        # prefill 5x slower than the model's. Once evicted entries are dropped (drop_evicted),
        # cache slots are no longer positions and the model's own mask would be wrong: every
        # layer takes the masked path.
        intact = [slots is None and bool(a.all()) and "step_mask" not in s for a in s["alive"]]

        def wrap(original):
            def masked_attention(module, query, key, value, attention_mask, *args, **kwargs):
                layer = module.layer_idx
                result = original(module, query, key, value, attention_mask, *args, **kwargs) \
                    if intact[layer] else evicted_attention(original, module, query, key, value, args, kwargs)
                out = result[0] if isinstance(result, tuple) else result
                seen[layer] = (query.detach().float().cpu().numpy(),
                               out.transpose(1, 2).detach().float().cpu().numpy())
                return result
            return masked_attention

        def evicted_attention(original, module, query, key, value, args, kwargs):
            """The kernel with each head's evicted keys (and a batch's padding) masked."""
            T, nq, layer = key.shape[2], query.shape[2], module.layer_idx
            pos = np.arange(start, start + nq)
            alive = s["alive"][layer][..., :T].reshape(-1, self.num_heads, T)  # [B, H, T]
            key_pos = np.arange(T).reshape(1, 1, T) if slots is None else slots[layer][..., :T].reshape(
                -1, self.num_kv_heads, T)  # slot positions per KV head
            key_pos = np.repeat(key_pos, self.num_heads // key_pos.shape[1], axis=1)
            visible = (key_pos[:, :, None, :] <= pos[None, None, :, None]) & alive[:, :, None, :]  # [B, H, n, T]
            pages = step_mask(s, layer, query[0].float().cpu().numpy(), pos, key[0].float().cpu().numpy(),
                              value[0].float().cpu().numpy()) if not batched else None
            if pages is not None:  # a query-aware rule's own keys per query (slots are positions here)
                visible &= pages[None]
            mask = None
            if not visible.all():  # a single new token over a compacted cache needs none
                mask = torch.zeros(visible.shape, dtype=query.dtype, device=query.device)
                mask = mask.masked_fill(~torch.as_tensor(visible, device=query.device),
                                        torch.finfo(query.dtype).min)
            kwargs.pop("is_causal", None)
            if impl == "sdpa" and not kwargs.get("softcap") and kwargs.get("s_aux") is None:
                # torch's own grouped-query path: transformers' sdpa wrapper repeats K and V per
                # query head whenever a mask is given (a third of a step at 4K positions).
                out = torch.nn.functional.scaled_dot_product_attention(
                    query, key, value, attn_mask=mask, scale=kwargs.get("scaling"),
                    enable_gqa=query.shape[1] != key.shape[1])
                return out.transpose(1, 2).contiguous(), None
            if mask is None:
                mask = torch.zeros((B, self.num_heads, nq, T), dtype=query.dtype, device=query.device)
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
            i, (res[0] if isinstance(res, tuple) else res).float().cpu().numpy()))
            for i, layer in enumerate(self._decoder_layers())]
        try:
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor(ids, device=self.device),
                                 past_key_values=s["cache"], use_cache=True,
                                 position_ids=torch.arange(start, start + n, device=self.device)[None].expand(B, n))
        finally:
            restore()
            for h in hooks:
                h.remove()
        if len(seen) != self.num_layers:
            raise DumpError("closed loop", f"the attention kernel was reached by {len(seen)} of {self.num_layers} layers")
        s["cache"] = out.past_key_values
        s["n"] = start + n
        logits = out.logits.double().cpu().numpy()
        L = range(self.num_layers)
        outs = [BlockOut(logits[b], [residual[l][b] for l in L], [seen[l][1][b] for l in L], [seen[l][0][b] for l in L])
                for b in range(B)]
        return outs if batched else outs[0]

    def stack_states(self, states):
        """One batched state of compacted ones (drop_evicted) at the same position: each layer's
        cache padded to its widest run, the padding masked by `alive`. forward() then moves every
        run one step in one pass over the weights (a step of a 135M model reads 0.5 GB of them)."""
        torch = self.torch
        if any(st.get("slot_pos") is None for st in states) or len({st["n"] for st in states}) != 1:
            raise DumpError("closed loop", "only compacted states at one position can run as a batch")
        cache = copy.copy(states[0]["cache"])
        cache.layers, alive, slots = [], [], []
        for l in range(self.num_layers):
            width = max(st["alive"][l].shape[-1] for st in states)
            pad = lambda a, v: np.pad(a, ((0, 0), (0, width - a.shape[-1])), constant_values=v)  # noqa: E731
            alive.append(np.stack([pad(st["alive"][l], False) for st in states]))
            slots.append(np.stack([pad(st["slot_pos"][l], 0) for st in states]))
            layer = copy.copy(states[0]["cache"].layers[l])
            grow = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[2]))  # noqa: E731
            layer.keys = torch.cat([grow(st["cache"].layers[l].keys) for st in states])
            layer.values = torch.cat([grow(st["cache"].layers[l].values) for st in states])
            cache.layers.append(layer)
        return {"cache": cache, "alive": alive, "slot_pos": slots, "n": states[0]["n"], "batch": len(states)}

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

    def set_span_kv(self, s, layer, keys, values):
        """Replaces slots [0, n) of the layer's cache ([Hkv, n, d] numpy): quant(...)'s rows. New
        tensors, since copied states share the snapshot's (copy_state)."""
        torch = self.torch
        lay = s["cache"].layers[layer]
        n = keys.shape[1]
        for name, rows in (("keys", keys), ("values", values)):
            t = getattr(lay, name).clone()
            t[0, :, :n] = torch.as_tensor(rows, dtype=t.dtype, device=t.device)
            setattr(lay, name, t)


def llama2c_kv(s, layer):
    return s["k"][layer], s["v"][layer]


def llama2c_set_span_kv(s, layer, keys, values):
    """Replaces positions [0, n) of the layer's keys and values ([Hkv, n, d]): quant(...)'s cache."""
    n = keys.shape[1]
    s["k"][layer] = s["k"][layer].copy()
    s["v"][layer] = s["v"][layer].copy()
    s["k"][layer][:, :n] = keys
    s["v"][layer][:, :n] = values


def make_loop_model(args, seq_len):
    """The closed loop's model for kvsim-dump's --model / --backend options; every layer must
    attend to all seq_len positions (a sliding-window layer would need its own mask)."""
    from kvsim.dump.llama2c_backend import looks_like_llama2c
    if args.backend == "llama2c" or (args.backend == "auto" and (looks_like_llama2c(args.model) or args.model.endswith(".bin"))):
        from kvsim.dump.llama2c_backend import find_llama2c_files
        from kvsim.dump.llama2c_tokenizer import Llama2cTokenizer
        checkpoint, tokenizer = find_llama2c_files(args.model, args.tokenizer)
        loop = Llama2cLoop(checkpoint)
        loop.tokenizer = Llama2cTokenizer(tokenizer)
        loop.kv = llama2c_kv
        loop.set_span_kv = llama2c_set_span_kv
        return loop
    from kvsim.dump.hf_backend import HFBackend
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
