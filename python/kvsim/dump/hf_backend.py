"""Hugging Face backend: any causal LM that transformers loads (a saved model folder or a hub name
already in the local cache), on CUDA when available, else the CPU.

transformers is imported only here and only when this backend is used. Recording happens in the
attention kernel (hf_capture.py); generation is a plain greedy loop with the model's KV cache, so
a generated token's q/k/v are those the decode step computed, and prompt keys/values come from the
prefill.

What the trace needs beyond q/k/v/o (trace format v2, traces/README.md) comes from the config and
is confirmed by what the attention kernel is actually called with: the logit scale, Gemma 2's
logit soft-cap, the rotated part of each head (partial rotary), per-layer RoPE parameters and
sliding windows. Features kvsim cannot replay refuse the dump with a one-line error.
"""
import inspect
import json
import os
import sys

from kvsim.dump import VERSION
from kvsim.dump.errors import DumpError
from kvsim.dump.gguf_model import GGUFModel, check_architecture, is_gguf
from kvsim.dump.hf_capture import (AttentionCapture, attention_modules, check_all_layers_seen,
                         install_interface_capture, install_legacy_capture, output_projection,
                         to_numpy_weight)

MISSING_TRANSFORMERS = ("transformers is not installed; the Hugging Face backend needs it "
                        "(bash tools/install-deps.sh makes .venv with it)")
TORCH_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


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


def dtype_keyword(transformers):
    """from_pretrained's dtype argument: renamed from torch_dtype in transformers 4.56."""
    return "dtype" if _version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"


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

    def chat_frame(self, system=None):
        """(head ids, tail ids, head text, tail text): the model's chat template around one user
        message, with the generation prompt (the assistant turn's start) in the tail."""
        if not getattr(self.tok, "chat_template", None):
            raise DumpError("--chat", "the model's tokenizer has no chat template")
        marker = "\ue000kvsim-user-message\ue000"
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": marker}]
        try:
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:
            raise DumpError("--chat", f"the chat template failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        parts = text.split(marker)
        if len(parts) != 2:
            raise DumpError("--chat", "the chat template does not place the user message once")
        head, tail = parts
        return (self.encode_special(head), self.encode_special(tail), head, tail)

    def encode_special(self, text):
        """Template text: its special tokens (<|im_start|> ...) become their ids."""
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []


class IdsOnlyTokenizer:
    """For model folders without a tokenizer: prompts must come as --token-ids."""
    bos_id = None

    def encode(self, text, continuation=False):
        raise DumpError("--model", "the model folder has no tokenizer; give the prompt as "
                                   "--token-ids")

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def load_tokenizer(transformers, name, trust_remote_code):
    """The folder's transformers tokenizer; a llama2.c tokenizer.bin beside a converted
    checkpoint (tools/llama2c-to-hf); else ids only."""
    folder = os.path.isdir(name)
    if not folder or any(os.path.exists(os.path.join(name, f)) for f in TOKENIZER_FILES):
        try:
            return HFTokenizer(transformers.AutoTokenizer.from_pretrained(
                name, trust_remote_code=trust_remote_code))
        except (OSError, ValueError, KeyError, TypeError) as e:
            if not folder:
                raise DumpError(name, f"--model: cannot load its tokenizer: {str(e).splitlines()[0]}")
    if folder and os.path.isfile(os.path.join(name, "tokenizer.bin")):
        from kvsim.dump.llama2c_tokenizer import Llama2cTokenizer
        return Llama2cTokenizer(os.path.join(name, "tokenizer.bin"))
    return IdsOnlyTokenizer()


# -- what the config says about each layer's attention --------------------------------------------
def rope_parameters(cfg, layer_type=None):
    """(theta, rope parameters dict or None) of a layer type: transformers 5 keeps them in
    cfg.rope_parameters (keyed by layer type for models like Gemma 3), 4.x in rope_theta and
    rope_scaling."""
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        params = params.get(layer_type) or params.get("full_attention") or next(iter(params.values()))
    if isinstance(params, dict) and params:
        theta = params.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0
        scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
        if scaling.get("rope_type", scaling.get("type", "default")) == "default":
            scaling = None
        return float(theta), scaling
    theta = getattr(cfg, "rope_theta", None) or 10000.0
    return float(theta), getattr(cfg, "rope_scaling", None) or None


def partial_rotary_factor(cfg):
    params = getattr(cfg, "rope_parameters", None)
    f = params.get("partial_rotary_factor") if isinstance(params, dict) else None
    if f is None:
        f = getattr(cfg, "partial_rotary_factor", None)
    return 1.0 if f is None else float(f)


def layer_types(cfg, num_layers):
    t = getattr(cfg, "layer_types", None)
    return list(t) if t is not None and len(t) == num_layers else [None] * num_layers


def layer_window(cfg, module, layer_type):
    """The sliding window the layer's attention uses, or None for full attention."""
    if hasattr(module, "sliding_window"):
        w = module.sliding_window
    elif layer_type is not None:
        w = cfg.sliding_window if layer_type == "sliding_attention" else None
    else:
        w = getattr(cfg, "sliding_window", None)
        if getattr(cfg, "use_sliding_window", True) is False:
            w = None
    return int(w) if w else None


def arch_of(config):
    return ",".join(getattr(config, "architectures", None) or [config.model_type])


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
        L = int(cfg.num_hidden_layers)
        self.attn = attention_modules(model)
        if len(self.attn) != L:
            raise DumpError(model_name, f"found {len(self.attn)} attention modules with q/k/v/o "
                                        f"projections, config says {L} layers; this "
                                        "architecture is not supported")
        for layer, m in self.attn:
            if getattr(m, "sinks", None) is not None:
                raise DumpError(model_name, f"layer {layer} has attention sinks (per-head sink "
                                            "logits, gpt-oss style); kvsim's perturbation and "
                                            "bounds assume softmax over the cached keys only")
        scale = getattr(self.attn[0][1], "scaling", None)
        if scale is None and getattr(cfg, "query_pre_attn_scalar", None):
            scale = float(cfg.query_pre_attn_scalar) ** -0.5  # Gemma
        softcap = getattr(cfg, "attn_logit_softcapping", None) or 0.0
        if softcap and legacy:
            raise DumpError(model_name, "attention logit soft-capping needs transformers >= 4.48 "
                                        "to be recorded (its attention kernel receives the cap)")
        types = layer_types(cfg, L)
        theta, scaling = rope_parameters(cfg, "full_attention" if types[0] else None)
        self.meta = {
            "model": model_name,
            "source": f"kvsim-dump {VERSION} (Hugging Face backend{source_versions})",
            "num_layers": L,
            "num_heads": H,
            "num_kv_heads": Hkv,
            "head_dim": hd,
            "hidden_size": int(cfg.hidden_size),
            "rope_style": "half",
            "rope_theta": theta,
            "attn_scale": float(scale) if scale is not None else float(hd) ** -0.5,
        }
        if scaling:
            self.meta["rope_scaling"] = json.dumps(scaling, sort_keys=True, default=str)
        if softcap:
            self.meta["attn_logit_softcap"] = float(softcap)
        prf = partial_rotary_factor(cfg)
        if prf != 1.0:
            self.meta["rotary_dim"] = int(hd * prf)
        # Per-layer attributes (trace format v2): layer type, window, RoPE overrides.
        self.windows, self.layer_attrs = {}, {}
        for (layer, module), ltype in zip(self.attn, types):
            attrs = {}
            if ltype:
                attrs["attention_type"] = str(ltype)
            w = layer_window(cfg, module, ltype)
            self.windows[layer] = w
            if w:
                attrs["sliding_window"] = w
            lt, ls = rope_parameters(cfg, ltype)
            if (lt, ls) != (theta, scaling):
                attrs["rope_theta"] = lt
                attrs["rope_scaling"] = json.dumps(ls or {"rope_type": "default"}, sort_keys=True,
                                                   default=str)
            self.layer_attrs[layer] = attrs
        self.max_positions = getattr(cfg, "max_position_embeddings", None)
        self.vocab_size = getattr(cfg, "vocab_size", None)

    def full_attention_layers(self, seq_len):
        """Layers whose attention sees every earlier position of a seq_len-position trace."""
        return [l for l, _ in self.attn if not self.windows[l] or self.windows[l] >= seq_len]

    def check_layers(self, layers, seq_len):
        """Refuses, before any computation, layers whose sliding window is shorter than the trace."""
        for l in layers:
            w = self.windows.get(l)
            if w and w < seq_len:
                raise DumpError(f"layer {l}", f"sliding-window attention (window {w}) over "
                                              f"{seq_len} positions, which kvsim's full attention "
                                              "does not reproduce; use --layers full-attention "
                                              f"(layers {self.full_attention_layers(seq_len)}) or a "
                                              f"prompt of at most {w} positions")

    @classmethod
    def load(cls, name, torch_dtype="float32", device=None, attn_implementation="sdpa",
             trust_remote_code=False, tokenizer=None):
        """A saved model folder, a hub name in the local cache, or a GGUF file."""
        return HFSource(name, trust_remote_code, tokenizer).load(torch_dtype, device,
                                                                  attn_implementation)

    def run_press(self, press, ids):
        """Prefills ids with a kvpress press active; returns model layer -> {"kept": [Hkv, n]
        uint8, maybe "key_channels"} (kvpress_bridge.recording)."""
        import torch

        from kvsim.dump.kvpress_bridge import needs_attention_weights, recording
        impl = self.model.config._attn_implementation
        eager = needs_attention_weights(press) and impl != "eager"
        if eager:  # the press reads the attention matrix, which only eager attention returns
            self.model.set_attn_implementation("eager")
        device = next(self.model.parameters()).device
        try:
            with torch.no_grad(), recording(press) as found, press(self.model):
                self.model(input_ids=torch.tensor([list(ids)], device=device), use_cache=True)
        except DumpError:
            raise
        except Exception as e:  # a press's own assertion or lookup: one line, not a traceback
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DumpError("--kvpress-press", f"{type(press).__name__} failed on this model: {msg}")
        finally:
            if eager:
                self.model.set_attn_implementation(impl)
        return found

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

    def run(self, prompt_ids, n_new, recorder, progress=None, forced=None):
        """Prefills prompt_ids, then n_new positions: forced[i] (a token id) where given, else the
        greedy token; returns the ids fed after the prompt."""
        import torch

        m = self.meta
        capture = AttentionCapture(recorder, m["num_heads"], m["num_kv_heads"], m["head_dim"],
                                   self.warn)
        for layer, _ in self.attn:
            recorder.o_proj(layer, self.o_proj(layer))
            if recorder.wants(layer):
                recorder.layer_attrs(layer, self.layer_attrs[layer])
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
                    nxt = int(torch.argmax(logits)) if forced is None or forced[i] is None else int(forced[i])
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
        if capture.softcap is not None:  # what the kernels really computed (check_output)
            m.pop("attn_logit_softcap", None)
            if capture.softcap > 0:
                m["attn_logit_softcap"] = capture.softcap
        return generated


class HFSource:
    """A Hugging Face model before its weights load: the tokenizer and what the config says about
    positions and vocabulary, so that every prompt and length check runs before the (slow) load.
    name: a saved model folder, a hub name already in the local cache, or a GGUF file
    (gguf_model.py: converted once and cached). tokenizer: an optional transformers tokenizer
    folder that replaces the model's own."""

    def __init__(self, name, trust_remote_code=False, tokenizer=None):
        transformers = import_transformers()
        transformers.utils.logging.disable_progress_bar()  # stderr is for kvsim-dump's progress
        self.transformers = transformers
        self.name = name
        self.trust_remote_code = trust_remote_code
        self.gguf = None
        self.extra_meta = {}
        if is_gguf(name):
            self.gguf = GGUFModel(name)
            header = self.gguf.header
            check_architecture(header, transformers)
            self.tokenizer = load_tokenizer(transformers, tokenizer or self.gguf.tokenizer_folder(),
                                            False)
            self.max_positions = header.context_length
            self.vocab_size = _vocab_size(self.tokenizer)
            self.extra_meta = self.gguf.meta
            return
        looks_like_path = os.sep in name or name.startswith(".") or os.path.exists(name)
        if looks_like_path and not os.path.isdir(name):
            raise DumpError(name, "--model: no such model folder" if not os.path.exists(name)
                            else "--model: not a folder or a GGUF file (a Hugging Face model is a "
                                 "folder with config.json and weights; llama2.c checkpoints end in "
                                 ".bin; GGUF files in .gguf)")
        if looks_like_path and not os.path.isfile(os.path.join(name, "config.json")):
            raise DumpError(name, "--model: no config.json in the folder (not a saved Hugging "
                                  "Face model)")
        try:
            self.config = transformers.AutoConfig.from_pretrained(
                name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError, KeyError) as e:
            raise DumpError(name, f"--model: transformers {transformers.__version__} cannot read "
                                  f"its config: {str(e).splitlines()[0]}")
        cfg = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        self.tokenizer = load_tokenizer(transformers, tokenizer or name, trust_remote_code)
        self.max_positions = getattr(cfg, "max_position_embeddings", None)
        self.vocab_size = getattr(cfg, "vocab_size", None)
        dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
        if dtype is not None:
            self.extra_meta["source_precision"] = f"hf:{str(dtype).replace('torch.', '')}"

    def load(self, torch_dtype="float32", device=None, attn_implementation="sdpa"):
        """The model's weights on the device, wrapped as an HFBackend."""
        import torch
        transformers = self.transformers
        name = self.gguf.model_folder() if self.gguf else self.name
        config = self.config if not self.gguf else transformers.AutoConfig.from_pretrained(name)
        dtype = getattr(torch, TORCH_DTYPES[torch_dtype])
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DumpError("--device", f"{device}: torch {torch.__version__} sees no CUDA device")
        version = _version_tuple(transformers.__version__)
        dtype_kw = dtype_keyword(transformers)
        trust = self.trust_remote_code

        def from_pretrained(impl):
            return transformers.AutoModelForCausalLM.from_pretrained(
                name, attn_implementation=impl, trust_remote_code=trust, **{dtype_kw: dtype})
        try:
            try:
                model = from_pretrained(attn_implementation)
            except ValueError as e:
                # Some architectures (gpt-oss) have no sdpa path: their eager kernel is as exact.
                if attn_implementation != "sdpa" or "does not support an attention implementation" not in str(e):
                    raise
                print(f"kvsim-dump: note: {arch_of(config)} has no sdpa attention; using eager",
                      file=sys.stderr)
                model = from_pretrained("eager")
        except (OSError, ValueError, KeyError) as e:
            raise DumpError(self.name, f"--model: transformers {transformers.__version__} cannot load "
                                       f"architecture {arch_of(config)} as a causal LM: "
                                       f"{str(e).splitlines()[0].split('. ')[0]}")
        model = model.to(device).eval()
        registry = None
        legacy = version < (4, 48)
        if not legacy:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
            registry = ALL_ATTENTION_FUNCTIONS
        versions = f", transformers {transformers.__version__}, torch {torch.__version__}, {torch_dtype} on {device}"
        backend = HFBackend(model, self.tokenizer, self.name, registry=registry, legacy=legacy,
                            source_versions=versions)
        backend.meta.update(self.extra_meta)
        backend.device = device
        return backend


def _vocab_size(tokenizer):
    tok = getattr(tokenizer, "tok", None)
    return len(tok) if tok is not None else None
