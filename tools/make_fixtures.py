#!/usr/bin/env python3
"""Builds the tiny random golden checkpoints under tests/fixtures/models/ with
Hugging Face transformers (run on the GPU test machine, whose image has torch
and transformers; CPU is enough). For each model it saves the checkpoint as
transformers writes it, plus golden.json (prompt ids, greedy continuation,
top-1 margins) and logits.f32 (last prompt position, raw little-endian f32).

The reference is computed in float32 on the CPU from the saved weights as they
load back (bf16/f16 checkpoints are upcast exactly), so the C engine, which
computes in f32, must agree to ~1e-5. Weights are drawn with a larger spread
than training init and every norm weight and bias is perturbed, so a wrong
bias, norm or rope shows up in the logits and greedy argmaxes have margins.

Mixture-of-experts fixtures (Qwen3MoeForCausalLM) randomise what init leaves
flat (routers, experts) and reject seeds whose expert choice is nearly tied.

Usage: python3 tools/make_fixtures.py OUT_DIR [NAME...]   (default: every model)
Torch on the CPU is enough; transformers 5.x for the MoE models.
"""
import json, os, sys

import torch
import transformers
from transformers import (AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config,
                          Qwen3Config, Qwen3MoeConfig)

VOCAB = 512
PROMPT_LEN = 12
NEW_TOKENS = 24
MIN_MARGIN = 2e-3  # top1 - top2 logit gap required at every greedy step
MIN_ROUTER_GAP = 1e-4  # k-th minus (k+1)-th expert probability, every token of every router call


def specs():
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  initializer_range=0.12, bos_token_id=1, eos_token_id=2)
    yield "llama3", LlamaConfig(**common, rms_norm_eps=1e-5, rope_theta=500000.0,
                                tie_word_embeddings=False,
                                rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                  low_freq_factor=1.0, high_freq_factor=4.0,
                                                  original_max_position_embeddings=32)), torch.float32, None
    yield "qwen2", Qwen2Config(**common, rms_norm_eps=1e-6, rope_theta=10000.0,
                               tie_word_embeddings=True), torch.bfloat16, "40KB"
    yield "qwen3", Qwen3Config(**{**common, "num_key_value_heads": 1}, head_dim=32, rms_norm_eps=1e-6,
                               rope_theta=1000000.0, tie_word_embeddings=False,
                               attention_bias=False), torch.float16, None
    yield "mistral", MistralConfig(**common, rms_norm_eps=1e-5, rope_theta=10000.0,
                                   sliding_window=8, tie_word_embeddings=False), torch.float32, None
    # Mixture of experts: sparse and dense layers mixed (mlp_only_layers, decoder_sparse_step),
    # both router normalisations, f32 and bf16.
    moe = dict(common, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6, rope_theta=1000000.0,
               tie_word_embeddings=False, attention_bias=False, moe_intermediate_size=48,
               num_experts=8)
    yield "qwen3_moe", Qwen3MoeConfig(**{**moe, "num_hidden_layers": 3}, num_experts_per_tok=2,
                                      norm_topk_prob=True, mlp_only_layers=[1],
                                      decoder_sparse_step=1), torch.float32, None
    yield "qwen3_moe_bf16", Qwen3MoeConfig(**moe, num_experts_per_tok=3, norm_topk_prob=False,
                                           mlp_only_layers=[], decoder_sparse_step=2), torch.bfloat16, None


def perturb(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights and biases
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif ".mlp.gate." in name or ".experts." in name:
                # Routers and experts: drawn here rather than left to init (a router at
                # zero ties every expert); routers wide enough that top-k is clear.
                std = 0.5 if ".mlp.gate." in name else 0.12
                p.copy_(std * torch.randn(p.shape, generator=gen))


ROUTER_GAPS = []  # smallest gap between the k-th and (k+1)-th expert, per router call


def watch_routers(model):
    """Records, for every router call, the smallest gap between the last chosen and the first
    unchosen expert probability: a seed whose routing is nearly tied is rejected, because
    rounding could flip the choice."""
    for mod in model.modules():
        if type(mod).__name__.endswith("TopKRouter"):
            def hook(m, args, out):
                probs = torch.softmax(out[0].double(), dim=-1)
                top = torch.topk(probs, m.top_k + 1, dim=-1).values
                ROUTER_GAPS.append(float((top[:, -2] - top[:, -1]).min()))
            mod.register_forward_hook(hook)


def greedy(model, ids):
    """Greedy decode by full forward passes; returns tokens and per-step margins."""
    seq = list(ids)
    margins = []
    for _ in range(NEW_TOKENS):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1].double()
        top = torch.topk(logits, 2)
        margins.append(float(top.values[0] - top.values[1]))
        seq.append(int(top.indices[0]))
    return seq[len(ids):], margins


def build(name, cfg, dtype, shard, out, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    perturb(model, gen)
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    kw = {"max_shard_size": shard} if shard else {}
    model.to(dtype).save_pretrained(d, safe_serialization=True, **kw)
    # Reference: reload what was saved, compute in f32 with eager attention.
    ref = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32,
                                               attn_implementation="eager").eval()
    prompt = torch.randint(3, VOCAB, (PROMPT_LEN,), generator=gen).tolist()
    ROUTER_GAPS.clear()
    watch_routers(ref)
    with torch.no_grad():
        logits = ref(torch.tensor([prompt])).logits[0, -1].float()
    tokens, margins = greedy(ref, prompt)
    # Cross-check with generate() (KV-cache path of transformers itself).
    gen_out = ref.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, PROMPT_LEN:].tolist()
    return d, prompt, logits, tokens, margins, gen_out


def main():
    out = sys.argv[1]
    only = sys.argv[2:]  # names to build (default: all)
    for name, cfg, dtype, shard in specs():
        if only and name not in only:
            continue
        for seed in range(100):
            d, prompt, logits, tokens, margins, gen_out = build(name, cfg, dtype, shard, out, 1000 + seed)
            gap = min(ROUTER_GAPS, default=1.0)
            if min(margins) >= MIN_MARGIN and gen_out == tokens and gap >= MIN_ROUTER_GAP:
                break
            print(f"{name}: seed {1000 + seed} rejected (min margin {min(margins):.2e}, "
                  f"generate agrees: {gen_out == tokens}, router gap {gap:.1e})")
        logits.numpy().astype("<f4").tofile(os.path.join(d, "logits.f32"))
        golden = dict(prompt_ids=prompt, greedy_ids=tokens, min_margin=min(margins),
                      min_router_gap=min(ROUTER_GAPS, default=None),
                      margins=margins, saved_dtype=str(dtype).replace("torch.", ""),
                      transformers=transformers.__version__, torch=torch.__version__)
        with open(os.path.join(d, "golden.json"), "w") as f:
            json.dump(golden, f, indent=1)
        print(f"{name}: seed ok, min margin {min(margins):.3e}, files {sorted(os.listdir(d))}")


if __name__ == "__main__":
    main()
