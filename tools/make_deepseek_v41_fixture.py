#!/usr/bin/env python3
"""Builds tests/fixtures/models/deepseek_v41: a tiny DeepSeek-V4 backbone (transformers 5.25's
DeepseekV4ForCausalLM, f32, the shape and checks of tools/make_deepseek_v4_fixtures.py) carrying
the DeepSeek-V4.1 Engram module as SGLang 0.5.23 implements it (../shared/DEEPSEEK_V4.md section 5)
at layers 1 and 2, with golden logits and greedy tokens of the composition.

Where SGLang's code runs and where it is transcribed
  SGLang's `srt/layers/engram.py` imports its server (distributed groups, CUDA-graph contexts,
  msgspec), so the module cannot be imported on the CPU outside a server. This tool reads that
  file from the unpacked wheel (`pip download --no-deps sglang==0.5.23`, unzip; path in
  $SGLANG_DIR, default /tmp/sgl/x/sglang) and executes SGLang's OWN source of these top-level
  definitions, unchanged, in a namespace with a msgspec.Struct stand-in:
    _is_prime, _find_next_prime, build_compressed_token_map (the compressed tokenizer, on this
    fixture's tokenizer through transformers' PreTrainedTokenizerFast), compute_hash_multipliers,
    EngramLayout (from_config: the shared prime sequence; column_bounds: per-head offsets),
    compute_engram_hash_ids, EngramHasher (__init__, _torch_hash_ids in MODE_EXTEND with the
    request's history and the blocked look-back, hash_windows), engram_gate (its torch path:
    fused keys and value split, q_weight * k_weight, the two rstd terms, copysign sqrt, clamp).
  Transcribed line by line (they sit in classes that need the server):
    * EngramEmbedding._owned_rows, torch path with one TP rank: rows = weight[idx].float() viewed
      in blocks of 32, times scale[idx].float() (float8_e8m0fnu, byte 0 = 2^-127), flattened,
      rounded once to bf16 (exact here: e4m3 payload times a power of two);
    * Engram.forward: emb.flatten(-2) -> kv = wkv(emb) -> engram_gate(residual, kv, q_weight,
      k_weight, rms_norm_eps, 1e-6). wkv is stored FP8 e4m3 with 128 x 128 ue8m0 block scales
      (`engram.wkv.scale`, which SGLang's loader renames weight_scale_inv) and applied here in f32
      from its exact dequantisation (as transformers' dequantize=True does for the backbone);
      SGLang's GPU kernels additionally quantize the activations, which no CPU reference does;
    * the placement (deepseek_v4.py 4189-4200): hash ids of all layers computed once per forward
      before layer 0; at the entry of each Engram layer, before its attention hyper-connection,
      the Engram rewrites every stream of the residual [T, hc_mult, hidden]. Done here with a
      pre-hook on transformers' decoder layer, whose first argument is that residual.
  The transcribed gate is also computed by this tool's own line-by-line copy, asserted bit-equal
  to SGLang's engram_gate on every call (it gives the gates recorded in golden.json).

Checkpoint (model.safetensors): the backbone as save_pretrained writes it (f32, naming of
DEEPSEEK_V4.md 4.3) plus, per Engram layer N, release-named tensors under the same `model.`
prefix (DEEPSEEK_V4.md 5.9): model.layers.N.engram.embed.weight F8_E4M3 [rows, 64],
.engram.embed.scale F8_E8M0 [rows, 2] (one exponent per 32 values), .engram.wkv.weight F8_E4M3
[(hc_mult + 1) * hidden, 4 * 64] + .engram.wkv.scale F8_E8M0 [3, 2], .engram.q_weight and
.engram.k_weight F32 [hc_mult, hidden] (randomised: init leaves them at 1).
config.json: transformers' DeepseekV4 config plus the engram_* keys of V4.1 at the top level
(engram_layer_ids [1, 2], engram_max_ngram_size 3, engram_n_heads 2, engram_head_dim 64,
engram_vocab_size 1000, engram_num_embeddings = the sums of SGLang's primes,
engram_pad_token_id 2, engram_compressed_vocab_size = SGLang's count on tokenizer.json).
V4.1's backbone differences (section 5.8) are off: no hc_pre_from_prev_sublayer, q_head_norm as
V4, compression ratios 4/8 through layer_types.
tokenizer.json: a byte-level BPE of exactly the fixture's 512 ids trained here with HF tokenizers
(specials <bos> <eos> <pad> = 0 1 2) on generated text with case and accent variants, so that
the compressed tokenizer really merges ids (Vc < 512).

golden.json: prompt_ids, greedy_ids, margins, the V4 tool's checks (router and indexer gaps,
clamps, transformers' own cache: generate(), incremental and chunked prefill, with the Engram
history carried across calls), rows (per Engram layer, [tokens][heads] for prompt + greedy[:-1]),
gates (per layer, mean over streams, same tokens), engram_effect (max |logit change| when the
Engram is removed), sglang_checks. logits.f32 / logits_all.f32 as in the V4 fixtures.

deepseek_v41_backbone: the same composition (another seed) with two of V4.1's backbone differences
on (DEEPSEEK_V4.md 5.8), config keys hc_pre_from_prev_sublayer true and q_head_norm false, and no
hc_head tensors in the checkpoint (SGLang makes none when the collapse lags):
  SGLang's own code run (exec'd unchanged from `kernels/ops/layernorm/mhc.py` of the unpacked wheel,
  so $SGLANG_DIR must hold the whole `sglang` package, not only srt/layers/engram.py): _mhc_pre_torch (the
    mix GEMM on the normed residual, post, the Sinkhorn comb, and its own collapse used to check the
    pre below bit for bit) and _mhc_post_torch (R' = post y + comb^T R).
  Transcribed (class methods or GPU kernels): the pre of the split (hc_split_sinkhorn_kernel:
    sigmoid(mix * scale[0] + base) + hc_eps, asserted to reproduce _mhc_pre_torch's collapse);
    models/deepseek_v4_mhc.py _combine (the sublayer input is norm(sum_k pre[k] R[k]) with the
    PREVIOUS hyper-connection's pre, mhc_combine's f32 accumulation in stream order; norm(R[0]) at
    the model's first sublayer) and the layer loop of deepseek_v4_platform_stage.py
    forward_hc_pre_from_prev (each HC's triplet from its own input residual, the post, the pre
    handed on; an Engram rewrites the residual and keeps the pre, HcState.with_residual); the head
    of deepseek_v4.py 4588-4601 (mhc_combine with the last FFN HC's pre, then the norm); and
    MQALayer._compute_q_b with q_head_norm false (rope only, no per-head norm).
  Those replace transformers' DeepseekV4DecoderLayer.forward, hc_head and q_b_norm on the loaded
  reference model; attention, compressors, indexer and MoE stay transformers' own.

deepseek_v41_ratios and deepseek_v41_shared: the backbone fixture's composition (lagged HCs, no query
head norm, the Engram) with V4.1's compress ratios 1 and 2 (DEEPSEEK_V4.md 5.8). config.json states the
schedule as SGLang reads it: compress_ratios (1, 2, and 4 for a V4 CSA layer at rate 4),
kv_source_layer_ids, index_source_layer_ids; ratios: [2, 1, 4, 1], every ratio-1/2 layer its own kv and
index source; shared: [2, 1, 2, 1, 1], kv sources [0, 1, 2], index sources [0, 1, 3] (entries read from
the nearest kv source of the ratio, top-k reused from the last index source, an index source scoring
another layer's keys). index_head_dim 32 (SGLang's fp4 blocks).
  SGLang's own code run (exec'd unchanged): dsv41_sparse.py DeepseekV41Compressor (project, pool_pairs,
    its RMSNorm), DeepseekV41Indexer (queries, index_keys, head_weights, scores), rope_tail, _rope_fq4
    (its CPU path), and the whole of kernels/ops/quantization/fp4_fake_quant.py (fake_quant_fp4: e2m1
    with a ue8m0 scale per 32; fake_quant_compressed_kv: e2m1 with an e4m3 scale per 16). Stand-ins
    only for GPU imports (see load_sglang_low).
  Transcribed (the attention backend's torch path, deepseek_v4_backend.py 3409-3990, and the v41_indexer
    torch top-k, scoring.py): the kv source's compression (_low_ratio_compress_torch: a ratio-2 group
    closes at an odd position p and pools p - 1 with p, the partner from the state ring or the batch),
    _low_ratio_write_group (latent = finish(pooled); index keys from the pre-rope latent at group_pos
    p - m + 1; the entry _rope_fq4(latent, compressed_kv=True)), the full top-k (scores of the visible
    keys of the kv source, -inf at j >= (p+1)//m, topk of min(index_topk, lc), picks past a query's
    length dropped), the per-ratio reuse of the last index source's top-k, and source_layer_of.
  One deliberate difference, as everywhere in this composition: activations are f32, so finish()'s
    cast to SGLang's activation dtype (bf16) and the bf16 wk are f32 here (the fake quantisations stay).
  The ratio-1/2 layers are HCA layers to transformers (the compress rope); LowRatio stands in for their
  compressor and returns the kv source's entries and the top-k's block bias, as transformers' CSA
  compressor does. Checkpoint: release names under model.: layers.N.attn.compressor.{wkv,wgate}.weight
  BF16 (ratio 2 has wgate) and .norm.weight on kv sources; layers.N.attn.indexer.{wq_b,weights_proj,wk}
  .weight BF16 and .k_norm.weight on index sources (wk, k_norm only where it is also a kv source).
  A seed is rejected when any fake quantisation's result moves under a 1e-6 relative perturbation of its
  input (QUANT_EPS; the C engine's logits differ from these by about 5e-7 relative, so another correct f32
  order of sums would have to drift more than that inside a layer to round one value the other way) or
  an indexer top-k gap is under 1e-5; golden.json v41_low_ratio records the checks.

deepseek_v41_candidates: the ratio fixtures' composition with V4.1's two-level candidate top-k
(DEEPSEEK_V4.md 5.8): compress_ratios [2, 1, 1, 1, 1], kv sources [0, 1], index sources [0, 1, 2, 4],
candidate_source_layer_id 1, candidate_topk_blocks 3, candidate_block_size 4.
  SGLang's own code run (exec'd unchanged): select_candidate_block_ids and topk_among_blocks of
    kernels/ops/attention/dsv4/candidate_blocks.py (the torch forms; the file's Triton and JIT kernels
    are not loaded), and DeepseekV41Indexer's is_candidate_source / uses_candidates, which decide each
    layer's role.
  Transcribed: v41_indexer/dense_blocks.py's torch path (_torch_publish_prefill: the source's own full
    top-k plus its published blocks of the masked scores; _torch_consume_prefill: topk_among_blocks of
    the consumer's scores within the source's blocks, misses filled with lc, then write_prefill), one
    published list per forward as deepseek_v4_backend.py _low_ratio_index_topk keeps it.
  Seeds are also rejected when the source's last kept and first dropped block maxima, or a consumer's
  k-th and (k+1)-th candidate scores, are under 1e-5 apart (torch's topk has no tie rule), or when the
  candidates change fewer than 10 consumer rows' selection; golden.json v41_candidates records them.

Usage: python tools/make_deepseek_v41_fixture.py OUT_DIR [NAME...]  (default: every fixture; torch on
the CPU is enough)
"""
import __future__
import ast, json, math, os, random, shutil, sys, types
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file
from transformers import DeepseekV4ForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_deepseek_v4_fixtures as V4  # noqa: E402  (backbone config, randomisation, checks)

NAME = "deepseek_v41"
BACKBONE = "deepseek_v41_backbone"
RATIOS = "deepseek_v41_ratios"
SHARED = "deepseek_v41_shared"
CANDIDATES = "deepseek_v41_candidates"
LAG = dict(hc_pre_from_prev_sublayer=True, q_head_norm=False)
# per fixture: the first seed, the V4.1 backbone keys it turns on (DEEPSEEK_V4.md 5.8) and its
# compression schedule with V4.1's ratios 1 and 2 (compress_ratios, kv and index sources), if any
FIXTURES = {
    NAME: (4100, {}, None),
    BACKBONE: (4300, LAG, None),
    # every ratio-1/2 layer its own kv and index source; a V4 CSA layer (ratio 4) between them. Layer 0
    # pools pairs: its input is the embedding alone, so a repeated token would give ratio 1 equal keys
    RATIOS: (4500, LAG, dict(compress_ratios=[2, 1, 4, 1], kv_source_layer_ids=[0, 1, 3],
                             index_source_layer_ids=[0, 1, 3])),
    # layer 2 (ratio 2) owns entries but reuses layer 0's top-k; layer 3 (ratio 1) reads layer 1's
    # entries and scores layer 1's keys with its own queries; layer 4 (ratio 1) reads layer 1's entries
    # and reuses layer 3's top-k
    SHARED: (4700, LAG, dict(compress_ratios=[2, 1, 2, 1, 1], kv_source_layer_ids=[0, 1, 2],
                             index_source_layer_ids=[0, 1, 3])),
    # the two-level candidate top-k: layer 1 (ratio 1) publishes 3 blocks of 4 entries per token; layers 2
    # and 4 (ratio 1) score layer 1's keys and select within them, layer 3 reuses layer 2's top-k; layer 0
    # (ratio 2, before the source) keeps the full top-k
    CANDIDATES: (4900, LAG, dict(compress_ratios=[2, 1, 1, 1, 1], kv_source_layer_ids=[0, 1],
                                 index_source_layer_ids=[0, 1, 2, 4], candidate_source_layer_id=1,
                                 candidate_topk_blocks=3, candidate_block_size=4)),
}
LOW_INDEX = dict(index_head_dim=32)  # SGLang's fp4 blocks are 32 wide
QUANT_EPS = 1e-6  # relative perturbation a fake quantisation's input must survive unchanged
ENGRAM = dict(engram_layer_ids=[1, 2], engram_max_ngram_size=3, engram_n_heads=2, engram_head_dim=64,
              engram_vocab_size=1000, engram_pad_token_id=2)
CLAMP = 1e-6
MIN_EFFECT = 0.5  # the Engram must move the last logits by at least this much

# ----------------------------------------------------------------------------------------------
# SGLang's own code


def load_sglang():
    root = os.environ.get("SGLANG_DIR", "/tmp/sgl/x/sglang")
    path = os.path.join(root, "srt", "layers", "engram.py")
    src = open(path).read()
    want = {"_MILLER_RABIN_WITNESSES", "_is_prime", "_find_next_prime", "build_compressed_token_map",
            "compute_hash_multipliers", "EngramLayout", "compute_engram_hash_ids", "EngramHasher", "engram_gate"}
    body = [n for n in ast.parse(src).body
            if (isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in want)
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in want for t in n.targets))]
    assert len(body) == len(want), sorted(want - {getattr(n, "name", None) for n in body})

    class Struct:  # msgspec.Struct as EngramLayout uses it: keyword construction, frozen ignored
        def __init_subclass__(cls, **kw):
            super().__init_subclass__()

        def __init__(self, **kw):
            self.__dict__.update(kw)

    hash_src = open(os.path.join(root, "kernels", "ops", "embeddings", "engram_hash.py")).read()
    modes = {}
    exec(compile("\n".join(l for l in hash_src.splitlines() if l.startswith("MODE_")), "engram_hash", "exec"), modes)
    ns = dict(torch=torch, np=np, nn=torch.nn, Optional=Optional, msgspec=types.SimpleNamespace(Struct=Struct),
              _cuda_kernels=lambda t: False, fused_engram_gate=None, MM_PAD_SHIFT_VALUE=1_000_000,
              logger=None, __name__="sglang_engram", **{k: v for k, v in modes.items() if k.startswith("MODE_")})
    code = compile(ast.Module(body=body, type_ignores=[]), path, "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, ns)
    return types.SimpleNamespace(**ns)


SGL = load_sglang()


def load_sglang_mhc():
    """SGLang's torch forms of the mHC pre and post (kernels/ops/layernorm/mhc.py), exec'd as is."""
    root = os.environ.get("SGLANG_DIR", "/tmp/sgl/x/sglang")
    path = os.path.join(root, "kernels", "ops", "layernorm", "mhc.py")
    want = {"_mhc_pre_torch", "_mhc_post_torch"}
    body = [n for n in ast.parse(open(path).read()).body if isinstance(n, ast.FunctionDef) and n.name in want]
    assert len(body) == len(want)
    ns = dict(torch=torch, Tuple=tuple, __name__="sglang_mhc")
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec",
                 flags=__future__.annotations.compiler_flag, dont_inherit=True), ns)
    return types.SimpleNamespace(**{k: ns[k] for k in want})


MHC = None  # load_sglang_mhc(), for the backbone fixture only
MHC_POST_MULT_VALUE = 2.0  # deepseek_v4_mhc.py

# ----------------------------------------------------------------------------------------------
# Tokenizer


def corpus(rng):
    """Generated words with case and accent variants, so that lowercase / StripAccents / NFKC
    merge ids in the compressed tokenizer."""
    syl = ["ka", "ri", "to", "me", "su", "la", "no", "vi", "de", "ro", "ta", "mi", "pe", "lu", "sa", "gé",
           "ça", "ño", "ü", "ﬁ", "Å"]
    lines = []
    for _ in range(4000):
        words = []
        for _ in range(rng.randint(3, 9)):
            w = "".join(rng.choice(syl) for _ in range(rng.randint(1, 3)))
            r = rng.random()
            words.append(w.upper() if r < 0.2 else w.capitalize() if r < 0.5 else w)
        lines.append(" ".join(words) + rng.choice([".", ",", "!", "?", "\n", "  "]))
    return lines


def train_tokenizer(vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(random.Random(41)), trainer)
    assert tok.get_vocab_size() == vocab, tok.get_vocab_size()
    return tok


# ----------------------------------------------------------------------------------------------
# The Engram tensors and the module


def make_table(rows, dim, gen):
    """FP8 e4m3 rows with one ue8m0 exponent per 32 values: random f32 rows whose 32-blocks have
    magnitudes spread over 2^-3..2^3 (so the scale bytes vary), quantized block by block."""
    x = torch.randn(rows, dim // 32, 32, generator=gen) * torch.pow(2.0, torch.randint(-3, 4, (rows, dim // 32, 1),
                                                                                       generator=gen).float())
    byte, s = V4.ue8m0_pow2_at_least(x.abs().amax(-1) / 448.0)
    q = (x / s.unsqueeze(-1)).clamp(-448, 448).to(torch.float8_e4m3fn).view(rows, dim)
    return q, byte.view(torch.float8_e8m0fnu)


def owned_rows(weight, scale, indices):
    """Transcription of EngramEmbedding._owned_rows' torch path (one TP rank: every row owned)."""
    rows = weight[indices].float().unflatten(-1, (-1, 32))
    values = (rows * scale[indices].float().unsqueeze(-1)).flatten(-2)
    return values.to(torch.bfloat16)


def gate_lines(x, kv, q_weight, k_weight, eps, clamp_value):
    """This tool's copy of engram_gate's torch path that also returns the gate [T, hc]."""
    hc_mult, dim = x.shape[-2:]
    key, value = kv.split([hc_mult * dim, dim], dim=-1)
    key = key.float().unflatten(-1, (hc_mult, dim))
    weight = q_weight.float() * k_weight.float()
    h = x.float()
    rstd = torch.rsqrt(h.square().mean(-1) + eps) * torch.rsqrt(key.square().mean(-1) + eps)
    dot = (h * weight * key).sum(-1) * rstd * dim ** -0.5
    gate = torch.sigmoid(torch.copysign(dot.abs().clamp_min(clamp_value).sqrt(), dot))
    out = (h + gate.unsqueeze(-1) * value.float().unsqueeze(-2)).to(x.dtype)
    return out, gate


class EngramRef:
    """The V4.1 Engram of the composition: SGLang's hasher, the tables, wkv, the gate; hooked
    into transformers' model. It follows one sequence across calls (prefill, chunks, decode)."""

    def __init__(self, cfg_json, tok_fast, tensors, eps):
        self.layout = SGL.EngramLayout.from_config(types.SimpleNamespace(**cfg_json))
        self.hasher = SGL.EngramHasher(self.layout, tok_fast, cfg_json["engram_pad_token_id"],
                                       cfg_json["engram_compressed_vocab_size"])
        self.n = self.layout.max_ngram_size
        self.eps = eps
        self.t = {}
        for li, lid in enumerate(self.layout.layer_ids):
            p = f"model.layers.{lid}.engram."
            wq, ws = tensors[p + "wkv.weight"], tensors[p + "wkv.scale"]
            self.t[lid] = dict(li=li, weight=tensors[p + "embed.weight"], scale=tensors[p + "embed.scale"],
                               wkv=V4.decode_fp8(wq, ws), q_weight=tensors[p + "q_weight"],
                               k_weight=tensors[p + "k_weight"])
        self.enabled = True
        self.seq = []
        self.hash_ids = None
        self.record = None  # when a dict: gates[lid] and rows[lid] of the calls, appended

    def begin(self, input_ids, pos0):
        """Before layer 0: the new tokens join the sequence and every layer's hash ids are made
        by SGLang's EXTEND path, whose history is the n-1 tokens before this call."""
        ids = input_ids[0].tolist()
        if pos0 == 0:
            self.seq = []
        assert len(self.seq) == pos0, (len(self.seq), pos0)
        hist = ([0] * (self.n - 1) + self.seq)[-(self.n - 1):]  # oldest first, left-padded as history_row
        T = len(ids)
        positions = torch.arange(pos0, pos0 + T)
        ids_t = torch.tensor(ids, dtype=torch.int64)
        hash_ids, _ = self.hasher._torch_hash_ids(ids_t, positions, SGL.MODE_EXTEND,
                                                  torch.tensor([hist], dtype=torch.int32), T, 0,
                                                  torch.zeros(T, dtype=torch.int64), torch.tensor([0]))
        self.hash_ids = hash_ids  # [T, n_engram_layers, n_hash_cols]
        self.seq += ids

    def layer(self, lid, x):
        """Engram.forward on the residual x [T, hc_mult, hidden] of layer lid."""
        e = self.t[lid]
        idx = self.hash_ids[:, e["li"]]
        emb = owned_rows(e["weight"], e["scale"], idx)
        kv = F.linear(emb.flatten(-2).float(), e["wkv"])
        out = SGL.engram_gate(x, kv, e["q_weight"], e["k_weight"], self.eps, CLAMP)
        mine, gate = gate_lines(x, kv, e["q_weight"], e["k_weight"], self.eps, CLAMP)
        assert torch.equal(out, mine), "the tool's gate copy differs from SGLang's engram_gate"
        if self.record is not None:
            self.record["gates"][lid] += gate.mean(-1).tolist()
            self.record["rows"][lid] += idx.tolist()
        return out

    def install(self, model):
        def model_pre(mod, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            pos = kwargs.get("position_ids")
            cache = kwargs.get("cache") or kwargs.get("past_key_values")
            pos0 = int(pos[0, 0]) if pos is not None else (cache.get_seq_length() if cache is not None else 0)
            self.begin(ids, pos0)
        model.model.register_forward_pre_hook(model_pre, with_kwargs=True)
        for lid in self.t:
            def layer_pre(mod, args, kwargs, lid=lid):
                if not self.enabled:
                    return None
                x = args[0]
                assert x.shape[0] == 1
                return (self.layer(lid, x[0]).unsqueeze(0),) + tuple(args[1:]), kwargs
            model.model.layers[lid].register_forward_pre_hook(layer_pre, with_kwargs=True)


class LaggedHC:
    """V4.1's hyper-connections with hc_pre_from_prev_sublayer (DEEPSEEK_V4.md 5.8), installed on a
    transformers DeepseekV4ForCausalLM: every decoder layer's forward, the hc_head and the query
    head norm are replaced; `pre` is the mHC state handed from one hyper-connection to the next."""

    def __init__(self, cfg):
        global MHC
        MHC = MHC or load_sglang_mhc()
        self.cfg = cfg
        self.pre = None
        self.checks = 0  # triplets whose transcribed pre reproduced SGLang's collapse bit for bit

    def triplet(self, hc, R):
        """(pre, post, comb) of one HC from its input residual R [T, N, H] (mix_stats)."""
        c = self.cfg
        post, comb, collapse = MHC._mhc_pre_torch(R, hc.fn, hc.scale, hc.base, c.rms_norm_eps, c.hc_eps, c.hc_eps,
                                                  MHC_POST_MULT_VALUE, c.hc_sinkhorn_iters)
        # hc_split_sinkhorn_kernel's pre, from the same mixes as _mhc_pre_torch
        n = c.hc_mult
        x_flat = R.reshape(R.shape[0], -1).float()
        rsqrt = torch.rsqrt(x_flat.square().mean(-1, keepdim=True) + c.rms_norm_eps)
        mixes = F.linear(x_flat, hc.fn) * rsqrt
        pre = torch.sigmoid(mixes[:, :n] * hc.scale[0] + hc.base[:n]) + c.hc_eps
        assert torch.equal((pre.unsqueeze(-1) * R.float()).sum(dim=1).to(R.dtype), collapse)
        self.checks += 1
        return pre, post, comb

    def combine(self, R, norm):
        """_combine: norm(R[:, 0]) at the first sublayer, else norm(mhc_combine(R, pre))."""
        if self.pre is None:
            return norm(R[:, 0, :])
        return norm(self.collapse(R))

    def collapse(self, R):
        """mhc_combine: y = sum_k pre[:, k] * R[:, k] accumulated in f32, k in order."""
        acc = torch.zeros(R.shape[0], R.shape[2], dtype=torch.float32)
        for k in range(R.shape[1]):
            acc = acc + self.pre[:, k:k + 1].float() * R[:, k, :].float()
        return acc.to(R.dtype)

    def install(self, model):
        ref = self

        def layer_forward(layer, hidden_states, input_ids=None, **kwargs):
            R = hidden_states[0]  # [T, N, H]; batch 1 as every call of this tool
            pre, post, comb = ref.triplet(layer.attn_hc, R)
            x = ref.combine(R, layer.input_layernorm)
            y, _ = layer.self_attn(x.unsqueeze(0), **kwargs)
            R = MHC._mhc_post_torch(y[0], R, post, comb)
            ref.pre = pre
            pre, post, comb = ref.triplet(layer.ffn_hc, R)
            x = ref.combine(R, layer.post_attention_layernorm)
            y = layer.mlp(x.unsqueeze(0), input_ids=input_ids)
            R = MHC._mhc_post_torch(y[0], R, post, comb)
            ref.pre = pre
            return R.unsqueeze(0)

        class Head(torch.nn.Module):  # deepseek_v4.py 4588-4596; the model's norm follows
            def forward(self, x):
                return ref.collapse(x[0]).unsqueeze(0)

        def model_pre(mod, args, kwargs):
            ref.pre = None
        model.model.register_forward_pre_hook(model_pre, with_kwargs=True)
        for layer in model.model.layers:
            layer.forward = types.MethodType(layer_forward, layer)
            layer.self_attn.q_b_norm = torch.nn.Identity()  # q_head_norm false: rope only
        model.model.hc_head = Head()


# ----------------------------------------------------------------------------------------------
# V4.1's ratio-1/2 layers (DEEPSEEK_V4.md 5.8): SGLang's dsv41_sparse.py and fp4_fake_quant.py run


def load_sglang_low():
    """SGLang's own DeepseekV41Compressor, DeepseekV41Indexer, RMSNorm, rope_tail, _rope_fq4 (from
    srt/layers/attention/dsv4/dsv41_sparse.py) and the whole of kernels/ops/quantization/
    fp4_fake_quant.py (pure torch), exec'd unchanged. Stand-ins for what they import from the GPU
    side: linear_bf16_fp32 (x W^T in f32), ReplicatedLinear (a linear returning (y, None), in f32),
    rocm_gemv_split_k_max_tokens (-1: no ROCm GEMV), is_gfx95_supported (false); on the CPU every
    fused-kernel branch is off by SGLang's own tests (_fused_dsv41_kernels, torch.cuda)."""
    root = os.environ.get("SGLANG_DIR", "/tmp/sgl/x/sglang")
    fq = {}
    path = os.path.join(root, "kernels", "ops", "quantization", "fp4_fake_quant.py")
    exec(compile(open(path).read(), path, "exec"), fq)

    class ReplicatedLinear(torch.nn.Linear):
        def __init__(self, in_f, out_f, bias=False, quant_config=None, params_dtype=None, prefix=""):
            super().__init__(in_f, out_f, bias=bias, dtype=params_dtype)

        def forward(self, x):
            return F.linear(x, self.weight.to(x.dtype)), None

    path = os.path.join(root, "srt", "layers", "attention", "dsv4", "dsv41_sparse.py")
    want = {"_fused_dsv41_kernels", "_rope_fq4", "RMSNorm", "rope_tail", "fused_low_ratio_compress_supported",
            "DeepseekV41Compressor", "_small_weights_proj_max_m", "DeepseekV41Indexer"}
    body = [n for n in ast.parse(open(path).read()).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in want]
    assert len(body) == len(want)
    ns = dict(torch=torch, nn=torch.nn, Optional=Optional, Tuple=tuple, __name__="sglang_dsv41_sparse",
              linear_bf16_fp32=lambda x, w: F.linear(x.float(), w.float()), rmsnorm_fp32=None,
              fake_quant_compressed_kv=fq["fake_quant_compressed_kv"], fake_quant_fp4=fq["fake_quant_fp4"],
              ReplicatedLinear=ReplicatedLinear, QuantizationConfig=object, rocm_gemv_split_k_max_tokens=lambda **k: -1,
              add_prefix=lambda name, prefix: f"{prefix}.{name}" if prefix else name, is_gfx95_supported=lambda: False)
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec",
                 flags=__future__.annotations.compiler_flag, dont_inherit=True), ns)
    return types.SimpleNamespace(**ns)


SLOW = None  # load_sglang_low(), for the ratio fixtures only


def load_sglang_candidates():
    """SGLang's torch forms of the two-level top-k, select_candidate_block_ids and topk_among_blocks
    (kernels/ops/attention/dsv4/candidate_blocks.py, pure torch; the file's Triton and JIT kernels are
    not loaded), exec'd unchanged."""
    root = os.environ.get("SGLANG_DIR", "/tmp/sgl/x/sglang")
    path = os.path.join(root, "kernels", "ops", "attention", "dsv4", "candidate_blocks.py")
    want = {"select_candidate_block_ids", "topk_among_blocks"}
    body = [n for n in ast.parse(open(path).read()).body if isinstance(n, ast.FunctionDef) and n.name in want]
    assert len(body) == len(want)
    from typing import Union
    ns = dict(torch=torch, F=F, Optional=Optional, Union=Union, __name__="sglang_candidate_blocks")
    exec(compile(ast.Module(body=body, type_ignores=[]), path, "exec",
                 flags=__future__.annotations.compiler_flag, dont_inherit=True), ns)
    return types.SimpleNamespace(**{k: ns[k] for k in want})


SCAND = None  # load_sglang_candidates(), for the candidates fixture only


class LowState:
    """What SGLang's pool keeps of the one sequence this tool follows, per kv source layer: every
    position's projections (the ring of pending pairs is its last two), the compressed entries
    (rotated, fake-quantised) and the index keys; per ratio, the top-k of the last index source in
    the current forward. A call at position pos0 first drops what is at or after pos0."""

    def __init__(self, cfg, low):
        self.cfg, self.ratios = cfg, low["compress_ratios"]
        self.kv_src, self.idx_src = {}, set()
        last_kv, last_ix = {}, {}
        for l, r in enumerate(self.ratios):
            if r not in (1, 2):
                continue
            if l in low["kv_source_layer_ids"]:
                last_kv[r] = l
            if l in low["index_source_layer_ids"]:
                last_ix[r] = l
                self.idx_src.add(l)
            self.kv_src[l] = last_kv[r]  # source_layer_of
            assert r in last_ix
        self.proj, self.entries, self.keys, self.sel = {}, {}, {}, {}
        self.fragile = set()      # (layer, kind, position) whose fake quantisation moved under QUANT_EPS
        self.quantised = 0        # values fake-quantised, checked
        self.index_gaps = []      # k-th minus (k+1)-th score of each selecting query
        self.index_rows = 0
        self.entry_counts = {}
        self.cand = None          # the candidate source's blocks of the current forward [T, <= blocks]
        self.block_gaps = []      # V4.1 candidates: the source's last kept minus first dropped block key
        self.cand_rows = 0        # consumer rows whose candidate top-k differs from their full top-k


class LowRatio(torch.nn.Module):
    """Stands in for transformers' compressor of a ratio-1/2 layer (declared HCA there, so the layer
    takes the compress rope and concatenates what this returns): SGLang's sources
    (deepseek_v4_backend.py forward_low_ratio_sources, its torch path _low_ratio_compress_torch,
    _low_ratio_pair_partners, _low_ratio_write_group and the torch full top-k, scoring.py
    prefill_requests / _score_chunks / write_prefill) transcribed around SGLang's own modules; returns
    the kv source's entries and the block bias of the top-k, as transformers' CSA compressor does."""

    def __init__(self, state, layer_id, ratio, comp, indexer, rotary):
        super().__init__()
        self.s, self.l, self.m = state, layer_id, ratio
        self.comp, self.indexer, self.rotary = comp, indexer, rotary

    def freqs(self, pos):
        cos, sin = self.rotary(torch.zeros(1), position_ids=pos.unsqueeze(0), layer_type="compress")
        return torch.complex(cos[0].float(), sin[0].float())  # [n, r/2]: the composition's rope table

    def fragile(self, fn, x, pos, kind):
        """Records the positions (rows) whose fn(x) (exact bits) moves when x's elements move by up to
        QUANT_EPS relative: values that close to a rounding boundary of a fake quantisation could
        round the other way in any other correct f32 implementation."""
        ref = fn(x)
        self.s.quantised += sum(t.numel() for t in ref)
        g = torch.Generator().manual_seed(self.l)
        moved = torch.zeros(x.shape[0], dtype=torch.bool)
        for _ in range(8):
            y = fn(x * (1 + QUANT_EPS * (2 * torch.rand(x.shape, generator=g) - 1)))
            for a, b in zip(ref, y):
                moved |= (a != b).flatten(1).any(1)
        self.s.fragile |= {(self.l, kind, int(p)) for p in pos[moved]}

    def compress(self, x, pos):
        s, l, m, comp = self.s, self.l, self.m, self.comp
        r = s.cfg.qk_rope_head_dim
        pos0 = int(pos[0])
        kv, score = comp.project(x)
        old = s.proj.get(l, (kv[:0], None if score is None else score[:0]))
        s.proj[l] = (torch.cat([old[0][:pos0], kv]), None if score is None else torch.cat([old[1][:pos0], score]))
        closing = (pos % m == m - 1).nonzero().squeeze(1)
        ent = s.entries.get(l, kv.new_zeros(0, kv.shape[1]))[:pos0 // m]
        keys = s.keys.get(l)
        keys = None if keys is None else keys[:pos0 // m]
        if len(closing):
            p = pos[closing]
            if m == 1:
                pooled = kv[closing]
            else:  # the partner p - 1: in the batch or carried in the ring, the same values
                allkv, allsc = s.proj[l]
                pooled = comp.pool_pairs(torch.stack([allkv[p - 1], allkv[p]], dim=1),
                                         torch.stack([allsc[p - 1], allsc[p]], dim=1))
            freqs = self.freqs(p - (m - 1))  # group_pos
            owns = self.indexer is not None and self.indexer.owns_k

            def write_group(pooled):
                latent = comp.norm(pooled)  # finish, in the composition's f32 activations
                out = [SLOW._rope_fq4(latent, freqs, r, compressed_kv=True)]
                if owns:
                    out.append(self.indexer.index_keys(latent, freqs))
                return out
            self.fragile(write_group, pooled, p, "entry")
            out = write_group(pooled)
            ent = torch.cat([ent, out[0]])
            if owns:
                keys = out[1] if keys is None else torch.cat([keys, out[1]])
        s.entries[l], s.keys[l] = ent, keys

    def topk(self, x, q_lora, pos):
        s, m, ix = self.s, self.m, self.indexer
        K = ix.index_topk
        keys = s.keys[s.kv_src[self.l]]
        lens = (pos + 1) // m
        lc = int(lens.max())
        sel = torch.full((len(pos), K), -1, dtype=torch.int64)
        if lc == 0:  # SGLang skips the request: nothing published, nothing selected
            s.sel[m] = sel
            if ix.is_candidate_source:
                s.cand = torch.full((len(pos), 0), -1, dtype=torch.int32)
            return
        freqs = self.freqs(pos)
        self.fragile(lambda ql: [ix.queries(ql, freqs)], q_lora, pos, "query")
        q = ix.queries(q_lora, freqs)
        w = ix.head_weights(x)
        j = torch.arange(lc)
        sc = ix.scores(q, keys[:lc].float(), w)[:, :lc]
        sc = sc.masked_fill(j[None, :] >= lens[:, None], -torch.inf)
        k = min(K, lc)
        full = sc.topk(k, dim=-1, sorted=False).indices
        idx = full
        cand = None  # per row, the positions the top-k chose among (the candidates' or all causal ones)
        if ix.is_candidate_source:  # dense_blocks.py _torch_publish_prefill
            s.cand = SCAND.select_candidate_block_ids(sc, lens[:, None], topk_blocks=ix.candidate_topk_blocks,
                                                      block_size=ix.candidate_block_size)
            self.block_gaps(sc, lens)
        elif ix.uses_candidates:  # _torch_consume_prefill
            idx = SCAND.topk_among_blocks(sc, lens, s.cand, k, block_size=ix.candidate_block_size)
            idx = idx.masked_fill(idx < 0, lc)
            bs = ix.candidate_block_size
            cand = [sorted(int(b) * bs + i for b in s.cand[t] if b >= 0 for i in range(bs)
                           if int(b) * bs + i < int(lens[t])) for t in range(len(pos))]
        idx = idx.sort(dim=-1).values  # write_prefill
        sel[:, :k] = torch.where(idx < lens[:, None], idx, -1)
        for t in range(len(pos)):
            s.index_rows += 1
            among = cand[t] if cand is not None else list(range(int(lens[t])))
            if len(among) > K:
                v = torch.sort(sc[t, among].double(), descending=True).values
                s.index_gaps.append(float(v[K - 1] - v[K]))
            if cand is not None and set(sel[t, :k].tolist()) != set(
                    x for x in full[t].tolist() if x < int(lens[t])):
                s.cand_rows += 1
        s.sel[m] = sel

    def block_gaps(self, sc, lens):
        """Per row with more older blocks than the source keeps beside its newest: the gap between the
        last kept and the first dropped block maximum (SGLang's topk breaks ties by no rule)."""
        ix = self.indexer
        bs, nb = ix.candidate_block_size, ix.candidate_topk_blocks
        for t in range(sc.shape[0]):
            n = int(lens[t])
            nblk = -(-n // bs)
            if nblk - 1 > nb - 1:
                keys = sorted((float(sc[t, b * bs:(b + 1) * bs].max()) for b in range(nblk - 1)), reverse=True)
                self.s.block_gaps.append(keys[nb - 2] - keys[nb - 1] if nb > 1 else float("inf"))

    def forward(self, hidden_states, q_residual, position_ids, cache, layer_idx):
        s, l = self.s, self.l
        x, ql, pos = hidden_states[0].float(), q_residual[0].float(), position_ids[0]
        with torch.no_grad():
            if s.kv_src[l] == l:
                self.compress(x, pos)
            if l in s.idx_src:
                self.topk(x, ql, pos)
            ent = s.entries[s.kv_src[l]].float()
            sel = s.sel[self.m]
        n = ent.shape[0]
        s.entry_counts[str(l)] = n
        valid = sel >= 0
        bias = torch.full((1, 1, len(pos), n + 1), float("-inf"))
        bias[0, 0].scatter_(-1, torch.where(valid, sel, n), 0.0)
        return ent.view(1, 1, n, ent.shape[-1]).to(hidden_states.dtype), bias[..., :n].to(hidden_states.dtype)


def low_modules(cfg, low, tensors):
    """SGLang's modules of each ratio-1/2 layer with the checkpoint's tensors, in f32."""
    global SLOW, SCAND
    SLOW = SLOW or load_sglang_low()
    if low.get("candidate_source_layer_id", -1) >= 0:
        SCAND = SCAND or load_sglang_candidates()
    sc = types.SimpleNamespace(index_n_heads=cfg.index_n_heads, index_head_dim=cfg.index_head_dim,
                               qk_rope_head_dim=cfg.qk_rope_head_dim, index_topk=cfg.index_topk,
                               kv_source_layer_ids=low["kv_source_layer_ids"],
                               candidate_source_layer_id=low.get("candidate_source_layer_id", -1),
                               candidate_topk_blocks=low.get("candidate_topk_blocks", 0),
                               candidate_block_size=low.get("candidate_block_size", 0), q_lora_rank=cfg.q_lora_rank,
                               hidden_size=cfg.hidden_size, rms_norm_eps=cfg.rms_norm_eps)
    mods = {}
    for l, r in enumerate(low["compress_ratios"]):
        if r not in (1, 2):
            continue
        p = f"model.layers.{l}.attn."
        comp = ix = None
        if l in low["kv_source_layer_ids"]:
            comp = SLOW.DeepseekV41Compressor(cfg.hidden_size, cfg.head_dim, r, cfg.rms_norm_eps, fused_compress=False)
            sd = {"wkv.weight": tensors[p + "compressor.wkv.weight"], "norm.weight": tensors[p + "compressor.norm.weight"]}
            if r == 2:
                sd["wgate.weight"] = tensors[p + "compressor.wgate.weight"]
            comp.load_state_dict(sd)
            comp.float()
        if l in low["index_source_layer_ids"]:
            ix = SLOW.DeepseekV41Indexer(sc, l, cfg.head_dim, None, f"layers.{l}.attn.indexer")
            sd = {k: tensors[p + "indexer." + k] for k in ix.state_dict()}
            ix.load_state_dict(sd)
            ix.float()
            ix.forward_wk = lambda latent, ix=ix: ix.wk(latent)  # its fallback: the JIT GEMM needs CUDA
        mods[l] = (r, comp, ix)
    return mods


def low_tensors(model, low, tensors, gen):
    """The checkpoint of the ratio-1/2 layers, SGLang's names and dtypes (bf16 projections): a kv
    source keeps transformers' HCA compressor as wkv, wgate (ratio 2) and norm, without ape; an index
    source gets wq_b, weights_proj and, owning the keys, wk and k_norm. Other layers hold none."""
    cfg = model.config
    nI, dI, D, Q, H = cfg.index_n_heads, cfg.index_head_dim, cfg.head_dim, cfg.q_lora_rank, cfg.hidden_size
    for l, r in enumerate(low["compress_ratios"]):
        if r not in (1, 2):
            continue
        p = f"model.layers.{l}.attn."
        kv = l in low["kv_source_layer_ids"]
        for k in [k for k in tensors if k.startswith(p + "compressor.")]:
            leaf = k[len(p + "compressor."):]
            if not kv or leaf == "ape" or (leaf == "wgate.weight" and r == 1):
                del tensors[k]
            elif leaf != "norm.weight":
                tensors[k] = tensors[k].to(torch.bfloat16)
        if l in low["index_source_layer_ids"]:
            tensors[p + "indexer.wq_b.weight"] = (1.5 / math.sqrt(Q) * torch.randn(nI * dI, Q, generator=gen)).to(
                torch.bfloat16)
            tensors[p + "indexer.weights_proj.weight"] = (
                1.5 / math.sqrt(H) * torch.randn(nI, H, generator=gen)).to(torch.bfloat16)
            if kv:
                tensors[p + "indexer.wk.weight"] = (1.5 / math.sqrt(D) * torch.randn(dI, D, generator=gen)).to(
                    torch.bfloat16)
                tensors[p + "indexer.k_norm.weight"] = 1.0 + 0.25 * torch.randn(dI, generator=gen)


def install_low(model, low, tensors):
    state = LowState(model.config, low)
    for l, (r, comp, ix) in low_modules(model.config, low, tensors).items():
        attn = model.model.layers[l].self_attn
        attn.compressor = LowRatio(state, l, r, comp, ix, attn.compressor.rotary_emb)
    return state


# ----------------------------------------------------------------------------------------------


def sglang_checks(ref, tok_fast, vc):
    """SGLang's functions against this fixture's values and the C engine's conventions."""
    hs = ref.hasher
    lay = ref.layout
    flat = [p for per in lay.primes[0] for p in per]
    return dict(
        compressed_vocab_size=vc, compressed_pad_id=int(hs.pad_id),
        primes={str(l): [list(p) for p in lay.primes[i]] for i, l in enumerate(lay.layer_ids)},
        column_bounds={str(l): list(lay.column_bounds(i)) for i, l in enumerate(lay.layer_ids)},
        multipliers=hs.multipliers.tolist(), table_rows=list(lay.num_embeddings),
        first_primes=flat[:4], ids_merged_by_compression=len(tok_fast) - vc)


def low_config(low):
    """transformers' view of a ratio schedule: ratio-1/2 layers as HCA (compress rope; LowRatio stands
    in for their compressor), ratio 4 as CSA with rate 4; hash routing on the even layers."""
    n = len(low["compress_ratios"])
    kinds = {0: V4.SWA, 1: V4.HCA, 2: V4.HCA, 4: V4.CSA}
    return dict(num_hidden_layers=n, layer_types=[kinds[r] for r in low["compress_ratios"]],
                mlp_layer_types=["hash_moe" if i % 2 == 0 else "moe" for i in range(n)], **LOW_INDEX)


def build(seed, out, tok, name):
    v41, low = FIXTURES[name][1], FIXTURES[name][2]
    cfg = V4.base_config(1e-2, 2.5, 1.75, **(low_config(low) if low else {}))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DeepseekV4ForCausalLM(cfg).float().eval()
    V4.perturb(model, gen)
    prompt = torch.randint(3, V4.VOCAB, (V4.PROMPT_LEN,), generator=gen).tolist()
    d = os.path.join(out, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    model.save_pretrained(d)
    tok.save(os.path.join(d, "tokenizer.json"))
    tok_fast = PreTrainedTokenizerFast(tokenizer_file=os.path.join(d, "tokenizer.json"))
    lookup, vc = SGL.build_compressed_token_map(tok_fast)
    with open(os.path.join(d, "config.json")) as f:
        cfg_json = json.load(f)
    cfg_json.update(ENGRAM, engram_compressed_vocab_size=vc, **v41)
    if low:  # SGLang's literal ratios (4: CSA at rate 4) and sources replace transformers' schedule
        for k in ("layer_types", "compress_rates"):
            cfg_json.pop(k, None)
        cfg_json.update(low)
    layout = SGL.EngramLayout.from_config(types.SimpleNamespace(**cfg_json, engram_num_embeddings=[0, 0]))
    cfg_json["engram_num_embeddings"] = [sum(p for per in layer for p in per) for layer in layout.primes]
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
    # the Engram tensors beside the backbone's
    st_path = os.path.join(d, "model.safetensors")
    tensors = load_file(st_path)
    H, N, hd = cfg.hidden_size, cfg.hc_mult, ENGRAM["engram_head_dim"]
    C = (ENGRAM["engram_max_ngram_size"] - 1) * ENGRAM["engram_n_heads"]
    for lid, rows in zip(ENGRAM["engram_layer_ids"], cfg_json["engram_num_embeddings"]):
        p = f"model.layers.{lid}.engram."
        tensors[p + "embed.weight"], tensors[p + "embed.scale"] = make_table(rows, hd, gen)
        wkv = 1.5 / math.sqrt(C * hd) * torch.randn((N + 1) * H, C * hd, generator=gen)
        tensors[p + "wkv.weight"], tensors[p + "wkv.scale"], _ = V4.quantize_fp8_block(wkv)
        tensors[p + "q_weight"] = 1.0 + 0.25 * torch.randn(N, H, generator=gen)
        tensors[p + "k_weight"] = 1.0 + 0.25 * torch.randn(N, H, generator=gen)
    if low:
        low_tensors(model, low, tensors, gen)
    if v41.get("hc_pre_from_prev_sublayer"):  # SGLang makes no hc_head then: the checkpoint has none
        for k in [k for k in tensors if k.startswith("model.hc_head.")]:
            del tensors[k]
    save_file(tensors, st_path, metadata={"format": "pt"})
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)

    ref_model = DeepseekV4ForCausalLM.from_pretrained(d, config=cfg, dtype=torch.float32,
                                                      attn_implementation="eager").eval()
    src_sd = model.state_dict()
    lows = [l for l, r in enumerate(low["compress_ratios"]) if r in (1, 2)] if low else []
    for k, v in ref_model.state_dict().items():
        if k.startswith("model.hc_head.") and v41 or any(k.startswith(f"model.layers.{l}.self_attn.compressor.")
                                                          for l in lows):
            continue  # none in the checkpoint / LowRatio's, read from it below
        assert torch.equal(v, src_sd[k]), f"{k} changed through save/load"
    ref = EngramRef(cfg_json, tok_fast, load_file(st_path), cfg.rms_norm_eps)
    ref.install(ref_model)
    lowst = install_low(ref_model, low, load_file(st_path)) if low else None
    lag = None
    if v41:
        assert v41 == LAG
        lag = LaggedHC(cfg)
        q_norms = [layer.self_attn.q_b_norm for layer in ref_model.model.layers]
        lag.install(ref_model)
    res, reasons = V4.evaluate(ref_model, prompt)
    # rows and gates over prompt + greedy[:-1], one full forward (causal: equal to the decode's)
    ref.record = dict(gates={l: [] for l in ref.t}, rows={l: [] for l in ref.t})
    V4.full_logits(ref_model, prompt + res["tokens"][:-1])
    rec, ref.record = ref.record, None
    ref.enabled = False
    plain = V4.full_logits(ref_model, prompt)[-1]
    ref.enabled = True
    effect = float((plain - res["logits_all"][-1]).abs().max())
    if effect < MIN_EFFECT:
        reasons.append(f"engram effect {effect:.2e}")
    gates = np.array([rec["gates"][l] for l in ref.t])
    if gates.std() < 0.05:
        reasons.append(f"gates hardly vary ({gates.std():.3f})")
    extra = dict(rows={str(l): rec["rows"][l] for l in ref.t}, gates={str(l): rec["gates"][l] for l in ref.t},
                 engram_effect=effect, sglang_checks=sglang_checks(ref, tok_fast, vc))
    if lag:
        # what the query head norm would have changed: put transformers' back for one forward
        for layer, qn in zip(ref_model.model.layers, q_norms):
            layer.self_attn.q_b_norm = qn
        qeffect = float((V4.full_logits(ref_model, prompt)[-1] - res["logits_all"][-1]).abs().max())
        for layer in ref_model.model.layers:
            layer.self_attn.q_b_norm = torch.nn.Identity()
        if qeffect < MIN_EFFECT:
            reasons.append(f"q_head_norm effect {qeffect:.2e}")
        extra["v41_backbone"] = dict(v41, q_head_norm_effect=qeffect, pre_checked_against_sglang=lag.checks)
    if lowst:
        gap = min(lowst.index_gaps) if lowst.index_gaps else float("inf")
        if lowst.fragile:
            reasons.append(f"fake quantisations within {QUANT_EPS} of a rounding boundary at {sorted(lowst.fragile)}")
        if gap < V4.MIN_INDEX_GAP:
            reasons.append(f"ratio-1/2 index gap {gap:.1e}")
        if len(lowst.index_gaps) < 10:
            reasons.append("the ratio-1/2 top-k hardly selects")
        if low.get("candidate_source_layer_id", -1) >= 0:
            bgap = min(lowst.block_gaps) if lowst.block_gaps else float("inf")
            if bgap < V4.MIN_INDEX_GAP:
                reasons.append(f"candidate block gap {bgap:.1e}")
            if len(lowst.block_gaps) < 10 or lowst.cand_rows < 10:
                reasons.append(f"the candidates hardly matter ({len(lowst.block_gaps)} rows choosing blocks, "
                               f"{lowst.cand_rows} consumer rows changed)")
            extra["v41_candidates"] = dict(min_block_gap=bgap, source_rows_choosing_blocks=len(lowst.block_gaps),
                                           consumer_rows_changed_by_candidates=lowst.cand_rows)
        extra["v41_low_ratio"] = dict(low, min_index_gap=gap, index_rows_selecting=len(lowst.index_gaps),
                                      index_rows=lowst.index_rows, quantised_values_checked=lowst.quantised,
                                      quant_eps=QUANT_EPS, entries_at_last_forward=lowst.entry_counts)
    return d, prompt, res, reasons, extra, cfg


def main():
    if len(sys.argv) < 2 or any(n not in FIXTURES for n in sys.argv[2:]):
        sys.exit(__doc__)
    out = sys.argv[1]
    tok = train_tokenizer(V4.VOCAB)
    for name in sys.argv[2:] or list(FIXTURES):
        make(out, tok, name)


def make(out, tok, name):
    seed0 = FIXTURES[name][0]
    for seed in range(seed0, seed0 + 200):
        d, prompt, res, reasons, extra, cfg = build(seed, out, tok, name)
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
        swiglu_clamped=res["clamps"], incremental_decoding=res["incremental"], chunked_prefill=res["chunked"],
        logits_all_shape=list(la.shape), seed=seed, **extra,
        thresholds=dict(min_margin=V4.MIN_MARGIN, min_router_gap=V4.MIN_ROUTER_GAP,
                        min_index_gap=V4.MIN_INDEX_GAP, incremental_tol=V4.INCR_TOL, min_engram_effect=MIN_EFFECT),
        compute_dtype="float32", transformers=transformers.__version__, torch=torch.__version__, sglang="0.5.23",
        notes=("Tiny random DeepseekV4ForCausalLM (the deepseek_v4 fixture's shape and checks) with the "
               "DeepSeek-V4.1 Engram of SGLang 0.5.23 at layers 1 and 2 (see the tool's docstring for what "
               "is SGLang's own code and what is transcribed). rows: per layer [token][column] table rows of "
               "prompt + greedy[:-1]; gates: per layer the gate of each of those tokens, mean over the "
               "hc_mult streams. engram_effect: max |last-position logit change| without the Engram."
               + ("" if name == NAME else
                  " V4.1 backbone: hc_pre_from_prev_sublayer (the collapse lags one hyper-connection, stream 0 "
                  "at the first, no hc_head tensors) and q_head_norm false, as SGLang runs them; "
                  "v41_backbone.q_head_norm_effect: max |last-position logit change| with transformers' "
                  "query head norm put back.")
               + ("" if name in (NAME, BACKBONE) else
                  " V4.1 compress ratios 1 and 2 (v41_low_ratio: the schedule and sources, the indexer's smallest "
                  "top-k gap, the fake-quantised values checked against a quant_eps perturbation, the entries "
                  "of each layer's kv source at the last forward): SGLang's DeepseekV41Compressor, "
                  "DeepseekV41Indexer and fp4_fake_quant.py run in f32 activations, its attention backend's "
                  "torch path transcribed around them.")))
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    sizes = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}
    print(f"{name}: seed {seed} ok, min margin {res['min_margin']:.3e}, effect {extra['engram_effect']:.3f}, "
          f"Vc {extra['sglang_checks']['compressed_vocab_size']}, incremental "
          f"{res['incremental']['max_abs_diff_any']:.1e}, chunked {res['chunked']['max_abs_diff_any']:.1e}, "
          f"files {sizes}", flush=True)


if __name__ == "__main__":
    main()
