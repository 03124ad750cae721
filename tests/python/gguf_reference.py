"""An independent reference for GGUF Llama models (not a test module itself): our own
dequantization of the tensor blocks (ggml's Q4_0, Q4_1, Q8_0, F16, F32 layouts) and the numpy
Llama forward pass of the llama2.c backend, run on the file's tensors as llama.cpp stores them.

Nothing here goes through transformers or the gguf package's dequantizer: the gguf package only
parses the file (offsets, shapes, types, metadata). llama.cpp's converter permutes the q/k
projections of Hugging Face Llama checkpoints so that interleaved RoPE (pairs 2i, 2i+1) applies;
the llama2.c forward pass uses exactly that RoPE, so the GGUF tensors are used as stored.
"""
import numpy as np

# Bytes per block of 32 values and the decoder of a [n_blocks, bytes] uint8 array.
BLOCK = 32


def _f16(raw, lo):
    return raw[:, lo:lo + 2].copy().view(np.float16).astype(np.float32)  # [n, 1]


def dequant_q8_0(raw):
    """34 bytes: float16 scale d, 32 int8 q; x = d * q."""
    d = _f16(raw, 0)
    q = raw[:, 2:34].view(np.int8).astype(np.float32)
    return d * q


def dequant_q4_0(raw):
    """18 bytes: float16 d, 16 bytes of nibbles (low nibbles are values 0..15, high 16..31);
    x = d * (nibble - 8)."""
    d = _f16(raw, 0)
    qs = raw[:, 2:18]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return d * q


def dequant_q4_1(raw):
    """20 bytes: float16 d, float16 m, 16 bytes of nibbles as Q4_0; x = d * nibble + m."""
    d, m = _f16(raw, 0), _f16(raw, 2)
    qs = raw[:, 4:20]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    return d * q + m


BLOCK_DECODERS = {"Q8_0": (34, dequant_q8_0), "Q4_0": (18, dequant_q4_0), "Q4_1": (20, dequant_q4_1)}


def dequantize(tensor):
    """A gguf.ReaderTensor as float32 numpy in (rows, row length) order: GGUF shape [ne0, ne1]
    has ne0 contiguous, so a linear layer's [in, out] is numpy (out, in), Hugging Face's layout."""
    kind = tensor.tensor_type.name
    shape = tuple(int(n) for n in reversed(tensor.shape))
    data = np.asarray(tensor.data)
    if kind == "F32":
        return data.astype(np.float32).reshape(shape)
    if kind == "F16":
        return data.view(np.float16).astype(np.float32).reshape(shape)
    size, decode = BLOCK_DECODERS[kind]
    raw = data.reshape(-1).view(np.uint8).reshape(-1, size)
    return decode(raw).reshape(shape)


def load_llama(path):
    """(numpy Llama2cModel over the file's dequantized tensors, metadata dict)."""
    import gguf

    from kvsim.dump.llama2c_model import Llama2cConfig, Llama2cModel

    r = gguf.GGUFReader(path, "r")

    def field(key):
        return r.fields[key].contents()
    arch = field("general.architecture")
    assert arch == "llama", arch
    t = {x.name: x for x in r.tensors}
    L = int(field("llama.block_count"))
    dim = int(field("llama.embedding_length"))
    H, Hkv = int(field("llama.attention.head_count")), int(field("llama.attention.head_count_kv"))
    hidden = int(field("llama.feed_forward_length"))
    emb = dequantize(t["token_embd.weight"])
    cfg = Llama2cConfig(dim, hidden, L, H, Hkv, emb.shape[0], int(field("llama.context_length")),
                        "output.weight" not in t)

    def stack(name):
        return np.stack([dequantize(t[f"blk.{l}.{name}.weight"]) for l in range(L)])
    w = {"token_embedding": emb, "rms_att": stack("attn_norm"), "wq": stack("attn_q"),
         "wk": stack("attn_k"), "wv": stack("attn_v"), "wo": stack("attn_output"),
         "rms_ffn": stack("ffn_norm"), "w1": stack("ffn_gate"), "w2": stack("ffn_down"),
         "w3": stack("ffn_up"), "rms_final": dequantize(t["output_norm.weight"])}
    w["wcls"] = dequantize(t["output.weight"]) if "output.weight" in t else emb
    model = Llama2cModel(path, weights=(cfg, w), rope_theta=float(field("llama.rope.freq_base")),
                         rms_eps=float(field("llama.attention.layer_norm_rms_epsilon")))
    return model, {"wo": w["wo"]}
