#!/usr/bin/env python3
"""Writes a random-weight checkpoint in Hugging Face layout (config.json +
model.safetensors) with NumPy only, no torch: for scripts/serve's demo model
and for benchmarks at real shapes. Weights are N(0, std) rounded to the chosen
dtype; the model is nonsense, the shapes and bytes are real.

Usage: gen_checkpoint.py OUT_DIR [--arch llama|qwen2|qwen3|mistral] [--hidden N]
       [--layers N] [--heads N] [--kv-heads N] [--head-dim N] [--ffn N] [--vocab N]
       [--dtype bf16|f16|f32] [--tie] [--seed S] [--eos ID] [--tokenizer DIR]
       [--engram --tokenizer DIR [--engram-layers 1,3] [--engram-vocab N]
        [--engram-embed N] [--engram-heads N] [--engram-ngram N]]

--tokenizer DIR copies DIR's tokenizer.json / tokenizer_config.json in
(--vocab must be at least the tokenizer's size). With --engram the checkpoint
carries Engram modules (ENGRAM.md section 6) at the given layers and needs the
tokenizer (the compressed tokenizer is built from it at load). Table rows follow the reference prime search,
computed by tools/engram_primes.py.
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

from engram_primes import head_primes

ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
         "mistral": "MistralForCausalLM"}


def to_dtype(x, dtype):
    x = x.astype(np.float32)
    if dtype == "f32":
        return x.tobytes(), "F32"
    if dtype == "f16":
        return x.astype("<f2").tobytes(), "F16"
    u = x.view(np.uint32)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")  # round to nearest even
    return u.tobytes(), "BF16"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--arch", default="llama", choices=ARCHS)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=0)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--max-pos", type=int, default=4096)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--tie", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eos", type=int, default=2, help="config.json's eos_token_id (the tokenizer's, with --tokenizer)")
    ap.add_argument("--engram", action="store_true")
    ap.add_argument("--tokenizer")
    ap.add_argument("--engram-layers", default="1")
    ap.add_argument("--engram-vocab", type=int, default=20000)
    ap.add_argument("--engram-embed", type=int, default=256)
    ap.add_argument("--engram-heads", type=int, default=8)
    ap.add_argument("--engram-ngram", type=int, default=3)
    a = ap.parse_args()
    if a.engram and not a.tokenizer:
        ap.error("--engram needs --tokenizer DIR")
    hd = a.head_dim or a.hidden // a.heads
    rng = np.random.default_rng(a.seed)
    tensors = {}

    def mat(name, rows, cols, std=0.05):
        tensors[name] = ((rows, cols), rng.standard_normal((rows, cols), dtype=np.float32) * std)

    def vec(name, n, base=1.0):
        tensors[name] = ((n,), base + 0.1 * rng.standard_normal(n, dtype=np.float32))

    mat("model.embed_tokens.weight", a.vocab, a.hidden, 1.0)
    for i in range(a.layers):
        p = f"model.layers.{i}."
        vec(p + "input_layernorm.weight", a.hidden)
        vec(p + "post_attention_layernorm.weight", a.hidden)
        mat(p + "self_attn.q_proj.weight", a.heads * hd, a.hidden)
        mat(p + "self_attn.k_proj.weight", a.kv_heads * hd, a.hidden)
        mat(p + "self_attn.v_proj.weight", a.kv_heads * hd, a.hidden)
        mat(p + "self_attn.o_proj.weight", a.hidden, a.heads * hd)
        if a.arch == "qwen2":
            for t, n in (("q", a.heads), ("k", a.kv_heads), ("v", a.kv_heads)):
                vec(p + f"self_attn.{t}_proj.bias", n * hd, 0.0)
        if a.arch == "qwen3":
            vec(p + "self_attn.q_norm.weight", hd)
            vec(p + "self_attn.k_norm.weight", hd)
        mat(p + "mlp.gate_proj.weight", a.ffn, a.hidden)
        mat(p + "mlp.up_proj.weight", a.ffn, a.hidden)
        mat(p + "mlp.down_proj.weight", a.hidden, a.ffn)
    engram = None
    if a.engram:
        layer_ids = [int(x) for x in a.engram_layers.split(",")]
        orders = a.engram_ngram - 1
        engram = dict(engram_vocab_size=[a.engram_vocab] * orders, max_ngram_size=a.engram_ngram,
                      n_embed_per_ngram=a.engram_embed, n_head_per_ngram=a.engram_heads,
                      layer_ids=layer_ids, pad_id=2, seed=0, kernel_size=4, hc_mult=1)
        D, E = a.engram_embed // a.engram_heads, orders * a.engram_embed
        primes = head_primes(engram["engram_vocab_size"], a.engram_heads, layer_ids)
        for lid in layer_ids:
            rows = sum(primes[lid])
            p = f"model.layers.{lid}.engram."
            mat(p + "multi_head_embedding.embedding.weight", rows, D, 1.0)
            mat(p + "value_proj.weight", a.hidden, E)
            vec(p + "value_proj.bias", a.hidden, 0.0)
            mat(p + "key_projs.0.weight", a.hidden, E)
            vec(p + "key_projs.0.bias", a.hidden, 0.0)
            vec(p + "norm1.0.weight", a.hidden)
            vec(p + "norm2.0.weight", a.hidden)
            vec(p + "short_conv.norms.0.weight", a.hidden)
            tensors[p + "short_conv.conv.weight"] = (
                (a.hidden, 1, 4), 0.3 * rng.standard_normal((a.hidden, 1, 4), dtype=np.float32))
    vec("model.norm.weight", a.hidden)
    if not a.tie:
        mat("lm_head.weight", a.vocab, a.hidden)

    header, blobs, off = {}, [], 0
    for name, (shape, x) in tensors.items():
        raw, dt = to_dtype(x, a.dtype)
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    cfg = {"architectures": [ARCHS[a.arch]], "model_type": a.arch, "vocab_size": a.vocab,
           "hidden_size": a.hidden, "intermediate_size": a.ffn, "num_hidden_layers": a.layers,
           "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads, "head_dim": hd,
           "max_position_embeddings": a.max_pos, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "hidden_act": "silu", "tie_word_embeddings": a.tie, "bos_token_id": 1, "eos_token_id": a.eos}
    if engram:
        cfg["engram"] = engram
    if a.tokenizer:  # Engram needs it; without Engram it serves text
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(os.path.join(a.tokenizer, f), os.path.join(a.out, f))
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    print(f"wrote {a.out}: {off / 1e6:.1f} MB of {a.dtype} weights")


if __name__ == "__main__":
    main()
