#!/usr/bin/env python3
"""Builds the Engram golden fixture by running DeepSeek's public reference
module (engram_demo_v1.py from github.com/deepseek-ai/Engram; pass its path,
it is not part of this repository) on a tiny transformers Qwen3 backbone.

Output directory (a checkpoint in our format, DESIGN.md "Checkpoint format"):
  config.json       Qwen3 config plus an "engram" object (reference field names, hc_mult)
  model.safetensors backbone tensors plus model.layers.{i}.engram.<reference module path>
  tokenizer.json, tokenizer_config.json   the tokenizer the hashes were built from
  golden.json       prompt, greedy continuation and margins, compressed lookup, multipliers,
                    head primes, per-layer row ids (hash + offset) and gates of the final sequence
  logits.f32        last prompt position logits (raw little-endian f32)
  module_hc4.safetensors  one Engram module with hc_mult 4 alone: its weights (same names),
                    random hidden states "input" (T, 4, d), token ids "ids" and the reference
                    output "output" (T, 4, d) and gates "gates" (T, 4)

The reference applies the module as h = h + engram(h) at the start of a layer,
before attention; we hook each Engram layer's decoder layer to do exactly that.
Greedy decoding recomputes the whole sequence each step, as the reference
module hashes and convolves whole sequences.

Usage: make_engram_fixture.py REFERENCE_PY TOKENIZER_DIR OUT_DIR
"""
import importlib.util
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

NEW_TOKENS = 24
MIN_MARGIN = 2e-3
PROMPT = "The cat sat on the mat. THE CAT sat on The Mat again, and the cat"


def load_reference(path):
    spec = importlib.util.spec_from_file_location("engram_demo_v1", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def perturb(module, gen):
    with torch.no_grad():
        for _, p in module.named_parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


class GateProbe:
    """Captures normed key/query of an Engram module to report its gates."""

    def __init__(self, engram, hc, d):
        self.k, self.q, self.d = [None] * hc, [None] * hc, d
        for g in range(hc):
            engram.norm1[g].register_forward_hook(lambda m, a, o, g=g: self.k.__setitem__(g, o.detach()))
            engram.norm2[g].register_forward_hook(lambda m, a, o, g=g: self.q.__setitem__(g, o.detach()))

    def gates(self):
        out = []
        for k, q in zip(self.k, self.q):
            s = (k * q).sum(-1) / math.sqrt(self.d)
            out.append(torch.sigmoid(s.abs().clamp_min(1e-6).sqrt() * s.sign()))
        return torch.stack(out, -1)[0]  # (T, hc)


def main():
    ref_path, tok_dir, out = sys.argv[1:4]
    demo = load_reference(ref_path)
    os.makedirs(out, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), os.path.join(out, f))
    tok = AutoTokenizer.from_pretrained(out)
    V = len(tok)
    d, layers = 64, 3
    ecfg = dict(engram_vocab_size=[1000, 1500], max_ngram_size=3, n_embed_per_ngram=32,
                n_head_per_ngram=4, layer_ids=[1, 2], pad_id=2, seed=0, kernel_size=4)
    demo.engram_cfg = demo.EngramConfig(tokenizer_name_or_path=out, **ecfg)

    for seed in range(1000, 1100):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        # The module alone with hc_mult 4 (the reference reads backbone_config at call time).
        demo.backbone_config = demo.BackBoneConfig(hidden_size=d, hc_mult=4, vocab_size=V, num_layers=layers)
        m4 = demo.Engram(layer_id=1).eval()
        perturb(m4, gen)
        probe4 = GateProbe(m4, 4, d)
        ids4 = np.array([tok.encode(PROMPT)], dtype=np.int64)
        x4 = torch.randn(1, ids4.shape[1], 4, d, generator=gen)
        with torch.no_grad():
            y4 = m4(x4, ids4)
        g4 = probe4.gates()

        demo.backbone_config = demo.BackBoneConfig(hidden_size=d, hc_mult=1, vocab_size=V, num_layers=layers)
        cfg = Qwen3Config(vocab_size=V, hidden_size=d, intermediate_size=160, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                          tie_word_embeddings=False, initializer_range=0.12, bos_token_id=0,
                          eos_token_id=1)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
        perturb(model, gen)
        engrams = {lid: demo.Engram(layer_id=lid).eval() for lid in ecfg["layer_ids"]}
        probes = {}
        for lid, e in engrams.items():
            perturb(e, gen)
            probes[lid] = GateProbe(e, 1, d)
        current = {}

        def make_hook(e):
            def hook(mod, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                h = h + e(h.unsqueeze(2), current["ids"]).squeeze(2)
                if args:
                    return (h, *args[1:]), kwargs
                kwargs["hidden_states"] = h
                return args, kwargs
            return hook

        for lid, e in engrams.items():
            model.model.layers[lid].register_forward_pre_hook(make_hook(e), with_kwargs=True)

        def forward(seq):
            current["ids"] = np.array([seq], dtype=np.int64)
            with torch.no_grad():
                return model(torch.tensor([seq])).logits[0, -1]

        prompt = tok.encode(PROMPT)
        logits = forward(prompt).float()
        seq, margins = list(prompt), []
        for _ in range(NEW_TOKENS):
            l = forward(seq).double()
            top = torch.topk(l, 2)
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
        if min(margins) >= MIN_MARGIN:
            break
        print(f"seed {seed} rejected: min margin {min(margins):.2e}")

    # Final sequence minus its last token was the last forward: gates and rows of seq[:-1].
    full = np.array([seq[:-1]], dtype=np.int64)
    hm = engrams[1].hash_mapping
    hashes = hm.hash(full)
    rows, gates = {}, {}
    for lid, e in engrams.items():
        offs = e.multi_head_embedding.offsets.numpy()
        rows[str(lid)] = (hashes[lid][0] + offs).tolist()
        gates[str(lid)] = probes[lid].gates()[:, 0].tolist()

    # Checkpoint: backbone as transformers saves it, plus the Engram tensors.
    model.save_pretrained(out, safe_serialization=True)
    tensors = load_file(os.path.join(out, "model.safetensors"))
    for lid, e in engrams.items():
        for name, p in e.named_parameters():
            tensors[f"model.layers.{lid}.engram.{name}"] = p.detach().contiguous()
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    conf = json.load(open(os.path.join(out, "config.json")))
    conf["engram"] = dict(ecfg, hc_mult=1)
    json.dump(conf, open(os.path.join(out, "config.json"), "w"), indent=1)
    m4t = {f"engram.{n}": p.detach().contiguous() for n, p in m4.named_parameters()}
    m4t.update(input=x4[0].contiguous(), ids=torch.from_numpy(ids4[0]), output=y4[0].contiguous(),
               gates=g4.contiguous())
    save_file(m4t, os.path.join(out, "module_hc4.safetensors"))

    logits.numpy().astype("<f4").tofile(os.path.join(out, "logits.f32"))
    golden = dict(prompt_text=PROMPT, prompt_ids=prompt, greedy_ids=seq[len(prompt):],
                  margins=margins, min_margin=min(margins), vocab=V,
                  compressed_vocab=len(hm.compressed_tokenizer),
                  lookup=hm.compressed_tokenizer.lookup_table.tolist(),
                  compressed_pad=hm.pad_id,
                  multipliers={str(l): hm.layer_multipliers[l].tolist() for l in ecfg["layer_ids"]},
                  primes={str(l): [p for y in hm.vocab_size_across_layers[l] for p in y]
                          for l in ecfg["layer_ids"]},
                  rows=rows, gates=gates, rows_of="prompt_ids + greedy_ids[:-1]",
                  hc4_ids=ids4[0].tolist())
    json.dump(golden, open(os.path.join(out, "golden.json"), "w"))
    os.remove(os.path.join(out, "generation_config.json")) if os.path.exists(
        os.path.join(out, "generation_config.json")) else None
    print(f"ok: seed {seed}, V={V}, Vc={golden['compressed_vocab']}, min margin {min(margins):.3e}, "
          f"files {sorted(os.listdir(out))}")


if __name__ == "__main__":
    main()
