"""Golden tests of DeepseekV4ForCausalLM on the CPU against Hugging Face
transformers 5.25 (fixture tests/fixtures/models/deepseek_v4, made by
tools/make_deepseek_v4_fixtures.py: f32, sliding + CSA + HCA layers, hash and
learned MoE, YaRN compress rope, mHC with hc_eps 1e-2; see its golden.json).
Logits are compared by max absolute difference, required below 1e-4 (the
largest |logit| is about 9, so that is also about 1e-5 relative); greedy
tokens must be identical; bad checkpoints must fail with one line naming
what is wrong."""
import json
import shutil

import numpy as np
import pytest
import requests

from conftest import MODELS, run_bin
from serverutil import Server, write_tokenizer

NAME = "deepseek_v4"
SRC = MODELS / NAME


def golden():
    return json.loads((SRC / "golden.json").read_text())


def run(model_dir, prompt, tmp_path, chunk, max_tokens=24, check=True):
    logits_file = tmp_path / f"logits-{chunk}-{len(prompt)}.f32"
    p = run_bin("engram-run", "--model", model_dir, "--prompt-ids", ",".join(map(str, prompt)),
                "--temperature", "0", "--max-tokens", max_tokens, "--ignore-eos", "--print-ids",
                "--prefill-chunk", chunk, "--dump-logits", logits_file, check=check)
    if not check:
        return p
    ids = json.loads(p.stdout.strip().splitlines()[-1])
    return ids, np.fromfile(logits_file, dtype="<f4")


@pytest.mark.parametrize("chunk", [256, 5, 1])
@pytest.mark.parametrize("name", [NAME, "deepseek_v4_fp8", "deepseek_v4_groups8"])
def test_logits_and_greedy_match_transformers(name, chunk, tmp_path):
    """deepseek_v4 is f32; deepseek_v4_fp8 holds the release's formats (FP8 e4m3
    with ue8m0 block scales, FP4 e2m1 experts with per-32 scales, F8_E8M0
    tensors), its golden computed by transformers from its own dequantisation
    (FineGrainedFP8Config(dequantize=True)); ours stays packed and is
    dequantised inside the products. deepseek_v4_groups8 has 8 heads in 8
    output groups (the fixture tensor parallelism runs at 8 ranks)."""
    src = MODELS / name
    g = json.loads((src / "golden.json").read_text())
    ref = np.fromfile(src / "logits.f32", dtype="<f4")
    ids, logits = run(src, g["prompt_ids"], tmp_path, chunk)
    assert logits.shape == ref.shape
    assert np.isfinite(logits).all()
    diff = float(np.abs(logits - ref).max())
    assert diff < 1e-4, f"max |logit diff| {diff}"
    assert ids == g["greedy_ids"]


def test_logits_at_every_prompt_position(tmp_path):
    """Each prefix of the prompt, its last position against logits_all.f32 (prompt_len, vocab)."""
    g = golden()
    prompt = g["prompt_ids"]
    ref = np.fromfile(SRC / "logits_all.f32", dtype="<f4").reshape(len(prompt), -1)
    worst = 0.0
    for n in range(1, len(prompt) + 1):
        _, logits = run(SRC, prompt[:n], tmp_path, 7, max_tokens=1)
        worst = max(worst, float(np.abs(logits - ref[n - 1]).max()))
    assert worst < 1e-4, f"max |logit diff| over all positions {worst}"


def test_chunkings_are_bit_identical(tmp_path):
    """The decode state makes chunked prefill equal full prefill exactly on the CPU."""
    g = golden()
    base = run(SRC, g["prompt_ids"], tmp_path, 256)[1]
    for chunk in [3, 4, 8, 9]:
        assert np.array_equal(run(SRC, g["prompt_ids"], tmp_path, chunk)[1], base), chunk


def copy_fixture(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(SRC, d)
    return d


def expect_error(d, tmp_path, *words):
    p = run(d, golden()["prompt_ids"][:4], tmp_path, 256, check=False)
    assert p.returncode != 0
    lines = [l for l in p.stderr.strip().splitlines() if l]
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_unknown_layer_type_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["layer_types"][2] = "linear_attention"
    (d / "config.json").write_text(json.dumps(cfg))
    expect_error(d, tmp_path, "layer_types[2]", "linear_attention")


def test_mismatched_expert_count_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_routed_experts"] = 6
    (d / "config.json").write_text(json.dumps(cfg))
    expect_error(d, tmp_path, "model.layers.0.ffn.gate.weight", "[8, 64]")


def test_missing_tensor_is_refused(tmp_path):
    from safetensors.numpy import load_file, save_file
    d = copy_fixture(tmp_path)
    t = load_file(str(d / "model.safetensors"))
    del t["model.layers.1.attn.indexer.compressor.ape"]
    save_file(t, str(d / "model.safetensors"))
    expect_error(d, tmp_path, "missing tensor", "model.layers.1.attn.indexer.compressor.ape")


def test_legacy_config_keys_give_the_same_result(tmp_path):
    """Older config keys: rates as compress_rate_csa / compress_rate_hca, and flat
    rope_theta + compress_rope_theta + rope_scaling (YaRN) instead of nested rope_parameters."""
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp["main"]["rope_theta"]
    cfg["compress_rope_theta"] = rp["compress"]["rope_theta"]
    cfg["rope_scaling"] = {k: v for k, v in rp["compress"].items() if k not in ("rope_theta", "partial_rotary_factor")}
    cfg["compress_rate_csa"], cfg["compress_rate_hca"] = 4, 8
    del cfg["compress_rates"]
    (d / "config.json").write_text(json.dumps(cfg))
    g = golden()
    ids, logits = run(d, g["prompt_ids"], tmp_path, 256)
    assert float(np.abs(logits - np.fromfile(SRC / "logits.f32", dtype="<f4")).max()) < 1e-4
    assert ids == g["greedy_ids"]


def release_names(t):
    """save_pretrained's mix (4.3) renamed to DeepSeek's release naming (4.1)."""
    out = {}
    for k, v in t.items():
        k = k.removeprefix("model.")
        k = {"embed_tokens.weight": "embed.weight", "hc_head.hc_fn": "hc_head_fn", "hc_head.hc_base": "hc_head_base",
             "hc_head.hc_scale": "hc_head_scale"}.get(k, k)
        if k.endswith(".attn.norm.weight"):
            k = k.replace(".attn.norm.weight", ".attn.kv_norm.weight")
        out[k] = v
    return out


def test_release_naming_and_stacked_experts_load(tmp_path):
    from safetensors.numpy import load_file, save_file
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    t = release_names(load_file(str(d / "model.safetensors")))
    E = cfg["n_routed_experts"]
    p = "layers.3.ffn.experts"  # one layer stacked the way transformers holds experts in memory
    t[f"{p}.gate_up_proj"] = np.stack([np.concatenate([t.pop(f"{p}.{e}.w1.weight"), t.pop(f"{p}.{e}.w3.weight")])
                                       for e in range(E)])
    t[f"{p}.down_proj"] = np.stack([t.pop(f"{p}.{e}.w2.weight") for e in range(E)])
    t["layers.0.ffn.gate.tid2eid"] = t["layers.0.ffn.gate.tid2eid"].astype(np.int32)
    save_file(t, str(d / "model.safetensors"))
    g = golden()
    ids, logits = run(d, g["prompt_ids"], tmp_path, 256)
    assert float(np.abs(logits - np.fromfile(SRC / "logits.f32", dtype="<f4")).max()) < 1e-4
    assert ids == g["greedy_ids"]


def test_server_completion_gives_the_greedy_tokens(tmp_path):
    d = copy_fixture(tmp_path)
    ids_of = write_tokenizer(d)
    g = golden()
    s = Server(model=d)
    try:
        r = requests.post(s.url + "/v1/completions", timeout=60,
                          json={"prompt": g["prompt_ids"], "max_tokens": 24, "temperature": 0, "logprobs": 0})
        assert r.status_code == 200, r.text
        toks = r.json()["choices"][0]["logprobs"]["tokens"]
        assert [ids_of[t] for t in toks] == g["greedy_ids"]
    finally:
        s.stop()


def concurrent_equals_alone(tmp_path, kv_tokens, block):
    """16 requests (prompts of different lengths: steps mix prefill and decode;
    5-token chunks) run alone, then concurrently under a KV budget of kv_tokens in
    blocks of `block`: the tokens and logprobs must equal the runs alone, and some
    round (up to three: preemption depends on how the requests overlap) must
    preempt. Returns the prompts."""
    from concurrent.futures import ThreadPoolExecutor
    from serverutil import metric
    d = copy_fixture(tmp_path)
    write_tokenizer(d)
    prompt = golden()["prompt_ids"]
    prompts = [prompt[: 5 + (7 * i) % 40] for i in range(16)]
    s = Server("--max-num-seqs", "16", "--prefill-chunk", "5", "--max-num-batched-tokens", "24",
               "--kv-cache-tokens", str(kv_tokens), "--kv-block-size", str(block), "--max-queued-requests", "64",
               model=d)

    def complete(p):
        r = requests.post(s.url + "/v1/completions", timeout=120,
                          json={"prompt": p, "max_tokens": 12, "temperature": 0, "logprobs": 0,
                                "ignore_eos": True})
        assert r.status_code == 200, r.text
        lp = r.json()["choices"][0]["logprobs"]
        return lp["tokens"], lp["token_logprobs"]
    try:
        alone = [complete(p) for p in prompts]
        for _ in range(3):
            with ThreadPoolExecutor(16) as ex:
                together = list(ex.map(complete, prompts))
            assert together == alone
            if metric(requests.get(s.url + "/metrics").text, "engram_num_preemptions_total") > 0:
                break
        assert metric(requests.get(s.url + "/metrics").text, "engram_num_preemptions_total") > 0
    finally:
        s.stop()
    return prompts


def test_server_batch_invariance(tmp_path):
    """16 concurrent requests with chunked prefill, preempted and recomputed, give
    the tokens and logprobs each gives alone."""
    concurrent_equals_alone(tmp_path, 192, 16)


@pytest.mark.parametrize("block,tokens", [(16, 64), (6, 60)])
def test_server_kv_budget_holds_the_decode_state(block, tokens, tmp_path):
    """DeepSeek-V4's window rows, compressed entries and index keys live in the KV
    blocks, so the KV budget is what limits its sequences: with room for one longest
    sequence (54 positions) only, 16 concurrent requests are preempted and recomputed
    again and again, on blocks other sequences wrote before, and still give the tokens
    and logprobs each gives alone. Block size 6 divides neither rate (CSA 4, HCA 8)."""
    prompts = concurrent_equals_alone(tmp_path, tokens, block)
    assert max(map(len, prompts)) + 12 == 54
