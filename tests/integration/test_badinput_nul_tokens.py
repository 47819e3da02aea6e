"""Tokens whose text holds the byte 0x00 (issue 23): on the default model id
191 decodes to U+0000. Every path from token bytes to JSON must carry lengths,
and JSON must write the NUL as \\u0000, so /detokenize, completions (whole and
streamed), chat, logprobs and Engram gates give exactly the bytes
engram-tokenize gives (the tokenizer is itself checked byte for byte against
HF tokenizers elsewhere)."""
import json
import subprocess

import pytest
import requests

from conftest import BUILD, SOURCE
from serverutil import MODEL as FIXTURE, Server, make_qwen3_model, post, sse_events

MODEL = SOURCE / "models" / "engram-lexicon"
NUL_ID = 191


def tokenize_decode(id_lists):
    """engram-tokenize's decode of each id list (its --jsonl mode: JSON strings out)."""
    inp = "".join(json.dumps(ids) + "\n" for ids in id_lists)
    p = subprocess.run([str(BUILD / "engram-tokenize"), "--tokenizer", str(MODEL), "--jsonl"], input=inp,
                       capture_output=True, text=True, timeout=120, check=True)
    return [json.loads(line) for line in p.stdout.splitlines()]


@pytest.fixture(scope="module")
def server():
    s = Server(model=MODEL)
    yield s
    s.stop()


def vocab_size():
    return len(json.loads((MODEL / "tokenizer.json").read_text())["model"]["vocab"])


def test_detokenize_keeps_nul(server):
    want = tokenize_decode([[71, NUL_ID, 72]])[0]
    assert want == "e\x00f"
    r = post(server.url, "/detokenize", {"tokens": [71, NUL_ID, 72]})
    assert r.status_code == 200, r.text
    assert b"\\u0000" in r.content  # JSON's escape, never a raw NUL byte
    assert b"\x00" not in r.content
    assert r.json() == {"prompt": want}


def test_detokenize_whole_vocabulary(server):
    ids = list(range(vocab_size()))
    want = tokenize_decode([ids])[0]
    got = post(server.url, "/detokenize", {"tokens": ids}).json()["prompt"]
    assert len(got.encode()) == len(want.encode()) and got == want


# logit_bias +100 on 191 at temperature 0 makes every output token 191
BIASED = {"max_tokens": 4, "temperature": 0, "logit_bias": {str(NUL_ID): 100}, "ignore_eos": True}


def test_completion_nul_whole_and_streamed(server):
    want = tokenize_decode([[NUL_ID] * 4])[0]
    assert want == "\x00" * 4
    r = post(server.url, "/v1/completions", {"prompt": "memory", "logprobs": 2, **BIASED})
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    assert ch["text"] == want
    lp = ch["logprobs"]
    assert lp["tokens"] == ["\x00"] * 4
    assert lp["text_offset"] == [0, 1, 2, 3]
    r = post(server.url, "/v1/completions", {"prompt": "memory", "stream": True, **BIASED}, stream=True)
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"])
    assert text == want


def test_chat_nul_whole_and_streamed(server):
    want = tokenize_decode([[NUL_ID] * 4])[0]
    body = {"messages": [{"role": "user", "content": "memory"}], "logprobs": True, "top_logprobs": 1, **BIASED}
    r = post(server.url, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    assert ch["message"]["content"] == want
    for e in ch["logprobs"]["content"]:
        assert e["token"] == "\x00" and e["bytes"] == [0], e
    r = post(server.url, "/v1/chat/completions", {**body, "stream": True}, stream=True)
    events = sse_events(r)
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == want


def test_gates_tokens_keep_nul(server):
    r = post(server.url, "/v1/completions", {"prompt": "memory", "engram_gates": True, **BIASED})
    assert r.status_code == 200, r.text
    g = r.json()["engram_gates"]
    assert g["tokens"][-3:] == ["\x00"] * 3  # the last output token is never run through the model
    assert g["token_ids"][-3:] == [NUL_ID] * 3


def test_text_around_nuls(server):
    """Text on both sides of NULs, and NULs side by side, survive."""
    ids = [71, NUL_ID, 72, NUL_ID, NUL_ID, 73, NUL_ID]
    want = tokenize_decode([ids])[0]
    assert want.count("\x00") == 4
    assert post(server.url, "/detokenize", {"tokens": ids}).json()["prompt"] == want
    assert requests.get(server.url + "/health").status_code == 200


def test_nul_among_alternatives():
    """completions' top_logprobs keys are token texts: one may be "\x00". On
    the qwen3_engram fixture (the same byte-level vocabulary's first 256 ids)
    the prompt [20] has id 191 among its 20 most likely next tokens."""
    s = Server(model=FIXTURE)
    try:
        r = post(s.url, "/v1/completions", {"prompt": [20], "max_tokens": 1, "logprobs": 20, "temperature": 0})
        assert r.status_code == 200, r.text
        alts = r.json()["choices"][0]["logprobs"]["top_logprobs"][0]
        assert isinstance(alts.get("\x00"), float), alts
        assert tokenize_decode([[NUL_ID]])[0] == "\x00"
    finally:
        s.stop()


QWEN3_NUL_ID = 188  # Qwen3's byte-level token for the byte 0x00 ("\u0100")


@pytest.mark.parametrize("parser", ["qwen3", "deepseek_r1"])
def test_chat_parsers_keep_nul(tmp_path, parser):
    """chat/'s output parsers (reasoning, tool calls) carry lengths: output
    of NUL bytes with tools given and a reasoning parser on comes back whole,
    as content (qwen3: no <think> at the start) or as reasoning_content
    (deepseek_r1: the output starts inside the reasoning), whole and
    streamed. The reference is HF tokenizers' decode of the same ids."""
    from tokenizers import Tokenizer
    d = make_qwen3_model(tmp_path / "m")
    want = Tokenizer.from_file(str(d / "tokenizer.json")).decode([QWEN3_NUL_ID] * 4)
    assert want == "\x00" * 4
    s = Server("--reasoning-parser", parser, model=d)
    try:
        tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
        body = {"messages": [{"role": "user", "content": "hi"}], "tools": tools, "max_tokens": 4, "temperature": 0,
                "logit_bias": {str(QWEN3_NUL_ID): 100}, "ignore_eos": True}
        r = post(s.url, "/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        msg = r.json()["choices"][0]["message"]
        got = (msg["content"], msg["reasoning_content"])
        assert got == ((want, None) if parser == "qwen3" else ("", want)), got
        assert '\\u0000' in r.text  # JSON's escape, not a raw byte
        events = sse_events(post(s.url, "/v1/chat/completions", {**body, "stream": True}, stream=True))
        deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1] if json.loads(e)["choices"]]
        content = "".join(x.get("content") or "" for x in deltas)
        reasoning = "".join(x.get("reasoning_content") or "" for x in deltas)
        assert (content, reasoning) == ((want, "") if parser == "qwen3" else ("", want))
    finally:
        s.stop()
