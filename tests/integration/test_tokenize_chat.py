"""engram-tokenize --chat: the rendered prompt equals transformers'
apply_chat_template(tokenize=False), and tokenizing it (--no-special, as
apply_chat_template does) gives apply_chat_template's ids, on the DeepSeek-V3
and Qwen3 checkpoints."""
import json
import os
import subprocess

import pytest

os.environ.setdefault("RAYON_NUM_THREADS", "1")

import tokfixtures as tf  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3+3? Answer in 中文 😀"}],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "  spaces \n\n and <|im_start|> tokens <think>"}],
]


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return {n: tf.unpack(n, str(d)) for n in ("deepseek_v3", "qwen3")}


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen3"])
def test_chat_prompt_and_ids_match_transformers(unpacked, name, tmp_path):
    from transformers import AutoTokenizer
    d = unpacked[name]
    ref = AutoTokenizer.from_pretrained(d)
    for i, conv in enumerate(CONVERSATIONS):
        f = tmp_path / f"m{i}.json"
        f.write_text(json.dumps(conv), encoding="utf-8")
        for agp in (False, True):
            args = [tf.TOKENIZE, "--tokenizer", d, "--chat", str(f)] + (["--add-generation-prompt"] if agp else [])
            p = subprocess.run(args, capture_output=True, timeout=60)
            assert p.returncode == 0, p.stderr
            want = ref.apply_chat_template(conv, tokenize=False, add_generation_prompt=agp)
            assert p.stdout.decode("utf-8") == want
            pf = tmp_path / "prompt.txt"
            pf.write_bytes(p.stdout)
            q = subprocess.run([tf.TOKENIZE, "--tokenizer", d, "--text-file", str(pf), "--no-special"],
                               capture_output=True, timeout=60)
            assert q.returncode == 0, q.stderr
            assert json.loads(q.stdout) == ref.apply_chat_template(conv, tokenize=True, add_generation_prompt=agp)


def test_chat_extra_variables(unpacked, tmp_path):
    """--extra passes apply_chat_template kwargs (Qwen3 enable_thinking)."""
    from transformers import AutoTokenizer
    d = unpacked["qwen3"]
    conv = CONVERSATIONS[1]
    (tmp_path / "m.json").write_text(json.dumps(conv))
    (tmp_path / "x.json").write_text(json.dumps({"enable_thinking": False}))
    p = subprocess.run([tf.TOKENIZE, "--tokenizer", d, "--chat", str(tmp_path / "m.json"), "--extra",
                        str(tmp_path / "x.json"), "--add-generation-prompt"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    want = AutoTokenizer.from_pretrained(d).apply_chat_template(conv, tokenize=False, add_generation_prompt=True,
                                                                 enable_thinking=False)
    assert p.stdout.decode() == want and "<think>" in want


def test_chat_errors(unpacked, tmp_path):
    d = unpacked["qwen3"]
    p = subprocess.run([tf.TOKENIZE, "--tokenizer", d, "--chat", str(tmp_path / "missing.json")],
                       capture_output=True, timeout=60)
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"role\": ")
    p = subprocess.run([tf.TOKENIZE, "--tokenizer", d, "--chat", str(bad)], capture_output=True, timeout=60)
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1
