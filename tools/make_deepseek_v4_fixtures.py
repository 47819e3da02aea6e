#!/usr/bin/env python3
"""Builds the tiny random DeepSeek-V4 golden checkpoints (transformers' DeepseekV4ForCausalLM)
under tests/fixtures/models/, in the style of tools/make_fixtures.py: a tiny random model whose
trivially initialised parameters are randomised, seeds rejected when the greedy argmax, a learned
router or the Lightning indexer top-k is nearly tied, and, per fixture directory,

  config.json, model.safetensors   the checkpoint (see below for the naming),
  golden.json                      prompt_ids, greedy_ids (24 tokens), per-step top1-top2 margins,
                                   every tie gap checked, clamp counts, cache cross-checks, versions,
  logits.f32                       logits of the last prompt position, [vocab] little-endian f32,
  logits_all.f32                   logits of every prompt position, [prompt_len, vocab] row-major
                                   little-endian f32 (to check chunked prefill position by position).

Fixtures (all: vocab 512, hidden 64, 4 layers, hc_mult 4, 20 Sinkhorn iterations, 4 query heads of
head_dim 32 with partial rotary r = 8 (qk_rope_head_dim 8, rotary on the LAST 8 channels,
interleaved), q_lora_rank 32, o_groups 2 x o_lora_rank 32, sliding_window 8, 8 routed experts of
width 32 + one shared expert, top-2, routed_scaling_factor != 1, small swiglu_limit so both clamps
fire, prompt of 44 tokens):

deepseek_v4
    f32 weights, saved by save_pretrained() with its default naming (DEEPSEEK_V4.md 4.3: release
    names under `model.`, `head.weight`, `attn.norm` for the KV norm, per-expert w1/w2/w3,
    tid2eid I64). layer_types [sliding, CSA (m=4), HCA (m=8), CSA (m=4)], mlp_layer_types
    [hash_moe, moe, hash_moe, moe]. Lightning indexer with 8 heads of dim 16 and index_topk 4, while
    the prompt's last position has 11 causal CSA entries, so top-k really selects (from position 19
    on). Compress RoPE is YaRN (factor 4, original_max_position_embeddings 256, beta 32/1, theta
    160000: pair 0 keeps its frequency, pair 1 is half interpolated, pairs 2-3 divided by 4); the
    sliding layer uses plain RoPE (theta 10000). hc_eps 1e-2 so that every eps placement of the
    hyper-connections shows in the logits.
deepseek_v4_groups8
    As deepseek_v4 but 8 query heads in 8 output groups of o_lora_rank 16 (one head a group), another
    seed: what tensor parallelism's split by output group needs to run at 8 ranks.
deepseek_v4_fp8
    Same shape, another seed and hc_eps 1e-6 (the release value), written in the release's
    quantized formats (DEEPSEEK_V4.md 4.4) with quantization_config {"quant_method": "fp8",
    "activation_scheme": "dynamic", "weight_block_size": [128, 128], "scale_fmt": "ue8m0",
    "expert_dtype": "fp4"}:
      * FP8 e4m3 `<name>.weight` [N, K] (F8_E4M3) + `<name>.scale` [ceil(N/128), ceil(K/128)]
        (F8_E8M0) for attn.wq_a, attn.wq_b, attn.wkv, attn.wo_a, attn.wo_b, attn.indexer.wq_b and
        ffn.shared_experts.w1/w2/w3. Every such matrix here is at most 128 x 128, so each has ONE
        partial block and a [1, 1] scale (transformers derives the block from the scale grid,
        rows // scale_rows, which agrees with the release's ceil(N/128) grid only in that case;
        a partial block spanning more than one scale row would be read differently).
      * FP4 e2m1 routed experts `ffn.experts.E.w{1,2,3}.weight` [N, K/2] (I8, two codes per byte,
        low nibble = even column) + `ffn.experts.E.w{1,2,3}.scale` [N, K/32] (F8_E8M0). All 16
        codes occur, including -0 (code 8).
      * bf16 (no scale): embed, head, router ffn.gate.weight, the compressor and indexer-compressor
        wkv/wgate, indexer.weights_proj. f32: norm weights, hc_*, ape, attn_sink, ffn.gate.bias.
        ffn.gate.tid2eid is I32 here (I64 in deepseek_v4).
    Names are otherwise those of save_pretrained (model. prefix, release leaf names). The golden
    logits come from loading this checkpoint back with transformers'
    FineGrainedFP8Config(dequantize=True) on the CPU in float32; the tool checks that every loaded
    parameter equals this tool's own decode of the stored bytes (bit-exact), so no tensor was
    silently left at its init.

Verification done by this tool, per fixture (a seed failing any check is rejected):
  * greedy decode by repeated full forwards; min top1-top2 margin >= 2e-3 over the 24 steps;
  * model.generate() (transformers' own cache) returns the same 24 tokens (and its per-step logits
    are compared with the full forwards', recorded as generate_logits_max_abs_diff);
  * every learned router call (all forwards recorded: full, generate, incremental, chunked): the
    k-th vs (k+1)-th biased score (sqrtsoftplus(logit) + e_score_correction_bias) gap >= 1e-4;
  * every indexer call, every query position t with more causal entries floor((t+1)/m) than
    index_topk: the k-th vs (k+1)-th score gap among the causal entries >= 1e-5, exact equal
    scores (including the zeros a ReLU produces when every head is negative) counting as gap 0.
    Exact zero scores are made (almost) impossible by construction (`make_index_scores_nonzero`:
    a shared offset direction in the embeddings that index head 0's query and every index key
    read on a non-rotary channel, so head 0's q.k is positive for nearly every pair while the
    other 7 heads keep mixed signs and the ReLU still matters); zero scores are still counted
    (index_zero_scores: none occurred) and any boundary tie would still be rejected;
  * the swiglu clamps fire: counts of clamped routed/shared gate (above) and up (both sides)
    pre-activations in the prompt forward are recorded and must be > 0;
  * transformers' incremental decoding (prefill of the first half of the prompt, then one token
    at a time with its DeepseekV4 cache) matches the full forward within 1e-4 at every position
    (recorded; a mismatch is reported, not hidden), and so does a chunked prefill whose chunks
    end at and away from window boundaries.

Usage: python tools/make_deepseek_v4_fixtures.py OUT_DIR [NAME...]   (default: every fixture)
Torch on the CPU is enough; transformers 5.25 (DeepseekV4ForCausalLM), accelerate for the FP8 load.
"""
import json, math, os, shutil, sys, tempfile

import torch
import torch.nn.functional as F
import transformers
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM, DynamicCache

VOCAB = 512
PROMPT_LEN = 44
NEW_TOKENS = 24
MIN_MARGIN = 2e-3       # top1 - top2 logit gap, every greedy step
MIN_ROUTER_GAP = 1e-4   # k-th minus (k+1)-th biased router score, every token of every router call
MIN_INDEX_GAP = 1e-5    # k-th minus (k+1)-th causal indexer score, every query of every indexer call
INCR_TOL = 1e-4         # incremental / chunked decoding vs full forward
CHUNKS = [3, 5, 8, 12, 16]  # chunked prefill split: ends at 3, 8, 16, 28, 44 (away from / at windows)
# make_index_scores_nonzero: embedding offset (x sqrt(H)), gains of the index key / q_lat / index query reads
OFFSET, KV0, Q0, QB0 = 2.0, 3.0, 3.0, 3.0

CSA, HCA, SWA = "compressed_sparse_attention", "heavily_compressed_attention", "sliding_attention"

QUANT_CONFIG = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [128, 128],
                "scale_fmt": "ue8m0", "expert_dtype": "fp4"}


def base_config(hc_eps, swiglu_limit, routed_scaling_factor, **over):
    kw = dict(
        vocab_size=VOCAB, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=4, head_dim=32, partial_rotary_factor=0.25, q_lora_rank=32,
        o_groups=2, o_lora_rank=32, sliding_window=8,
        layer_types=[SWA, CSA, HCA, CSA], compress_rates={CSA: 4, HCA: 8},
        index_n_heads=8, index_head_dim=16, index_topk=4,
        n_routed_experts=8, num_experts_per_tok=2, mlp_layer_types=["hash_moe", "moe", "hash_moe", "moe"],
        routed_scaling_factor=routed_scaling_factor, swiglu_limit=swiglu_limit, scoring_func="sqrtsoftplus",
        rope_theta=10000.0, compress_rope_theta=160000.0,
        rope_parameters=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=256,
                             beta_fast=32.0, beta_slow=1.0),
        max_position_embeddings=1024, hc_mult=4, hc_sinkhorn_iters=20, hc_eps=hc_eps, rms_norm_eps=1e-6,
        bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, initializer_range=0.1)
    kw.update(over)  # other layer schedules (tools/make_deepseek_v41_fixture.py)
    return DeepseekV4Config(**kw)


def specs():
    # name, config, quantized, first seed
    yield "deepseek_v4", base_config(1e-2, 2.5, 1.75), False, 4000
    yield "deepseek_v4_fp8", base_config(1e-6, 3.0, 2.5), True, 5000
    # 8 heads in 8 output groups (one head a group, as deepseek-v4-flash's 64 in 8 are 8 a group):
    # tensor parallelism's split by output group at 2, 4 and 8 ranks (tests/unit/test_tensor_parallel.c)
    yield "deepseek_v4_groups8", base_config(1e-2, 2.5, 1.75, num_attention_heads=8, o_groups=8,
                                             o_lora_rank=16), False, 6000


# ----------------------------------------------------------------------------------------------
# Randomisation


def perturb(model, gen):
    """Redraws every parameter: linear weights with std gain/sqrt(fan_in) so activations are O(1),
    and everything init leaves at 0, 1 or constant (sinks, ape, hc base/scale, router bias,
    tid2eid, norm weights) randomised so that a wrong placement shows in the logits."""
    cfg = model.config

    def rn(shape, std):
        return std * torch.randn(shape, generator=gen)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=gen))
            elif name.endswith("attn_hc.fn") or name.endswith("ffn_hc.fn") or name.endswith("hc_head.hc_fn"):
                p.copy_(rn(p.shape, 1.2 / math.sqrt(p.shape[1])))  # mixes ~ N(0, 1.44) on the normed input
            elif name.endswith("hc.base") or name.endswith("hc_head.hc_base"):
                p.copy_(rn(p.shape, 0.7))
            elif name.endswith("hc.scale") or name.endswith("hc_head.hc_scale"):
                p.copy_(0.4 + 1.2 * torch.rand(p.shape, generator=gen))
            elif name.endswith(".sinks"):
                p.copy_(rn(p.shape, 1.0))
            elif name.endswith("position_bias"):
                p.copy_(rn(p.shape, 0.7))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(rn(p.shape, 1.0))
            elif name == "lm_head.weight":
                p.copy_(rn(p.shape, 2.5 / math.sqrt(p.shape[1])))
            elif name.endswith("mlp.gate.weight"):
                p.copy_(rn(p.shape, 2.0 / math.sqrt(p.shape[1])))
            elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
                p.copy_(rn(p.shape, 1.5 / math.sqrt(p.shape[-1])))
            elif p.dim() == 2:
                p.copy_(rn(p.shape, 1.5 / math.sqrt(p.shape[1])))
            else:
                raise RuntimeError(f"parameter left unperturbed: {name} {tuple(p.shape)}")
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(rn(b.shape, 0.15))
            elif name.endswith("tid2eid"):
                rows = [torch.randperm(cfg.n_routed_experts, generator=gen)[: cfg.num_experts_per_tok]
                        for _ in range(b.shape[0])]
                b.copy_(torch.stack(rows).to(b.dtype))
    make_index_scores_nonzero(model, gen)


def make_index_scores_nonzero(model, gen):
    """Indexer score = sum_h w_h * ReLU(q_h . k) * dI^-0.5 is exactly 0 whenever every head is
    negative, and such zeros tie with each other at the top-k boundary (DEEPSEEK_V4.md 2.6).
    Construction that makes exact zeros (almost) impossible while keeping the ReLU active on the
    other heads: every embedding row gets a shared offset along a random unit direction u (a
    consistent "massive activation" direction that the doubly-stochastic residual mixing keeps);
    in each CSA layer, channel 0 (non-rotary) of both halves of the indexer compressor's kv_proj
    and row 0 of q_a_proj read that direction, and index head 0's query channel 0 reads q_lat[0].
    Then index head 0's q.k carries a positive term for nearly every (query, entry) pair, so a
    score is exactly 0 only through an exact cancellation of the signed head weights."""
    cfg = model.config
    H = cfg.hidden_size
    u = torch.randn(H, generator=gen)
    u = u / u.norm()
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(OFFSET * math.sqrt(H) * u)
        for layer in model.model.layers:
            attn = layer.self_attn
            idx = getattr(attn.compressor, "indexer", None)
            if idx is None:
                continue
            un = u * layer.input_layernorm.weight
            un = un / un.norm()
            d = idx.head_dim
            idx.kv_proj.weight[0] = KV0 * un
            idx.kv_proj.weight[d] = KV0 * un
            idx.kv_norm.weight[0] = abs(float(idx.kv_norm.weight[0]))
            attn.q_a_proj.weight[0] = Q0 * un
            attn.q_a_norm.weight[0] = abs(float(attn.q_a_norm.weight[0]))
            idx.q_b_proj.weight[0].zero_()
            idx.q_b_proj.weight[0, 0] = QB0


# ----------------------------------------------------------------------------------------------
# Watches: router gaps, indexer gaps, swiglu clamps


class Watch:
    def __init__(self):
        self.router_gaps = []
        self.index_gaps = []
        self.index_zero_scores = 0
        self.index_rows_selecting = 0
        self.index_rows = 0
        self.counting_clamps = False
        self.clamps = dict(routed_gate=0, routed_up=0, shared_gate=0, shared_up=0, routed_values=0,
                           shared_values=0)

    def reset(self):
        self.__init__()


WATCH = Watch()


def install_watches(model):
    cfg = model.config
    limit = cfg.swiglu_limit
    for mod in model.modules():
        cls = type(mod).__name__
        if cls == "DeepseekV4TopKRouter":
            def router_hook(m, args, out):
                logits = out[0].double()
                biased = torch.sqrt(F.softplus(logits)) + m.e_score_correction_bias.double()
                top = torch.topk(biased, m.top_k + 1, dim=-1).values
                WATCH.router_gaps.append(float((top[:, -2] - top[:, -1]).min()))
                # the choice transformers made must be the f64 top-k
                chosen = set(map(tuple, out[2].sort(dim=-1).values.tolist()))
                ref = set(map(tuple, torch.topk(biased, m.top_k, dim=-1).indices.sort(dim=-1).values.tolist()))
                assert chosen == ref or WATCH.router_gaps[-1] < MIN_ROUTER_GAP
            mod.register_forward_hook(router_hook)
        elif cls == "DeepseekV4Indexer":
            def pre_hook(m, args):
                m.scorer._positions = args[2]
                m.scorer._rate = m.compress_rate
                m.scorer._topk = m.index_topk
            mod.register_forward_pre_hook(pre_hook)

            def scorer_hook(m, args, out):
                scores = out.double()  # [B, S, T]
                pos = m._positions
                for b in range(scores.shape[0]):
                    for s in range(scores.shape[1]):
                        t = int(pos[b, s])
                        c = min((t + 1) // m._rate, scores.shape[2])
                        WATCH.index_rows += 1
                        row = scores[b, s, :c]
                        WATCH.index_zero_scores += int((row == 0).sum())
                        if c > m._topk:
                            v = torch.sort(row, descending=True).values
                            WATCH.index_gaps.append(float(v[m._topk - 1] - v[m._topk]))
                            WATCH.index_rows_selecting += 1
            mod.scorer.register_forward_hook(scorer_hook)
        elif cls == "DeepseekV4Experts":
            orig = mod._apply_gate

            def counting_gate(gate_up, _orig=orig):
                if WATCH.counting_clamps:
                    g, u = gate_up.chunk(2, dim=-1)
                    WATCH.clamps["routed_gate"] += int((g > limit).sum())
                    WATCH.clamps["routed_up"] += int((u.abs() > limit).sum())
                    WATCH.clamps["routed_values"] += g.numel()
                return _orig(gate_up)
            mod._apply_gate = counting_gate
        elif cls == "DeepseekV4MLP":
            def gate_hook(m, args, out):
                if WATCH.counting_clamps:
                    WATCH.clamps["shared_gate"] += int((out > limit).sum())
                    WATCH.clamps["shared_values"] += out.numel()

            def up_hook(m, args, out):
                if WATCH.counting_clamps:
                    WATCH.clamps["shared_up"] += int((out.abs() > limit).sum())
            mod.gate_proj.register_forward_hook(gate_hook)
            mod.up_proj.register_forward_hook(up_hook)


# ----------------------------------------------------------------------------------------------
# Quantized formats (DEEPSEEK_V4.md 4.4)

FP8_NAMES = ("attn.wq_a.weight", "attn.wq_b.weight", "attn.wkv.weight", "attn.wo_a.weight",
             "attn.wo_b.weight", "attn.indexer.wq_b.weight", "ffn.shared_experts.w1.weight",
             "ffn.shared_experts.w2.weight", "ffn.shared_experts.w3.weight")
BF16_NAMES = ("embed_tokens.weight", "head.weight", "ffn.gate.weight", "compressor.wkv.weight",
              "compressor.wgate.weight", "indexer.weights_proj.weight")
FP4_LUT = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                        -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float32)
E8M0 = torch.float8_e8m0fnu


def ue8m0_pow2_at_least(x):
    """Smallest power of two >= x (x > 0), as (exponent byte, f32 value)."""
    e = torch.ceil(torch.log2(x.clamp(min=2.0 ** -126)))
    return (e + 127).to(torch.uint8), torch.pow(2.0, e)


def quantize_fp8_block(w):
    """FP8 e4m3 with 128x128 block ue8m0 scales; returns (q [N,K] f8e4m3, scale [ceil(N/128),
    ceil(K/128)] e8m0, dequantized f32)."""
    n, k = w.shape
    sr, sc = -(-n // 128), -(-k // 128)
    q = torch.empty(n, k, dtype=torch.float8_e4m3fn)
    byte = torch.empty(sr, sc, dtype=torch.uint8)
    deq = torch.empty(n, k)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            b, s = ue8m0_pow2_at_least(blk.abs().max() / 448.0)
            qb = (blk / s).clamp(-448, 448).to(torch.float8_e4m3fn)
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = qb
            deq[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = qb.float() * s
            byte[i, j] = b
    return q, byte.view(E8M0), deq


def quantize_fp4(w):
    """FP4 e2m1, one ue8m0 scale per 32 consecutive K values of a row, two codes per byte with the
    low nibble the even column; returns (packed [N, K/2] int8, scale [N, K/32] e8m0, dequant f32)."""
    n, k = w.shape
    assert k % 32 == 0
    g = w.view(n, k // 32, 32)
    byte, s = ue8m0_pow2_at_least(g.abs().amax(-1) / 6.0)
    x = g / s.unsqueeze(-1)
    mags = FP4_LUT[:8]
    code = (x.abs().unsqueeze(-1) - mags).abs().argmin(-1)  # nearest magnitude (first on a tie)
    code = code + 8 * (x < 0).long()                          # sign bit, -0 included
    code = code.view(n, k)
    deq = (FP4_LUT[code].view(n, k // 32, 32) * s.unsqueeze(-1)).view(n, k)
    packed = (code[:, 0::2] | (code[:, 1::2] << 4)).to(torch.uint8).view(torch.int8)
    return packed, byte.view(E8M0), deq


def decode_fp4(packed, scale):
    u = packed.view(torch.uint8).long()
    codes = torch.stack([u & 15, u >> 4], dim=-1).view(packed.shape[0], -1)
    s = torch.pow(2.0, scale.view(torch.uint8).float() - 127).repeat_interleave(32, dim=1)
    return FP4_LUT[codes] * s


def decode_fp8(q, scale):
    s = torch.pow(2.0, scale.view(torch.uint8).float() - 127)
    s = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[: q.shape[0], : q.shape[1]]
    return q.float() * s


def write_quantized(src_dir, out_dir, cfg_json):
    """Rewrites save_pretrained()'s f32 checkpoint in src_dir into the release formats in
    out_dir. Returns {name: (stored dtype, shape)} and the f32 values every stored tensor decodes
    to (by this tool's own decoder), keyed by checkpoint name."""
    from safetensors.torch import load_file, save_file
    sd = load_file(os.path.join(src_dir, "model.safetensors"))
    out, decoded = {}, {}
    fp4_codes = torch.zeros(16, dtype=torch.long)
    for name, t in sd.items():
        if ".ffn.experts." in name and name.endswith(".weight"):
            packed, scale, deq = quantize_fp4(t.float())
            assert torch.equal(decode_fp4(packed, scale), deq)
            u = packed.view(torch.uint8).long()
            fp4_codes += torch.bincount(torch.cat([(u & 15).flatten(), (u >> 4).flatten()]), minlength=16)
            out[name], out[name[: -len("weight")] + "scale"] = packed, scale
            decoded[name] = deq
        elif name.endswith(FP8_NAMES):
            q, scale, deq = quantize_fp8_block(t.float())
            assert torch.equal(decode_fp8(q, scale), deq)
            out[name], out[name[: -len("weight")] + "scale"] = q, scale
            decoded[name] = deq
        elif name.endswith(BF16_NAMES):
            out[name] = t.to(torch.bfloat16)
            decoded[name] = out[name].float()
        elif name.endswith("tid2eid"):
            out[name] = t.to(torch.int32)
            decoded[name] = t
        else:
            assert t.dtype == torch.float32, name
            out[name] = t
            decoded[name] = t
    assert bool((fp4_codes > 0).all()), f"not every FP4 code occurs: {fp4_codes.tolist()}"
    os.makedirs(out_dir, exist_ok=True)
    save_file(out, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    cfg_json = dict(cfg_json, quantization_config=dict(QUANT_CONFIG), dtype="bfloat16")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2, sort_keys=True)
    layout = {k: (str(v.dtype).replace("torch.", ""), list(v.shape)) for k, v in out.items()}
    return layout, decoded, fp4_codes.tolist()


# in-memory (transformers) name of a save_pretrained checkpoint name, for the weight check
def to_memory_name(name):
    n = name
    for a, b in ((".attn.", ".self_attn."), (".ffn.", ".mlp."), (".indexer.compressor.", ".compressor.indexer."),
                 (".attn_norm.", ".input_layernorm."), (".ffn_norm.", ".post_attention_layernorm."),
                 (".hc_attn_fn", ".attn_hc.fn"), (".hc_attn_base", ".attn_hc.base"),
                 (".hc_attn_scale", ".attn_hc.scale"), (".hc_ffn_fn", ".ffn_hc.fn"),
                 (".hc_ffn_base", ".ffn_hc.base"), (".hc_ffn_scale", ".ffn_hc.scale"),
                 (".attn_sink", ".sinks"), (".indexer.weights_proj.", ".compressor.indexer.scorer.weights_proj."),
                 (".indexer.wq_b.", ".compressor.indexer.q_b_proj."), (".norm.", ".kv_norm."),
                 (".ape", ".position_bias"), (".wq_a.", ".q_a_proj."), (".self_attn.wq_b.", ".self_attn.q_b_proj."),
                 (".wkv.", ".kv_proj."), (".wgate.", ".gate_proj."), (".wo_a.", ".o_a_proj."),
                 (".wo_b.", ".o_b_proj."), (".q_norm.", ".q_a_norm."), (".gate.bias", ".gate.e_score_correction_bias"),
                 (".shared_experts.w1.", ".shared_experts.gate_proj."),
                 (".shared_experts.w2.", ".shared_experts.down_proj."),
                 (".shared_experts.w3.", ".shared_experts.up_proj.")):
        n = n.replace(a, b)
    if n == "head.weight":
        n = "lm_head.weight"
    if n == "model.kv_norm.weight":  # the final norm (".norm." above is meant for the KV norms)
        n = "model.norm.weight"
    return n


def check_loaded_weights(model, decoded, cfg):
    """Every parameter/buffer of the loaded model must equal this tool's decode of the stored
    bytes (routed experts restacked as transformers does)."""
    state = dict(model.state_dict())
    seen = set()
    E = cfg.n_routed_experts
    for name, val in decoded.items():
        if ".ffn.experts." in name:
            continue
        mem = to_memory_name(name)
        assert mem in state, f"{name} -> {mem} not in the model"
        assert torch.equal(state[mem].float(), val.float()), f"{mem} differs after load"
        seen.add(mem)
    for li in range(cfg.num_hidden_layers):
        p = f"model.layers.{li}.ffn.experts"
        gu = torch.stack([torch.cat([decoded[f"{p}.{e}.w1.weight"], decoded[f"{p}.{e}.w3.weight"]], 0)
                          for e in range(E)])
        dn = torch.stack([decoded[f"{p}.{e}.w2.weight"] for e in range(E)])
        m = f"model.layers.{li}.mlp.experts"
        assert torch.equal(state[f"{m}.gate_up_proj"], gu), f"{m}.gate_up_proj differs after load"
        assert torch.equal(state[f"{m}.down_proj"], dn), f"{m}.down_proj differs after load"
        seen |= {f"{m}.gate_up_proj", f"{m}.down_proj"}
    missing = [k for k in state if k not in seen]
    assert not missing, f"parameters not covered by the checkpoint: {missing}"


# ----------------------------------------------------------------------------------------------
# Reference computations


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float()


def greedy(model, ids):
    """Greedy decode by full forward passes; returns tokens, per-step margins and logits."""
    seq, margins, steps = list(ids), [], []
    for _ in range(NEW_TOKENS):
        logits = full_logits(model, seq)[-1]
        steps.append(logits)
        top = torch.topk(logits.double(), 2)
        margins.append(float(top.values[0] - top.values[1]))
        seq.append(int(top.indices[0]))
    return seq[len(ids):], margins, torch.stack(steps)


def run_chunks(model, ids, chunks):
    """Feeds ids in consecutive chunks with transformers' cache; returns every position's logits
    and the cache."""
    cache = DynamicCache(config=model.config)
    outs, pos = [], 0
    with torch.no_grad():
        for n in chunks:
            piece = ids[pos:pos + n]
            out = model(torch.tensor([piece]), cache=cache, use_cache=True,
                        position_ids=torch.arange(pos, pos + len(piece)).unsqueeze(0))
            outs.append(out.logits[0].float())
            pos += len(piece)
    assert pos == len(ids)
    return torch.cat(outs, 0), cache


def entry_counts(cache, cfg):
    counts = {}
    for i, t in enumerate(cfg.layer_types):
        if t == SWA:
            counts[str(i)] = {"type": t}
        else:
            layer = cache.layers[i]
            counts[str(i)] = {"type": t, "rate": cfg.compress_rates[t], **dict(layer.entry_count)}
    return counts


def evaluate(model, prompt):
    """All checks on one loaded reference model; returns a dict for golden.json and whether the
    seed is accepted."""
    cfg = model.config
    install_watches(model)
    WATCH.reset()
    WATCH.counting_clamps = True
    logits_all = full_logits(model, prompt)
    WATCH.counting_clamps = False
    clamps = dict(WATCH.clamps)
    tokens, margins, step_logits = greedy(model, prompt)
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        g = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                           eos_token_id=None, pad_token_id=0, output_logits=True,
                           return_dict_in_generate=True)
    gen_out = g.sequences[0, PROMPT_LEN:].tolist()
    gen_logits_diff = float((torch.cat(g.logits, 0).float() - step_logits).abs().max())
    # transformers' incremental decoding: first half prefill, then one token at a time
    half = PROMPT_LEN // 2
    incr, cache = run_chunks(model, prompt, [half] + [1] * (PROMPT_LEN - half))
    incr_diff = (incr - logits_all).abs().max(dim=-1).values
    chunk, _ = run_chunks(model, prompt, CHUNKS)
    chunk_diff = float((chunk - logits_all).abs().max())
    res = dict(
        logits_all=logits_all, tokens=tokens, margins=margins, gen_out=gen_out, gen_logits_diff=gen_logits_diff,
        min_margin=min(margins),
        min_router_gap=min(WATCH.router_gaps), router_calls=len(WATCH.router_gaps),
        min_index_gap=min(WATCH.index_gaps, default=float("inf")), index_rows_selecting=WATCH.index_rows_selecting,
        index_rows=WATCH.index_rows, index_zero_scores=WATCH.index_zero_scores,
        clamps=clamps,
        incremental=dict(prefill_len=half, then="one token at a time",
                         max_abs_diff_last=float(incr_diff[-1]), max_abs_diff_any=float(incr_diff.max()),
                         ok=bool(incr_diff.max() <= INCR_TOL)),
        chunked=dict(chunks=CHUNKS, max_abs_diff_any=chunk_diff, ok=chunk_diff <= INCR_TOL),
        compressed_entries_end_of_prompt=entry_counts(cache, cfg),
    )
    reasons = []
    if res["min_margin"] < MIN_MARGIN:
        reasons.append(f"margin {res['min_margin']:.2e}")
    if gen_out != tokens:
        reasons.append("generate() disagrees")
    if res["min_router_gap"] < MIN_ROUTER_GAP:
        reasons.append(f"router gap {res['min_router_gap']:.1e}")
    if res["min_index_gap"] < MIN_INDEX_GAP:
        reasons.append(f"index gap {res['min_index_gap']:.1e}")
    if min(clamps["routed_gate"], clamps["routed_up"], clamps["shared_gate"], clamps["shared_up"]) == 0:
        reasons.append(f"a swiglu clamp never fired {clamps}")
    return res, reasons


def build(name, cfg, quantized, seed, out):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DeepseekV4ForCausalLM(cfg).float().eval()
    perturb(model, gen)
    prompt = torch.randint(3, VOCAB, (PROMPT_LEN,), generator=gen).tolist()
    d = os.path.join(out, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    extra = {}
    if not quantized:
        model.save_pretrained(d)
        ref = DeepseekV4ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        src_sd = model.state_dict()
        for k, v in ref.state_dict().items():
            assert torch.equal(v, src_sd[k]), f"{k} changed through save/load"
    else:
        from transformers import FineGrainedFP8Config
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            with open(os.path.join(tmp, "config.json")) as f:
                cfg_json = json.load(f)
            layout, decoded, fp4_codes = write_quantized(tmp, d, cfg_json)
        ref, info = DeepseekV4ForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="eager", output_loading_info=True,
            quantization_config=FineGrainedFP8Config(dequantize=True, scale_fmt="ue8m0", expert_dtype="fp4"))
        ref = ref.eval()
        bad = {k: v for k, v in info.items() if v and k != "error_msgs"}
        assert not bad and not info.get("error_msgs"), f"loading info: {info}"
        check_loaded_weights(ref, decoded, cfg)
        extra = dict(layout=layout, fp4_code_counts=fp4_codes)
    res, reasons = evaluate(ref, prompt)
    gc = os.path.join(d, "generation_config.json")  # not part of the fixture (as in make_fixtures.py)
    if os.path.exists(gc):
        os.remove(gc)
    return d, prompt, res, reasons, extra


def notes_for(name, cfg, quantized):
    common = (
        "Tiny random DeepseekV4ForCausalLM (transformers %s, torch %s, CPU, float32, eager). "
        "layer_types %s with compress_rates CSA m=%d, HCA m=%d, sliding_window %d, index_topk %d "
        "(< the %d causal CSA entries at the end of the prompt), mlp_layer_types %s, %d experts top-%d, "
        "routed_scaling_factor %g, swiglu_limit %g (clamp counts in swiglu_clamped), compress RoPE YaRN "
        "(factor 4, original_max_position_embeddings 256), partial rotary r=%d of head_dim %d, o_groups %d, "
        "hc_eps %g. Randomised: sinks, ape, hc fn/base/scale, hc_head, routers, e_score_correction_bias, "
        "tid2eid (distinct experts per row), norm weights. Index scores are kept away from exact 0 by "
        "construction: the embeddings share an offset direction u, and in each CSA layer channel 0 "
        "(non-rotary) of both halves of the indexer compressor's kv_proj and row 0 of q_a_proj read u, "
        "index head 0's query channel 0 reads q_lat[0]; so head 0's q.k is positive for nearly every "
        "pair (the other 7 heads keep mixed signs, the ReLU matters) and a score is 0 only by exact "
        "cancellation. Zero scores are counted (index_zero_scores) and the k-th/(k+1)-th causal gap is "
        "checked on every query of every forward recorded (full prompt, 24 greedy full forwards, "
        "generate(), incremental, chunked). "
        "logits_all.f32 is [prompt_len, vocab] f32 LE of the full prompt forward."
        % (transformers.__version__, torch.__version__, cfg.layer_types, cfg.compress_rates[CSA],
           cfg.compress_rates[HCA], cfg.sliding_window, cfg.index_topk, PROMPT_LEN // cfg.compress_rates[CSA],
           cfg.mlp_layer_types, cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.routed_scaling_factor,
           cfg.swiglu_limit, cfg.qk_rope_head_dim, cfg.head_dim, cfg.o_groups, cfg.hc_eps))
    if not quantized:
        return common + " Checkpoint: save_pretrained default naming, all F32, tid2eid I64."
    return common + (
        " Checkpoint in release formats: FP8 e4m3 '.weight' + F8_E8M0 '.scale' (128x128 blocks; every "
        "quantized matrix here is <= 128x128 so one partial block, scale [1,1]) for attn wq_a/wq_b/wkv/"
        "wo_a/wo_b, indexer.wq_b, shared_experts w1/w2/w3; FP4 e2m1 routed experts (I8 [N,K/2], low "
        "nibble = even column, F8_E8M0 '.scale' [N,K/32]); bf16 embed/head/router/compressor+indexer "
        "wkv,wgate/weights_proj; F32 norms, hc_*, ape, attn_sink, gate.bias; tid2eid I32. Golden logits: "
        "transformers FineGrainedFP8Config(dequantize=True) load on CPU, float32; every loaded tensor "
        "checked equal to the tool's own decode (so FP4 and FP8 loads are fully exercised).")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    only = sys.argv[2:]
    for name, cfg, quantized, seed0 in specs():
        if only and name not in only:
            continue
        for seed in range(seed0, seed0 + 200):
            d, prompt, res, reasons, extra = build(name, cfg, quantized, seed, out)
            if not reasons:
                break
            print(f"{name}: seed {seed} rejected ({'; '.join(reasons)})", flush=True)
        else:
            sys.exit(f"{name}: no acceptable seed")
        la = res["logits_all"]
        la[-1].numpy().astype("<f4").tofile(os.path.join(d, "logits.f32"))
        la.numpy().astype("<f4").tofile(os.path.join(d, "logits_all.f32"))
        golden = dict(
            prompt_ids=prompt, greedy_ids=res["tokens"], margins=res["margins"], min_margin=res["min_margin"],
            generate_matches_full_forwards=res["gen_out"] == res["tokens"],
            generate_logits_max_abs_diff=res["gen_logits_diff"],
            min_router_gap=res["min_router_gap"], router_calls_checked=res["router_calls"],
            min_index_gap=res["min_index_gap"], index_rows_checked=res["index_rows"],
            index_rows_selecting=res["index_rows_selecting"], index_zero_scores=res["index_zero_scores"],
            swiglu_clamped=res["clamps"],
            incremental_decoding=res["incremental"], chunked_prefill=res["chunked"],
            compressed_entries_end_of_prompt=res["compressed_entries_end_of_prompt"],
            logits_all_shape=list(la.shape), seed=seed,
            thresholds=dict(min_margin=MIN_MARGIN, min_router_gap=MIN_ROUTER_GAP, min_index_gap=MIN_INDEX_GAP,
                            incremental_tol=INCR_TOL),
            compute_dtype="float32", transformers=transformers.__version__, torch=torch.__version__,
            notes=notes_for(name, cfg, quantized))
        if quantized:
            golden["checkpoint_tensors"] = {k: f"{v[0]} {v[1]}" for k, v in sorted(extra["layout"].items())}
            golden["fp4_code_counts"] = extra["fp4_code_counts"]
        with open(os.path.join(d, "golden.json"), "w") as f:
            json.dump(golden, f, indent=1)
        if not res["incremental"]["ok"] or not res["chunked"]["ok"]:
            print(f"{name}: WARNING transformers' cached decoding differs from the full forward: "
                  f"{res['incremental']} {res['chunked']}")
        sizes = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
        print(f"{name}: seed {seed} ok, min margin {res['min_margin']:.3e}, router gap {res['min_router_gap']:.2e}, "
              f"index gap {res['min_index_gap']:.2e}, zero scores {res['index_zero_scores']}, "
              f"incremental {res['incremental']['max_abs_diff_any']:.1e}, chunked {res['chunked']['max_abs_diff_any']:.1e}, "
              f"clamps {res['clamps']}, files {sizes}", flush=True)


if __name__ == "__main__":
    main()
