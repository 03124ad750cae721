"""Capturing what a Hugging Face attention kernel sees, without depending on transformers here.

Two ways in, both recording post-RoPE q, k, v (K/V not repeated for GQA) and the attention output
before o_proj, for the block of new positions of each forward call:

- interface (transformers >= 4.48, and 5.x): attention modules call a function looked up by name,
  ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, query, key, value, mask, scaling=..)
  with query [b, H, n, d] and key/value [b, Hkv, T, d] (the whole cache, new positions last), and
  get back (output [b, n, H, d], weights). We wrap that function ("eager" is not in the registry:
  the modeling file calls its global eager_attention_forward, so that global is wrapped instead).
- legacy (older transformers): the modeling file's global apply_rotary_pos_emb(q, k, ...) returns
  post-RoPE q [b, H, n, d] and k [b, Hkv, n, d] before the cache; v comes from a forward hook on
  v_proj, the attention output from a pre-hook on o_proj, the layer from a pre-hook on the module.

Every call is also checked for what would make kvsim's replay (softmax over the causal prefix of
scale * q.k, optionally soft-capped) differ from what the model computed: attention sinks, an
attention mask that is not the plain causal one (sliding windows, bidirectional or chunked
attention, additive biases such as ALiBi), a KV cache that does not hold every earlier position,
and attention scales that differ between layers. Those refuse the dump (DumpError) instead of
writing a trace that would replay the wrong attention.
"""
import sys

import numpy as np

from kvsim.dump.errors import DumpError

O_PROJ_NAMES = ("o_proj", "out_proj", "dense", "c_proj")
QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("qkv_proj",), ("query_key_value",), ("Wqkv",), ("c_attn",))
MASK_ROWS = 1024  # rows of the attention mask compared with the causal mask at a time
CHECK_ROWS = 8    # query rows per call whose kernel output is recomputed as softmax attention
# Largest max-abs difference, relative to max |o| of the checked rows, between the kernel's
# output and softmax attention recomputed in float64 from the same q, k, v, by compute dtype.
CHECK_TOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 6e-2}


def attention_modules(model):
    """[(layer index, attention module)] in layer order: modules with q/k/v projections (separate
    or fused) and an output projection (layer_idx when the module has one, else order of
    appearance)."""
    found = []
    for _, m in model.named_modules():
        if any(all(hasattr(m, p) for p in names) for names in QKV_NAMES) and output_projection(m) is not None:
            found.append(m)
    out = []
    for i, m in enumerate(found):
        idx = getattr(m, "layer_idx", None)
        out.append((int(idx) if idx is not None else i, m))
    return sorted(out, key=lambda t: t[0])


def output_projection(module):
    for name in O_PROJ_NAMES:
        p = getattr(module, name, None)
        if p is not None and hasattr(p, "weight"):
            return p
    return None


def mask_deviation(mask, start, n, T):
    """None if the kernel's attention mask (bool: True = visible; float: additive, 0 = visible)
    for queries at positions start .. start+n-1 over keys 0 .. T-1 is exactly the causal mask;
    else a short description of how it differs."""
    import torch

    m = mask
    while m.dim() > 2:  # [b, heads or 1, n, T] -> [n, T]
        if m.shape[0] != 1:
            return "per-head attention masks" if m.dim() == 3 else f"a batch of {m.shape[0]} masks"
        m = m[0]
    if m.dim() != 2 or m.shape[0] != n or m.shape[1] < T:
        return f"an attention mask of shape {tuple(mask.shape)}"
    m = m[:, :T]
    keys = torch.arange(T, device=m.device)
    for r0 in range(0, n, MASK_ROWS):
        rows = m[r0:r0 + MASK_ROWS]
        pos = torch.arange(start + r0, start + r0 + rows.shape[0], device=m.device)
        causal = keys[None, :] <= pos[:, None]
        if rows.dtype == torch.bool:
            visible = rows
        else:
            visible = rows > torch.finfo(rows.dtype).min / 2
            bias = rows[visible]
            if bias.numel() and bool((bias != 0).any()):
                return "an additive attention bias (ALiBi or relative positions) in the mask"
        if bool((visible & ~causal).any()):
            return "attention to later positions (bidirectional or prefix attention)"
        if bool((causal & ~visible).any()):
            first = int((causal & ~visible).nonzero()[0, 0]) + r0
            seen = int(visible[first - r0].sum())
            return (f"a mask that hides earlier positions (position {start + first} sees {seen} of "
                    f"{start + first + 1} keys: sliding-window or chunked attention)")
    return None


class AttentionCapture:
    """Receives (layer, q, k_new, v_new, o) torch tensors and hands numpy slices to the recorder."""

    def __init__(self, recorder, num_heads, num_kv_heads, head_dim, warn):
        self.recorder = recorder
        self.H, self.Hkv, self.hd = num_heads, num_kv_heads, head_dim
        self.start = 0            # position of the first token of the current forward call
        self.scaling = None       # the logit scale the kernels were given, when they say
        self.softcap = None       # the logit soft-cap the kernels were given (Gemma 2)
        self.warn = warn
        self.warned = set()
        self.calls = {}           # layer -> number of captured calls (a check that capture works)

    def warn_once(self, key, msg):
        if key not in self.warned:
            self.warned.add(key)
            self.warn(msg)

    def check_call(self, layer, kwargs, mask, n, T):
        """What the kernel was asked to compute, beyond plain causal softmax attention."""
        if not self.recorder.wants(layer):
            return
        where = f"layer {layer} attention"
        for key in ("s_aux", "sinks"):
            if kwargs.get(key) is not None:
                raise DumpError(where, "the model uses attention sinks (per-head sink logits, "
                                       "gpt-oss style); kvsim's perturbation and bounds assume "
                                       "softmax over the cached keys only, so it cannot record it")
        if T != self.start + n:
            raise DumpError(where, f"the KV cache holds {T} positions at position {self.start + n}: "
                                   "the model keeps a sliding-window or compressed cache, which "
                                   "kvsim's full attention does not reproduce")
        sw = kwargs.get("sliding_window")
        if sw is not None and int(sw) > 0 and T > int(sw):
            raise DumpError(where, f"sliding-window attention (window {int(sw)}) over {T} "
                                   "positions; record only full-attention layers "
                                   "(--layers full-attention) or a prompt of at most "
                                   f"{int(sw)} positions")
        if mask is not None and hasattr(mask, "dtype"):
            deviation = mask_deviation(mask, self.start, n, T)
            if deviation:
                raise DumpError(where, f"the model's attention uses {deviation}; kvsim replays "
                                       "plain causal attention, so it cannot record it")
        s = kwargs.get("scaling")
        if s is not None:
            if self.scaling is None:
                self.scaling = float(s)
            elif abs(float(s) - self.scaling) > 1e-12 * abs(self.scaling):
                raise DumpError(where, f"attention scale {float(s)!r} differs from another "
                                       f"layer's {self.scaling!r}; the trace format has one scale")

    def check_output(self, layer, query, key, value, out, kwargs):
        """Recomputes CHECK_ROWS rows of the kernel's output as softmax attention over the causal
        prefix, with and (if the kernel was given one) without the logit soft-cap, and keeps the
        soft-cap that the kernel really applied (sdpa, for one, ignores it). Refuses the dump when
        neither reproduces the kernel: the model computes something kvsim cannot replay."""
        import torch

        if not self.recorder.wants(layer):
            return
        n, T = query.shape[2], key.shape[2]
        rows = sorted(set(np.linspace(0, n - 1, min(n, CHECK_ROWS)).round().astype(int).tolist()))
        q = query[0, :, rows].double()                       # [H, r, d]
        G = self.H // self.Hkv
        k = key[0].double().repeat_interleave(G, dim=0)      # [H, T, d]
        v = value[0].double().repeat_interleave(G, dim=0)
        got = out[0, :, rows].double()
        pos = torch.tensor([self.start + r for r in rows], device=q.device)
        hidden = torch.arange(T, device=q.device)[None, :] > pos[:, None]
        scale = kwargs.get("scaling")
        scale = float(scale) if scale is not None else self.hd ** -0.5
        cap = kwargs.get("softcap")
        caps = [float(cap), 0.0] if cap is not None and float(cap) > 0 else [0.0]
        logits = q @ k.transpose(1, 2) * scale
        tol = CHECK_TOL.get(str(query.dtype).replace("torch.", ""), 6e-2)
        size = float(got.abs().max()) or 1.0
        errors = []
        for c in caps:
            z = c * torch.tanh(logits / c) if c else logits
            ref = torch.softmax(z.masked_fill(hidden, float("-inf")), dim=-1) @ v
            err = float((ref - got).abs().max()) / size
            errors.append(err)
            if err <= tol:
                break
        else:
            raise DumpError(f"layer {layer} attention",
                            f"the kernel's output differs from softmax attention over the causal "
                            f"prefix by {min(errors):.2g} (relative; tolerance {tol:g}): this "
                            "model's attention has a feature kvsim does not replay")
        if len(caps) == 2 and c == 0.0:
            self.warn_once("softcap-ignored", f"the '{kwargs.get('_impl', 'attention')}' kernel "
                           "ignores the model's logit soft-capping (transformers then computes "
                           "plain softmax); the trace records what was computed. Use "
                           "--attn-implementation eager for the model's intended attention")
        if self.softcap is None:
            self.softcap = c
        elif c != self.softcap:
            raise DumpError(f"layer {layer} attention", f"logit soft-cap {c} differs from another "
                                                        f"layer's {self.softcap}")

    def on_attention(self, layer, query, key_new, value_new, out):
        """query, out [b, H, n, d]; key_new, value_new [b, Hkv, n, d] for the new positions."""
        import torch

        if layer is None:
            raise DumpError("attention capture", "attention module has no layer index")
        n = query.shape[2]
        want = {"query": (self.H, n, self.hd), "key": (self.Hkv, n, self.hd),
                "value": (self.Hkv, n, self.hd), "attention output": (self.H, n, self.hd)}
        for name, t in (("query", query), ("key", key_new), ("value", value_new),
                        ("attention output", out)):
            if t.shape[0] != 1 or tuple(t.shape[1:]) != want[name]:
                raise DumpError(f"layer {layer} attention", f"{name} has shape {tuple(t.shape)}, "
                                f"expected [1, {', '.join(map(str, want[name]))}] (batch 1, K/V "
                                "not repeated); this model's attention is not supported")
        self.calls[layer] = self.calls.get(layer, 0) + 1
        if not self.recorder.wants(layer):
            return
        _, rows = self.recorder.query_rows(self.start, n)
        idx = torch.as_tensor(rows, dtype=torch.long, device=query.device)

        def cpu(t):
            return t.detach().to(torch.float32).cpu().numpy()

        self.recorder.record(layer, self.start,
                             cpu(query[0].index_select(1, idx)),
                             cpu(key_new[0]), cpu(value_new[0]),
                             cpu(out[0].index_select(1, idx)), preselected=True)


def _output_to_bhnd(attn_output, H, n):
    """The kernels return [b, n, H, d]; a few custom ones return [b, H, n, d]."""
    if attn_output.shape[1] == n and attn_output.shape[2] == H:
        return attn_output.transpose(1, 2)
    if attn_output.shape[1] == H and attn_output.shape[2] == n:
        return attn_output
    raise DumpError("attention capture", f"attention output shape {tuple(attn_output.shape)} "
                                         "is neither [b, n, H, d] nor [b, H, n, d]")


def wrap_attention_function(original, capture, impl_name="attention"):
    def kvsim_record_attention(module, query, key, value, attention_mask, *args, **kwargs):
        n, T = query.shape[2], key.shape[2]
        layer = getattr(module, "layer_idx", None)
        capture.check_call(layer, kwargs, attention_mask, n, T)
        result = original(module, query, key, value, attention_mask, *args, **kwargs)
        attn_output = result[0] if isinstance(result, tuple) else result
        out = _output_to_bhnd(attn_output, query.shape[1], n)
        capture.check_output(layer, query, key, value, out, dict(kwargs, _impl=impl_name))
        # The kernel sees the whole cache; this call's own positions are the last n.
        capture.on_attention(layer, query, key[:, :, -n:], value[:, :, -n:], out)
        return result

    kvsim_record_attention.kvsim_original = original
    return kvsim_record_attention


def install_interface_capture(registry, impl_name, modeling_module, capture):
    """Wraps the attention function the model will call; returns a function that undoes it."""
    if impl_name == "eager" or impl_name not in registry:
        if modeling_module is None or not hasattr(modeling_module, "eager_attention_forward"):
            raise DumpError("attention capture", f"attention implementation '{impl_name}' is "
                            "neither registered nor the modeling file's eager_attention_forward")
        original = modeling_module.eager_attention_forward
        modeling_module.eager_attention_forward = wrap_attention_function(original, capture, "eager")
        return lambda: setattr(modeling_module, "eager_attention_forward", original)
    local = getattr(registry, "_local_mapping", None)
    had_local = local is not None and impl_name in local
    original = registry[impl_name]
    registry[impl_name] = wrap_attention_function(original, capture, impl_name)

    def restore():
        if local is not None and not had_local:
            del local[impl_name]  # transformers' AttentionInterface: drop our local override
        else:
            registry[impl_name] = original
    return restore


def install_legacy_capture(model, capture):
    """Hooks for modeling files with a global apply_rotary_pos_emb (transformers < 4.48)."""
    mods = attention_modules(model)
    if not mods:
        raise DumpError("attention capture", "no attention modules with q/k/v/o projections found")
    modeling = sys.modules[type(mods[0][1]).__module__]
    if not hasattr(modeling, "apply_rotary_pos_emb"):
        raise DumpError("attention capture", f"{modeling.__name__} has no apply_rotary_pos_emb; "
                                             "upgrade transformers to >= 4.48")
    if not hasattr(mods[0][1], "v_proj"):
        raise DumpError("attention capture", "fused q/k/v projections need transformers >= 4.48")
    state = {"layer": None, "pending": {}}
    handles = []
    original_rope = modeling.apply_rotary_pos_emb

    def rope(q, k, *args, **kwargs):
        q_embed, k_embed = original_rope(q, k, *args, **kwargs)
        state["pending"].setdefault(state["layer"], {}).update(q=q_embed, k=k_embed)
        return q_embed, k_embed

    for layer, m in mods:
        def pre(mod, args, layer=layer):
            state["layer"] = layer
        handles.append(m.register_forward_pre_hook(pre))

        def v_hook(mod, args, output, layer=layer):
            b, n, _ = output.shape
            v = output.view(b, n, capture.Hkv, capture.hd).transpose(1, 2)
            state["pending"].setdefault(layer, {})["v"] = v
        handles.append(m.v_proj.register_forward_hook(v_hook))

        def o_pre(mod, args, layer=layer):
            x = args[0]
            b, n, _ = x.shape
            got = state["pending"].pop(layer, {})
            if not all(key in got for key in "qkv"):
                raise DumpError(f"layer {layer} attention", "did not see q/k/v before o_proj")
            o = x.reshape(b, n, capture.H, capture.hd).transpose(1, 2)
            capture.on_attention(layer, got["q"], got["k"], got["v"], o)
        handles.append(output_projection(m).register_forward_pre_hook(o_pre))

    modeling.apply_rotary_pos_emb = rope

    def restore():
        modeling.apply_rotary_pos_emb = original_rope
        for h in handles:
            h.remove()
    return restore


def check_all_layers_seen(capture, layers):
    missing = [l for l in layers if capture.calls.get(l, 0) == 0]
    if missing:
        raise DumpError("attention capture", f"layers {missing} never reached the recording hook; "
                        "this model's attention path is not supported")


def to_numpy_weight(w):
    import torch
    return w.detach().to(torch.float32).cpu().numpy().astype(np.float32)
