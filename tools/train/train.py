#!/usr/bin/env python3
"""Trains the default model: a Qwen3-style backbone (transformers) with Engram
modules (engram_torch.py, ENGRAM.md) applied as h = h + engram(h) at the start
of their layers, on the dictionary corpus (corpus.py) with the project's
tokenizer (tokenizer.py). Runs on the GPU machine.

  train.py --corpus C.txt[.xz] --tokenizer DIR --run DIR [--no-engram]
           [--minutes M | --steps N] [--resume] [--export MODEL_DIR]

A run checkpoints to RUN/ckpt.pt (model, optimizer, step, schedule) every
--save-every steps and at the end; --resume continues from it, so a long
schedule can be split into runs of under ten minutes. --minutes fixes the
step count from the measured speed of the first 20 steps (written to
RUN/steps.txt), so an ablation can be trained on exactly as many tokens with
--steps. The final validation losses go to RUN/losses.json: "val" and, with
Engram, "val_engram_zeroed" (the trained model with its Engram outputs
replaced by zero).
"""
import argparse
import json
import lzma
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, Qwen3Config

from engram_torch import EngramHash, EngramModule, compressed_lookup

BACKBONE = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=6, num_attention_heads=4,
                num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, rope_theta=10000.0,
                rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")
ENGRAM = dict(engram_vocab_size=[12000, 12000], max_ngram_size=3, n_embed_per_ngram=128,
              n_head_per_ngram=4, layer_ids=[1, 3], pad_id=0, seed=0, kernel_size=4, hc_mult=1)


def load_ids(corpus, tok, cache):
    if os.path.exists(cache):
        return np.load(cache)
    raw = lzma.open(corpus).read() if corpus.endswith(".xz") else open(corpus, "rb").read()
    docs = raw.decode("utf-8").split("<|endoftext|>")
    eot = tok.token_to_id("<|endoftext|>")
    out = []
    for i in range(0, len(docs), 20000):
        for enc in tok.encode_batch(docs[i:i + 20000], add_special_tokens=False):
            out.extend(enc.ids)
            out.append(eot)
    ids = np.array(out, dtype=np.uint16)
    np.save(cache, ids)
    return ids


class Model(torch.nn.Module):
    def __init__(self, vocab, tok, use_engram):
        super().__init__()
        cfg = Qwen3Config(vocab_size=vocab, bos_token_id=None, eos_token_id=[tok.token_to_id("<|endoftext|>"),
                          tok.token_to_id("<|im_end|>")], pad_token_id=tok.token_to_id("<|endoftext|>"), **BACKBONE)
        self.lm = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
        self.engram = torch.nn.ModuleDict()
        self.hash = None
        self.zero_engram = False
        self.ids = None
        if use_engram:
            lookup, vc = compressed_lookup(tok)
            self.hash = EngramHash(ENGRAM, lookup, vc)
            for lid in ENGRAM["layer_ids"]:
                self.engram[str(lid)] = EngramModule(BACKBONE["hidden_size"], self.hash.table_rows(lid), ENGRAM)
                self.lm.model.layers[lid].register_forward_pre_hook(self._hook(lid), with_kwargs=True)

    def _hook(self, lid):
        def hook(mod, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            if not self.zero_engram:
                out = self.engram[str(lid)](h, self.hash.rows(self.ids, lid))
                h = h + out.to(h.dtype)
            if args:
                return (h, *args[1:]), kwargs
            kwargs["hidden_states"] = h
            return args, kwargs
        return hook

    def forward(self, ids, labels=None):
        self.ids = ids
        return self.lm(input_ids=ids, labels=labels)


def batches(data, seq, batch, gen):
    n = data.numel() - seq - 1
    while True:
        off = torch.randint(0, n, (batch,), generator=gen, device="cpu").to(data.device)
        idx = off[:, None] + torch.arange(seq + 1, device=data.device)[None]
        x = data[idx]
        yield x[:, :-1].long(), x[:, 1:].long()


@torch.no_grad()
def evaluate(model, val, seq, batch, n_batches=40):
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    it = batches(val, seq, batch, gen)
    tot = 0.0
    for _ in range(n_batches):
        x, y = next(it)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x).logits
        tot += F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1)).item()
    model.train()
    return tot / n_batches


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--no-engram", action="store_true")
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--save-every", type=int, default=1000)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export")
    a = ap.parse_args()
    os.makedirs(a.run, exist_ok=True)
    torch.manual_seed(0)
    tok = Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))
    ids = load_ids(a.corpus, tok, os.path.join(a.run, "..", "corpus_ids.npy"))
    data = torch.from_numpy(ids.astype(np.int32)).cuda()
    n_val = len(ids) // 100
    train, val = data[:-n_val], data[-n_val:]
    print(f"tokens: train {train.numel()}, val {val.numel()}", flush=True)

    model = Model(tok.get_vocab_size(), tok, not a.no_engram).cuda()
    table = [p for n, p in model.named_parameters() if "multi_head_embedding" in n]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "multi_head_embedding" not in n]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [dict(params=decay, weight_decay=0.1), dict(params=other, weight_decay=0.0)]
    if table:  # Engram tables: sparse rows, larger steps, no decay (as the paper's setup suggests)
        groups.append(dict(params=table, weight_decay=0.0, lr_mult=5.0))
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), fused=True)
    print(f"params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"(Engram tables {sum(p.numel() for p in table) / 1e6:.2f}M)", flush=True)

    step, total = 0, a.steps
    ckpt = os.path.join(a.run, "ckpt.pt")
    if a.resume and os.path.exists(ckpt):
        st = torch.load(ckpt, map_location="cuda")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, total = st["step"], st["total"]
        print(f"resumed at step {step} of {total}", flush=True)

    gen = torch.Generator().manual_seed(step + 1)
    it = batches(train, a.seq, a.batch, gen)
    warm = 200
    t0, t_start = None, time.time()
    while total is None or step < total:
        lr_scale = min(1.0, (step + 1) / warm)
        if total:
            lr_scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
        for g in opt.param_groups:
            g["lr"] = a.lr * lr_scale * g.get("lr_mult", 1.0)
        x, y = next(it)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, labels=None).logits
            loss = F.cross_entropy(loss.float().view(-1, loss.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step == 5:
            torch.cuda.synchronize()
            t0 = time.time()
        if total is None and step == 25:
            torch.cuda.synchronize()
            per = (time.time() - t0) / 20
            total = int(a.minutes * 60 / per)
            print(f"{per * 1000:.1f} ms/step -> {total} steps in {a.minutes} min", flush=True)
        if step % 200 == 0:
            print(f"step {step}/{total} loss {loss.item():.4f} {time.time() - t_start:.0f}s", flush=True)
        if step % a.save_every == 0 or step == total:
            torch.save(dict(model=model.state_dict(), opt=opt.state_dict(), step=step, total=total), ckpt)
    open(os.path.join(a.run, "steps.txt"), "w").write(str(total))

    losses = dict(steps=total, tokens=total * a.seq * a.batch, val=evaluate(model, val, a.seq, a.batch))
    if model.hash:
        model.zero_engram = True
        losses["val_engram_zeroed"] = evaluate(model, val, a.seq, a.batch)
        model.zero_engram = False
    print("losses", json.dumps(losses), flush=True)
    json.dump(losses, open(os.path.join(a.run, "losses.json"), "w"))
    if a.export:
        from export import export
        export(model, tok, a.tokenizer, a.export, ENGRAM if model.hash else None)


if __name__ == "__main__":
    main()
