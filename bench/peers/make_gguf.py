"""A random-weight bf16 GGUF of one of our model shapes, for llama.cpp's llama-bench.

Same shapes as our side of bench/peers/cpu_llamacpp.sh and gpu_llamacpp.sh: `llama3-1b`
is engram-run's --synthetic llama3-1b (meta-llama/Llama-3.2-1B, tied embeddings),
`llama3-8b` its --synthetic llama3-8b (meta-llama/Llama-3.1-8B, its own output head),
`lexicon` is the default model models/engram-lexicon's Qwen3 backbone (llama.cpp has no
Engram). Matrices are bf16 uniform with standard deviation 0.02 (as our synthetic models),
norms 1; the values repeat with a period of 2^24 (made once: an 8B model is written at
disk speed; a product's cost does not depend on its values). The vocabulary is
llama.cpp's "none" tokenizer with vocab_size dummy tokens (llama-bench feeds random token
ids, so no tokenizer is needed). llama3's rope scaling is left out (no rope_freqs tensor):
it changes the angles, not the work. Tensors are written one at a time, so memory stays
near the largest tensor.

    python make_gguf.py SHAPE OUT.gguf        (needs numpy and the `gguf` package, or
                                               llama.cpp's gguf-py on PYTHONPATH)
"""
import sys
import types

import numpy as np

try:
    import yaml  # noqa: F401  (gguf.metadata imports it; writing never uses it)
except ImportError:  # the GPU machine: numpy only, gguf-py from the llama.cpp tree
    sys.modules["yaml"] = types.ModuleType("yaml")
import gguf  # noqa: E402

# name: (arch, hidden, layers, heads, kv heads, head dim, ffn, vocab, rope theta, rms eps, tied head)
SHAPES = {
    "llama3-1b": ("llama", 2048, 16, 32, 8, 64, 8192, 128256, 500000.0, 1e-5, True),
    "llama3-8b": ("llama", 4096, 32, 32, 8, 128, 14336, 128256, 500000.0, 1e-5, False),
    "lexicon": ("qwen3", 256, 6, 4, 2, 64, 704, 8192, 10000.0, 1e-6, True),
}
POOL = 1 << 24  # distinct random values


def bf16_pool(rng):
    """POOL values uniform in [-a, a) with a = 0.02 * sqrt(3), as bf16 bits (truncated from f32)."""
    a = 0.02 * np.sqrt(3.0)
    f = (rng.random(POOL, dtype=np.float32) * np.float32(2 * a) - np.float32(a)).astype(np.float32)
    return (f.view(np.uint32) >> 16).astype(np.uint16)


def bf16_uniform(pool, rng, shape):
    """A tensor of the pool's values from a random start, repeated."""
    n = int(np.prod(shape))
    return np.resize(np.roll(pool, -int(rng.integers(POOL))), n).reshape(shape)


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SHAPES:
        sys.exit("usage: make_gguf.py {%s} OUT.gguf" % "|".join(SHAPES))
    arch, d, L, H, KV, hd, ffn, vocab, theta, eps, tied = SHAPES[sys.argv[1]]
    w = gguf.GGUFWriter(sys.argv[2], arch)
    w.add_block_count(L)
    w.add_context_length(8192)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ffn)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(eps)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("none")

    # (name, numpy shape (rows, cols) = GGUF's (cols, rows), bf16 or f32 ones);
    # tied: no output.weight, llama.cpp then ties the head to token_embd, as the models do
    tensors = [("token_embd.weight", (vocab, d), True), ("output_norm.weight", (d,), False)]
    if not tied:
        tensors.append(("output.weight", (vocab, d), True))
    for i in range(L):
        b = "blk.%d." % i
        tensors += [(b + "attn_norm.weight", (d,), False), (b + "attn_q.weight", (H * hd, d), True),
                    (b + "attn_k.weight", (KV * hd, d), True), (b + "attn_v.weight", (KV * hd, d), True),
                    (b + "attn_output.weight", (d, H * hd), True), (b + "ffn_norm.weight", (d,), False),
                    (b + "ffn_gate.weight", (ffn, d), True), (b + "ffn_up.weight", (ffn, d), True),
                    (b + "ffn_down.weight", (d, ffn), True)]
        if arch == "qwen3":
            tensors += [(b + "attn_q_norm.weight", (hd,), False), (b + "attn_k_norm.weight", (hd,), False)]
    for name, shape, is_bf16 in tensors:
        if is_bf16:
            w.add_tensor_info(name, shape, np.dtype(np.uint16), int(np.prod(shape)) * 2, gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    pool = bf16_pool(rng)
    for name, shape, is_bf16 in tensors:
        w.write_tensor_data(bf16_uniform(pool, rng, shape) if is_bf16 else np.ones(shape, np.float32))
    w.close()


if __name__ == "__main__":
    main()
