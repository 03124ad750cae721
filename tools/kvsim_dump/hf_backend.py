"""Hugging Face backend: any causal LM that transformers loads, on CUDA when available.

transformers is imported only here and only when this backend is used. Recording happens in the
attention kernel (hf_capture.py); generation is a plain greedy loop with the model's KV cache, so
a generated token's q/k/v are those the decode step computed, and prompt keys/values come from the
prefill.
"""
import inspect
import json
import sys

from . import VERSION
from .errors import DumpError
from .hf_capture import (AttentionCapture, attention_modules, check_all_layers_seen,
                         install_interface_capture, install_legacy_capture, output_projection,
                         to_numpy_weight)

MISSING_TRANSFORMERS = ("transformers is not installed; the Hugging Face backend needs it "
                        "(pip install transformers on your GPU box)")
TORCH_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}


def import_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise DumpError("", MISSING_TRANSFORMERS)
    return transformers


def _version_tuple(v):
    parts = []
    for p in v.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class HFTokenizer:
    """Adapts a transformers tokenizer to encode(piece) / decode(ids) / bos_id."""

    def __init__(self, tok):
        self.tok = tok
        # BOS only if the tokenizer itself would prepend it (Llama does, Qwen has none).
        probe = list(tok("a", add_special_tokens=True)["input_ids"])
        bos = tok.bos_token_id
        self.bos_id = bos if (bos is not None and probe and probe[0] == bos) else None
        self.eos_id = tok.eos_token_id

    def encode(self, text, continuation=False):
        # Pieces are tokenized separately; sentencepiece tokenizers may start each with a
        # prefix space, which only shifts a piece boundary by one token.
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=True)


class HFBackend:
    name = "hf"

    def __init__(self, model, tokenizer, model_name, registry=None, legacy=False, warn=None,
                 source_versions=""):
        """model: a causal LM (torch module, config attribute); tokenizer: encode/decode/bos_id.
        registry: the ALL_ATTENTION_FUNCTIONS mapping (interface capture) unless legacy."""
        self.model = model
        self.tokenizer = tokenizer
        self.registry = registry
        self.legacy = legacy
        self.warn = warn or (lambda m: print(f"kvsim-dump: warning: {m}", file=sys.stderr))
        cfg = model.config
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self.config = cfg
        H = int(cfg.num_attention_heads)
        Hkv = int(getattr(cfg, "num_key_value_heads", None) or H)
        hd = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // H)
        self.attn = attention_modules(model)
        if len(self.attn) != int(cfg.num_hidden_layers):
            raise DumpError(model_name, f"found {len(self.attn)} attention modules with q/k/v/o "
                                        f"projections, config says {cfg.num_hidden_layers} layers")
        scale = getattr(self.attn[0][1], "scaling", None)
        if scale is None and getattr(cfg, "query_pre_attn_scalar", None):
            scale = float(cfg.query_pre_attn_scalar) ** -0.5  # Gemma
        rope_params = getattr(cfg, "rope_parameters", None) or {}
        theta = getattr(cfg, "rope_theta", None) or rope_params.get("rope_theta") or 10000.0
        scaling = getattr(cfg, "rope_scaling", None)
        self.meta = {
            "model": model_name,
            "source": f"kvsim-dump {VERSION} (Hugging Face backend{source_versions})",
            "num_layers": int(cfg.num_hidden_layers),
            "num_heads": H,
            "num_kv_heads": Hkv,
            "head_dim": hd,
            "hidden_size": int(cfg.hidden_size),
            "rope_style": "half",
            "rope_theta": float(theta),
            "attn_scale": float(scale) if scale is not None else float(hd) ** -0.5,
        }
        if scaling:
            self.meta["rope_scaling"] = json.dumps(scaling, sort_keys=True, default=str)
        self.max_positions = getattr(cfg, "max_position_embeddings", None)
        if getattr(cfg, "partial_rotary_factor", 1.0) not in (None, 1.0):
            self.warn("this model rotates only part of each head (partial_rotary_factor); the "
                      "trace says rope_style 'half' for the whole head")
        sw = getattr(cfg, "sliding_window", None)
        if sw and getattr(cfg, "use_sliding_window", True) is not False:
            self.warn(f"this model has sliding-window layers (window {sw}); kvsim replays full "
                      "causal attention over the stored keys")

    @classmethod
    def load(cls, name, torch_dtype="float32", device=None, attn_implementation="sdpa",
             trust_remote_code=False):
        transformers = import_transformers()
        import torch
        dtype = getattr(torch, TORCH_DTYPES[torch_dtype])
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            tok = transformers.AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                name, torch_dtype=dtype, attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise DumpError(name, f"--model: transformers cannot load it: {str(e).splitlines()[0]}")
        model = model.to(device).eval()
        version = _version_tuple(transformers.__version__)
        registry = None
        legacy = version < (4, 48)
        if not legacy:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
            registry = ALL_ATTENTION_FUNCTIONS
        versions = f", transformers {transformers.__version__}, torch {torch.__version__}, {torch_dtype} on {device}"
        return cls(model, HFTokenizer(tok), name, registry=registry, legacy=legacy,
                   source_versions=versions)

    def o_proj(self, layer):
        return to_numpy_weight(output_projection(dict(self.attn)[layer]).weight)

    def _forward(self, ids, past, position):
        import torch
        kwargs = dict(input_ids=ids, use_cache=True)
        if past is not None:
            kwargs["past_key_values"] = past
            kwargs["position_ids"] = torch.tensor([[position]], device=ids.device)
        params = inspect.signature(self.model.forward).parameters
        # Only the last position's logits are needed; a long prompt's full logits can be huge.
        if "logits_to_keep" in params:
            kwargs["logits_to_keep"] = 1
        elif "num_logits_to_keep" in params:
            kwargs["num_logits_to_keep"] = 1
        out = self.model(**kwargs)
        return out.logits[0, -1], out.past_key_values

    def run(self, prompt_ids, n_new, recorder, progress=None):
        import torch

        m = self.meta
        capture = AttentionCapture(recorder, m["num_heads"], m["num_kv_heads"], m["head_dim"],
                                   self.warn)
        for layer, _ in self.attn:
            recorder.o_proj(layer, self.o_proj(layer))
        if self.legacy:
            restore = install_legacy_capture(self.model, capture)
        else:
            impl = (getattr(self.config, "_attn_implementation", None)
                    or getattr(self.model.config, "_attn_implementation", None) or "eager")
            modeling = sys.modules[type(self.attn[0][1]).__module__]
            restore = install_interface_capture(self.registry, impl, modeling, capture)
        device = next(self.model.parameters()).device
        P = len(prompt_ids)
        generated = []
        try:
            with torch.no_grad():
                capture.start = 0
                logits, past = self._forward(torch.tensor([prompt_ids], device=device), None, 0)
                for i in range(n_new):
                    nxt = int(torch.argmax(logits))
                    generated.append(nxt)
                    capture.start = P + i
                    logits, past = self._forward(torch.tensor([[nxt]], device=device), past, P + i)
                    if progress:
                        progress(i + 1, n_new)
        finally:
            restore()
        check_all_layers_seen(capture, [l for l, _ in self.attn if recorder.wants(l)])
        if capture.scaling is not None:
            m["attn_scale"] = capture.scaling
        return generated
