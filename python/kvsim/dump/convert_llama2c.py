"""llama2.c legacy checkpoint -> a Hugging Face LlamaForCausalLM folder (config.json,
model.safetensors, generation_config.json, and the llama2.c tokenizer.bin beside them).

llama2.c rotates interleaved pairs (2i, 2i+1) of each head; transformers' Llama rotates halves
(i, i + d/2). Permuting the rows of wq and wk inside each head, row 2i + p -> p * d/2 + i, makes
the Hugging Face model compute the same attention: its post-RoPE q and k are the llama2.c ones
with the same permutation of components (dot products unchanged), v, o and logits identical.
Needs numpy and safetensors only (no torch).
"""
import json
import os
import shutil
import sys

import numpy as np

from kvsim.dump.errors import DumpError
from kvsim.dump.llama2c_model import RMS_EPS, ROPE_THETA, read_checkpoint


def half_order(head_dim):
    """new component c of a head holds old component half_order(d)[c]: [0, 2, 4, .., 1, 3, ..]."""
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def permute_heads(w, n_heads, head_dim):
    """Rows of a [n_heads * head_dim, in] projection reordered from interleaved to half pairs."""
    idx = np.concatenate([h * head_dim + half_order(head_dim) for h in range(n_heads)])
    return np.ascontiguousarray(w[idx])


def convert(checkpoint, out_dir, tokenizer=None):
    from safetensors.numpy import save_file

    cfg, w = read_checkpoint(checkpoint)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DumpError(out_dir, "output folder exists and is not empty")
    os.makedirs(out_dir, exist_ok=True)
    hd = cfg.head_dim
    tensors = {"model.embed_tokens.weight": w["token_embedding"],
               "model.norm.weight": w["rms_final"]}
    for l in range(cfg.n_layers):
        p = f"model.layers.{l}."
        tensors[p + "self_attn.q_proj.weight"] = permute_heads(w["wq"][l], cfg.n_heads, hd)
        tensors[p + "self_attn.k_proj.weight"] = permute_heads(w["wk"][l], cfg.n_kv_heads, hd)
        tensors[p + "self_attn.v_proj.weight"] = w["wv"][l]
        tensors[p + "self_attn.o_proj.weight"] = w["wo"][l]
        tensors[p + "mlp.gate_proj.weight"] = w["w1"][l]
        tensors[p + "mlp.down_proj.weight"] = w["w2"][l]
        tensors[p + "mlp.up_proj.weight"] = w["w3"][l]
        tensors[p + "input_layernorm.weight"] = w["rms_att"][l]
        tensors[p + "post_attention_layernorm.weight"] = w["rms_ffn"][l]
    if not cfg.shared_classifier:
        tensors["lm_head.weight"] = w["wcls"]
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": hd, "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.seq_len, "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_THETA, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "tie_word_embeddings": bool(cfg.shared_classifier),
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "do_sample": False}, f, indent=2)
    tok = tokenizer or os.path.join(os.path.dirname(checkpoint), "tokenizer.bin")
    if os.path.isfile(tok):
        shutil.copyfile(tok, os.path.join(out_dir, "tokenizer.bin"))
    return config


def main(argv=None):
    import argparse
    import sys
    p = argparse.ArgumentParser(prog="llama2c-to-hf", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="llama2.c legacy checkpoint (.bin)")
    p.add_argument("out", help="new folder for the Hugging Face model")
    p.add_argument("--tokenizer", help="llama2.c tokenizer.bin (default: beside the checkpoint)")
    args = p.parse_args(argv)
    try:
        if not os.path.isfile(args.checkpoint):
            raise DumpError(args.checkpoint, "no such file")
        c = convert(args.checkpoint, args.out, args.tokenizer)
    except DumpError as e:
        print(f"llama2c-to-hf: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: LlamaForCausalLM, {c['num_hidden_layers']} layers, {c['num_attention_heads']} "
          f"heads ({c['num_key_value_heads']} KV), hidden {c['hidden_size']}, vocab {c['vocab_size']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
