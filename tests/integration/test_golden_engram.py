"""Golden test of Engram on the CPU against DeepSeek's public reference module.

tests/fixtures/models/qwen3_engram was made by tools/make_engram_fixture.py,
which runs engram_demo_v1.py (github.com/deepseek-ai/Engram) on a tiny
transformers Qwen3 backbone with Engram at layers 1 and 2, hashing through the
reference's own compressed tokenizer (HF tokenizers) and NumPy multipliers.
We require identical table rows for every token and layer, gates within 1e-5,
last-position logits within 1e-4, and the same 24 greedy tokens whether the
prompt goes in whole, in chunks of 5, or token by token."""
import json

import numpy as np
import pytest

from conftest import MODELS, run_bin

M = MODELS / "qwen3_engram"
G = json.loads((M / "golden.json").read_text())


def run(chunk, tmp_path, *extra):
    lf = tmp_path / "logits.f32"
    p = run_bin("engram-run", "--model", M, "--prompt-ids", ",".join(map(str, G["prompt_ids"])),
                "--temperature", "0", "--max-tokens", "24", "--ignore-eos", "--print-ids",
                "--prefill-chunk", chunk, "--dump-logits", lf, *extra)
    lines = p.stdout.strip().splitlines()
    return lines, np.fromfile(lf, dtype="<f4")


@pytest.mark.parametrize("chunk", [256, 5, 1])
def test_logits_greedy_and_gates_match_reference(chunk, tmp_path):
    lines, logits = run(chunk, tmp_path, "--print-gates")
    ref = np.fromfile(M / "logits.f32", dtype="<f4")
    assert float(np.abs(logits - ref).max()) < 1e-4
    assert json.loads(lines[-1]) == G["greedy_ids"]
    gates = json.loads(lines[-2])
    assert gates["layers"] == [1, 2]
    assert gates["tokens"] == G["prompt_ids"] + G["greedy_ids"][:-1]
    ours = np.array(gates["gates"])
    ref_g = np.array([G["gates"]["1"], G["gates"]["2"]]).T
    assert ours.shape == ref_g.shape
    assert float(np.abs(ours - ref_g).max()) < 1e-5
    # The gates must actually vary: a constant would pass a loose check by luck.
    assert ours.std() > 0.05


def test_rows_identical_to_reference(tmp_path):
    lines, _ = run(256, tmp_path, "--print-rows")
    rows = json.loads(lines[-2])
    assert rows["layers"] == [1, 2]
    ours = np.array(rows["rows"])  # (tokens, layers, heads)
    for li, lid in enumerate(["1", "2"]):
        ref = np.array(G["rows"][lid])
        assert ours[:, li, :].shape == ref.shape
        assert (ours[:, li, :] == ref).all(), f"layer {lid}: rows differ"


def test_engram_changes_the_output(tmp_path):
    """Zeroing the tables must change the logits: the test above would be
    hollow if Engram contributed nothing."""
    import shutil, struct
    d = tmp_path / "m"
    shutil.copytree(M, d)
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    for name, t in hdr.items():
        if name.endswith("multi_head_embedding.embedding.weight"):
            a, b = t["data_offsets"]
            raw[8 + n + a:8 + n + b] = bytes(b - a)
    f.write_bytes(bytes(raw))
    lf = tmp_path / "z.f32"
    run_bin("engram-run", "--model", d, "--prompt-ids", ",".join(map(str, G["prompt_ids"])),
            "--max-tokens", "1", "--dump-logits", lf)
    ref = np.fromfile(M / "logits.f32", dtype="<f4")
    assert float(np.abs(np.fromfile(lf, dtype="<f4") - ref).max()) > 1e-2


def test_prompt_text_goes_through_the_tokenizer(tmp_path):
    """--prompt TEXT tokenizes like transformers did for the fixture (special
    tokens added), so the greedy continuation is the reference's, and the
    text printed is the decode of the generated ids."""
    p = run_bin("engram-run", "--model", M, "--prompt", G["prompt_text"], "--temperature", "0",
                "--max-tokens", "24", "--ignore-eos", "--print-ids")
    lines = p.stdout.splitlines()
    assert json.loads(lines[-1]) == G["greedy_ids"]
    from tokenizers import Tokenizer
    text = Tokenizer.from_file(str(M / "tokenizer.json")).decode(G["greedy_ids"], skip_special_tokens=True)
    assert "\n".join(lines[:-1]) == text


def test_chat_prompt_matches_transformers_apply_chat_template(tmp_path):
    """--prompt X --chat tokenizes exactly as transformers'
    apply_chat_template(tokenize=True, add_generation_prompt=True) does, here
    with Qwen3's real template on the fixture's tokenizer (which has the
    <|im_start|>/<|im_end|> tokens)."""
    import shutil
    d = tmp_path / "m"
    shutil.copytree(M, d)
    qcfg = json.loads((M.parents[1] / "tokenizers" / "qwen3" / "tokenizer_config.json").read_text())
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    tcfg["chat_template"] = qcfg["chat_template"]
    (d / "tokenizer_config.json").write_text(json.dumps(tcfg))
    text = "What is the Milky Way? Ünïcödé & <b>tags</b>"
    p = run_bin("engram-run", "--model", d, "--prompt", text, "--chat", "--temperature", "0",
                "--max-tokens", "1", "--print-gates")
    ours = json.loads(p.stdout.splitlines()[-1])["tokens"]
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(d))
    ref = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                  tokenize=True)
    if isinstance(ref, dict):  # newer transformers return a BatchEncoding
        ref = ref["input_ids"]
    assert ours == list(ref)
