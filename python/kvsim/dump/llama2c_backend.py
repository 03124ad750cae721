"""Backend for llama2.c legacy checkpoints (the numpy model in llama2c_model.py).

The model is tiny, so the whole run stays in numpy on the CPU; every layer's tensors go to the
recorder block by block (prefill, then one block per generated token), and the trace file writes
them immediately.
"""
import glob
import os

import numpy as np

from kvsim.dump import VERSION
from kvsim.dump.errors import DumpError
from kvsim.dump.llama2c_model import ROPE_THETA, Llama2cModel
from kvsim.dump.llama2c_tokenizer import Llama2cTokenizer


def find_llama2c_files(model, tokenizer=None):
    """(checkpoint, tokenizer) for a .bin path or a folder holding one checkpoint + tokenizer.bin."""
    if os.path.isdir(model):
        bins = sorted(p for p in glob.glob(os.path.join(model, "*.bin"))
                      if os.path.basename(p) != "tokenizer.bin")
        if len(bins) != 1:
            raise DumpError(model, f"--model: expected one llama2.c checkpoint (*.bin) in the "
                                   f"folder, found {len(bins)}")
        checkpoint = bins[0]
    else:
        checkpoint = model
    if not os.path.isfile(checkpoint):
        raise DumpError(checkpoint, "--model: no such file")
    tok = tokenizer or os.path.join(os.path.dirname(checkpoint), "tokenizer.bin")
    if not os.path.isfile(tok):
        raise DumpError(tok, "--tokenizer: no tokenizer.bin beside the checkpoint; pass --tokenizer")
    return checkpoint, tok


def looks_like_llama2c(model):
    if os.path.isfile(model):
        return model.endswith(".bin")
    if os.path.isdir(model):
        return (os.path.isfile(os.path.join(model, "tokenizer.bin"))
                and not os.path.isfile(os.path.join(model, "config.json")))
    return False


class Llama2cBackend:
    name = "llama2c"

    def __init__(self, model, tokenizer=None):
        checkpoint, tok_path = find_llama2c_files(model, tokenizer)
        self.model = Llama2cModel(checkpoint)
        self.tokenizer = Llama2cTokenizer(tok_path)
        self.tokenizer.check_vocab_size(self.model.cfg.vocab_size)
        c = self.model.cfg
        self.max_positions = c.seq_len
        self.vocab_size = c.vocab_size
        self.meta = {
            "model": model,
            "source": f"kvsim-dump {VERSION} (llama2.c numpy backend, numpy {np.__version__})",
            "num_layers": c.n_layers,
            "num_heads": c.n_heads,
            "num_kv_heads": c.n_kv_heads,
            "head_dim": c.head_dim,
            "hidden_size": c.dim,
            "rope_style": "interleaved",
            "rope_theta": ROPE_THETA,
            "attn_scale": float(self.model.scale),
        }

    def load(self, torch_dtype=None, device=None, attn_implementation=None):
        """The numpy model is already loaded (it is tiny); the HF backend loads here."""
        if device not in (None, "cpu"):
            raise DumpError("--device", f"{device}: the llama2.c backend runs in numpy on the CPU")
        return self

    def o_proj(self, layer):
        # llama2.c matmul(xout, x, w, n, d) computes xout[i] = sum_j w[i*n + j] x[j]: wo is
        # already (out = dim) x (in = n_heads*head_dim), the Hugging Face o_proj layout.
        return self.model.w["wo"][layer]

    def run(self, prompt_ids, n_new, recorder, progress=None, forced=None):
        for l in range(self.model.cfg.n_layers):
            recorder.o_proj(l, self.o_proj(l))

        def on_layer(l, start, q, k, v, o):
            recorder.record(l, start, q, k, v, o)

        def on_token(i, tok):
            if progress:
                progress(i + 1, n_new)

        return self.model.greedy(prompt_ids, n_new, on_layer, on_token, forced)
