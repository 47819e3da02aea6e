"""Exports a trained model (train.py) to the project's checkpoint format
(DESIGN.md): bf16 model.safetensors with the backbone under transformers'
names and the Engram modules under model.layers.{i}.engram.<reference path>,
config.json with an "engram" object, the tokenizer files. Also writes
golden.json and logits.f32 beside it (OUT/../golden/): the model's own
f32 outputs from the bf16-rounded weights for a chat prompt, which the C
engine must reproduce (tests/integration/test_default_model.py)."""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from align_safetensors import align  # noqa: E402

PROMPT = '<|im_start|>user\nWhat does "memory" mean?<|im_end|>\n<|im_start|>assistant\n'


def export(model, tok, tok_dir, out, engram_cfg):
    os.makedirs(out, exist_ok=True)
    tied = model.lm.config.tie_word_embeddings
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.lm.state_dict().items()
          if not (tied and k == "lm_head.weight")}
    for lid, mod in model.engram.items():
        for n, p in mod.named_parameters():
            sd[f"model.layers.{lid}.engram.{n}"] = p.detach().to(torch.bfloat16).contiguous()
    save_file(sd, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    align(os.path.join(out, "model.safetensors"))  # tensors on cache lines for the CPU's products
    cfg = model.lm.config.to_dict()
    cfg["architectures"] = ["Qwen3ForCausalLM"]
    cfg["dtype"] = "bfloat16"
    if engram_cfg:
        cfg["engram"] = engram_cfg
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), os.path.join(out, f))

    # Golden: f32 compute from the bf16-rounded weights.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.eval()
    ids = tok.encode(PROMPT, add_special_tokens=False).ids
    seq, margins = list(ids), []
    with torch.no_grad():
        logits = model(torch.tensor([ids]).cuda()).logits[0, -1].float().cpu()
        gates = {lid: m.last_gate[0, :, 0].cpu().tolist() for lid, m in model.engram.items()}
        for _ in range(24):
            l = model(torch.tensor([seq]).cuda()).logits[0, -1].double()
            top = torch.topk(l, 2)
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
    gdir = os.path.join(os.path.dirname(os.path.abspath(out)), "golden")
    os.makedirs(gdir, exist_ok=True)
    logits.numpy().astype("<f4").tofile(os.path.join(gdir, "logits.f32"))
    json.dump(dict(prompt=PROMPT, prompt_ids=ids, greedy_ids=seq[len(ids):], margins=margins,
                   gates=gates, text=tok.decode(seq[len(ids):])),
              open(os.path.join(gdir, "golden.json"), "w"), indent=1)
    print("exported", out, "greedy:", repr(tok.decode(seq[len(ids):])), flush=True)
