"""Capturing what a Hugging Face attention kernel sees, without depending on transformers here.

Two ways in, both recording post-RoPE q, k, v (K/V not repeated for GQA) and the attention output
before o_proj, for the block of new positions of each forward call:

- interface (transformers >= 4.48): attention modules call a function looked up by name,
  ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, query, key, value, mask, scaling=..)
  with query [b, H, n, d] and key/value [b, Hkv, T, d] (the whole cache, new positions last), and
  get back (output [b, n, H, d], weights). We wrap that function ("eager" is not in the registry:
  the modeling file calls its global eager_attention_forward, so that global is wrapped instead).
- legacy (older transformers): the modeling file's global apply_rotary_pos_emb(q, k, ...) returns
  post-RoPE q [b, H, n, d] and k [b, Hkv, n, d] before the cache; v comes from a forward hook on
  v_proj, the attention output from a pre-hook on o_proj, the layer from a pre-hook on the module.
"""
import sys

import numpy as np

from .errors import DumpError

O_PROJ_NAMES = ("o_proj", "out_proj", "dense", "c_proj")


def attention_modules(model):
    """[(layer index, attention module)] in layer order: modules with q/k/v projections and an
    output projection (layer_idx when the module has one, else order of appearance)."""
    found = []
    for _, m in model.named_modules():
        if all(hasattr(m, p) for p in ("q_proj", "k_proj", "v_proj")) and output_projection(m) is not None:
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


class AttentionCapture:
    """Receives (layer, q, k_new, v_new, o) torch tensors and hands numpy slices to the recorder."""

    def __init__(self, recorder, num_heads, num_kv_heads, head_dim, warn):
        self.recorder = recorder
        self.H, self.Hkv, self.hd = num_heads, num_kv_heads, head_dim
        self.start = 0            # position of the first token of the current forward call
        self.scaling = None       # the logit scale the kernel was given, when it says
        self.warn = warn
        self.warned = set()
        self.calls = {}           # layer -> number of captured calls (a check that capture works)

    def warn_once(self, key, msg):
        if key not in self.warned:
            self.warned.add(key)
            self.warn(msg)

    def note_kwargs(self, kwargs):
        s = kwargs.get("scaling")
        if s is not None:
            if self.scaling is not None and abs(float(s) - self.scaling) > 1e-12 * abs(self.scaling):
                self.warn_once("scaling", "layers use different attention scales; the trace "
                                          "records the first one")
            elif self.scaling is None:
                self.scaling = float(s)
        if kwargs.get("softcap") is not None:
            self.warn_once("softcap", "this model soft-caps attention logits; kvsim replays "
                                      "plain softmax, so replayed attention will differ")
        if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
            self.warn_once("sinks", "this model uses attention sinks; kvsim replays plain "
                                    "softmax, so replayed attention will differ")

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


def wrap_attention_function(original, capture):
    def kvsim_record_attention(module, query, key, value, attention_mask, *args, **kwargs):
        result = original(module, query, key, value, attention_mask, *args, **kwargs)
        attn_output = result[0] if isinstance(result, tuple) else result
        n = query.shape[2]
        capture.note_kwargs(kwargs)
        # The kernel sees the whole cache; this call's own positions are the last n.
        capture.on_attention(getattr(module, "layer_idx", None), query, key[:, :, -n:],
                             value[:, :, -n:], _output_to_bhnd(attn_output, query.shape[1], n))
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
        modeling_module.eager_attention_forward = wrap_attention_function(original, capture)
        return lambda: setattr(modeling_module, "eager_attention_forward", original)
    original = registry[impl_name]
    registry[impl_name] = wrap_attention_function(original, capture)

    def restore():
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
