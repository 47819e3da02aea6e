"""Golden tests of the CPU reference engine against Hugging Face transformers.

The fixtures (tools/make_fixtures.py, run with transformers 5.17 / torch 2.11)
hold tiny random Llama (llama3 rope scaling, f32), Qwen2 (q/k/v bias, tied
embeddings, bf16, sharded with an index), Qwen3 (q/k norm, explicit head_dim,
MQA, f16) and Mistral (sliding window 8) checkpoints, and Qwen3-MoE ones
(transformers 5.25: a dense layer among sparse ones, normalised top-2, f32;
decoder_sparse_step 2, unnormalised top-3, bf16), with transformers'
last-position logits and 24 greedy tokens. We require logits within 1e-4 max
absolute difference and identical greedy tokens through prefill in one pass,
in chunks, and token by token."""
import json
import shutil

import numpy as np
import pytest

from conftest import MODELS, run_bin

NAMES = ["llama3", "qwen2", "qwen3", "mistral", "qwen3_moe", "qwen3_moe_bf16"]


def golden(name):
    return json.loads((MODELS / name / "golden.json").read_text())


def generate(model_dir, prompt, tmp_path, chunk):
    logits_file = tmp_path / f"logits-{chunk}.f32"
    p = run_bin("engram-run", "--model", model_dir, "--prompt-ids", ",".join(map(str, prompt)),
                "--temperature", "0", "--max-tokens", "24", "--ignore-eos", "--print-ids",
                "--prefill-chunk", chunk, "--dump-logits", logits_file)
    ids = json.loads(p.stdout.strip().splitlines()[-1])
    return ids, np.fromfile(logits_file, dtype="<f4")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk", [256, 5, 1])
def test_logits_and_greedy_match_transformers(name, chunk, tmp_path):
    g = golden(name)
    ref = np.fromfile(MODELS / name / "logits.f32", dtype="<f4")
    ids, logits = generate(MODELS / name, g["prompt_ids"], tmp_path, chunk)
    assert logits.shape == ref.shape
    assert np.isfinite(logits).all()
    diff = float(np.abs(logits - ref).max())
    assert diff < 1e-4, f"{name}: max |logit diff| {diff}"
    assert ids == g["greedy_ids"]


def classic_config(cfg):
    """Rewrites transformers-5 rope_parameters into the classic keys."""
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    if rp.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rp
    return cfg


@pytest.mark.parametrize("name", ["llama3", "qwen3"])
def test_classic_rope_keys_give_the_same_result(name, tmp_path):
    d = tmp_path / name
    shutil.copytree(MODELS / name, d)
    cfg = classic_config(json.loads((d / "config.json").read_text()))
    assert "rope_parameters" not in cfg
    (d / "config.json").write_text(json.dumps(cfg))
    g = golden(name)
    ids, logits = generate(d, g["prompt_ids"], tmp_path, 256)
    ref = np.fromfile(MODELS / name / "logits.f32", dtype="<f4")
    assert float(np.abs(logits - ref).max()) < 1e-4
    assert ids == g["greedy_ids"]


def test_model_type_fallback_without_architectures(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(MODELS / "qwen2", d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["architectures"]
    (d / "config.json").write_text(json.dumps(cfg))
    g = golden("qwen2")
    ids, _ = generate(d, g["prompt_ids"], tmp_path, 256)
    assert ids == g["greedy_ids"]


def test_unsharded_directory_without_index(tmp_path):
    """Without model.safetensors.index.json every *.safetensors is read."""
    d = tmp_path / "m"
    shutil.copytree(MODELS / "qwen2", d)
    (d / "model.safetensors.index.json").unlink()
    g = golden("qwen2")
    ids, _ = generate(d, g["prompt_ids"], tmp_path, 256)
    assert ids == g["greedy_ids"]


def test_sampling_is_seed_reproducible_and_seed_dependent():
    g = golden("llama3")
    args = ["--model", MODELS / "llama3", "--prompt-ids", ",".join(map(str, g["prompt_ids"])),
            "--temperature", "1.5", "--top-p", "0.95", "--top-k", "50", "--max-tokens", "24",
            "--ignore-eos", "--print-ids"]
    a = json.loads(run_bin("engram-run", *args, "--seed", "7").stdout.splitlines()[-1])
    b = json.loads(run_bin("engram-run", *args, "--seed", "7").stdout.splitlines()[-1])
    c = json.loads(run_bin("engram-run", *args, "--seed", "8").stdout.splitlines()[-1])
    assert a == b
    assert len(a) == 24 and a != c


def test_stops_at_eos(tmp_path):
    """With eos_token_id set to the first greedy token, generation stops after it."""
    d = tmp_path / "m"
    shutil.copytree(MODELS / "mistral", d)
    g = golden("mistral")
    cfg = json.loads((d / "config.json").read_text())
    # a list: an id never generated (in the vocabulary: one outside it is refused at load), then the one that stops
    cfg["eos_token_id"] = [cfg["vocab_size"] - 1, g["greedy_ids"][2]]
    (d / "config.json").write_text(json.dumps(cfg))
    p = run_bin("engram-run", "--model", d, "--prompt-ids", ",".join(map(str, g["prompt_ids"])),
                "--temperature", "0", "--max-tokens", "24", "--print-ids")
    assert json.loads(p.stdout.splitlines()[-1]) == g["greedy_ids"][:3]


def test_moe_stacked_experts_load_like_per_expert_ones(tmp_path):
    """transformers 5 keeps experts stacked in memory (mlp.experts.gate_up_proj
    [E, 2I, d], mlp.experts.down_proj [E, d, I]); a checkpoint written that way
    gives the same logits as the release's per-expert tensors."""
    from safetensors.numpy import load_file, save_file
    src = MODELS / "qwen3_moe"
    d = tmp_path / "m"
    shutil.copytree(src, d)
    t = load_file(str(d / "model.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    E = cfg.get("num_experts", cfg.get("num_local_experts"))
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp.experts"
        if f"{p}.0.gate_proj.weight" not in t:
            continue
        gate_up = [np.concatenate([t.pop(f"{p}.{e}.gate_proj.weight"), t.pop(f"{p}.{e}.up_proj.weight")])
                   for e in range(E)]
        t[f"{p}.gate_up_proj"] = np.stack(gate_up)
        t[f"{p}.down_proj"] = np.stack([t.pop(f"{p}.{e}.down_proj.weight") for e in range(E)])
    save_file(t, str(d / "model.safetensors"))
    g = golden("qwen3_moe")
    ids, logits = generate(d, g["prompt_ids"], tmp_path, 256)
    ref = np.fromfile(src / "logits.f32", dtype="<f4")
    assert float(np.abs(logits - ref).max()) < 1e-4
    assert ids == g["greedy_ids"]
