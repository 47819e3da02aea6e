"""logprobs and top_logprobs on engram-server, checked against an outside
reference: the fixture's last-prompt-position logits from transformers with
DeepSeek's Engram module (tests/fixtures/models/qwen3_engram). The first
generated token's logprob and its top alternatives must be log_softmax of
those logits. Also: chat logprobs through the official SDK, streamed and not,
and the async client."""
import asyncio
import json

import numpy as np
import openai
import pytest

from serverutil import MODEL, Server, post

G = json.loads((MODEL / "golden.json").read_text())
REF = np.fromfile(MODEL / "logits.f32", dtype="<f4").astype(np.float64)
REF_LP = REF - (REF.max() + np.log(np.exp(REF - REF.max()).sum()))


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_completion_logprobs_match_transformers(client):
    r = client.completions.create(model=MODEL.name, prompt=G["prompt_ids"], max_tokens=3, temperature=0,
                                  logprobs=5, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 3 and len(lp.token_logprobs) == 3 and len(lp.text_offset) == 3
    first = G["greedy_ids"][0]
    assert lp.token_logprobs[0] == pytest.approx(REF_LP[first], abs=1e-4)
    top5 = np.argsort(-REF_LP)[:5]
    got = sorted(lp.top_logprobs[0].values(), reverse=True)
    assert got == pytest.approx(sorted(REF_LP[top5], reverse=True), abs=1e-4)
    assert all(v <= 0 for d in lp.top_logprobs for v in d.values())
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)


def test_chat_logprobs_sdk(client):
    r = client.chat.completions.create(model=MODEL.name, messages=[{"role": "user", "content": "hello"}],
                                       max_tokens=4, temperature=0, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob, abs=1e-6)
        assert [t.logprob for t in e.top_logprobs] == sorted([t.logprob for t in e.top_logprobs], reverse=True)
        assert bytes(e.bytes).decode("utf-8", errors="replace") == e.token


def test_chat_logprobs_streamed_equal_non_streamed(client):
    msgs = [{"role": "user", "content": "what is a river"}]
    kw = dict(model=MODEL.name, messages=msgs, max_tokens=6, temperature=0, logprobs=True,
              extra_body={"ignore_eos": True})
    whole = [e.logprob for e in client.chat.completions.create(**kw).choices[0].logprobs.content]
    streamed = []
    for chunk in client.chat.completions.create(stream=True, **kw):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += [e.logprob for e in chunk.choices[0].logprobs.content]
    assert streamed == whole


def test_top_logprobs_needs_logprobs(server):
    r = post(server.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"
    r = post(server.url, "/v1/completions", {"prompt": "x", "logprobs": 21})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


def test_async_client(server):
    async def main():
        ac = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        reqs = [ac.completions.create(model=MODEL.name, prompt=G["prompt_ids"], max_tokens=4, temperature=0,
                                      extra_body={"ignore_eos": True}) for _ in range(3)]
        out = await asyncio.gather(*reqs)
        await ac.close()
        return out
    res = asyncio.run(main())
    assert len({r.choices[0].text for r in res}) == 1  # greedy: identical
    assert all(r.usage.completion_tokens == 4 for r in res)


def test_chat_logprobs_bytes_are_the_tokens_own(tmp_path):
    """Chat logprobs' "bytes" are a token's own bytes, as OpenAI's: a token
    that is part of a UTF-8 character (Qwen3's tokenizer, forced by
    logit_bias) carries that part, where "token" shows U+FFFD; the bytes are
    GPT-2's bytes_to_unicode (transformers) applied to HF's token string."""
    from tokenizers import Tokenizer
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    from serverutil import make_qwen3_model
    d = make_qwen3_model(tmp_path / "m")
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    raw = lambda i: bytes(byte_of[c] for c in hf.id_to_token(i))
    # the first two-token character of a CJK text: its first token is a piece
    ids = hf.encode("鿏鿐鿑鿒", add_special_tokens=False).ids
    piece = next(i for i in ids if "\ufffd" in hf.decode([i]))
    assert len(raw(piece)) < 3
    s = Server(model=d)
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        r = c.chat.completions.create(model=d.name, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                      temperature=0, logprobs=True, top_logprobs=2,
                                      logit_bias={str(piece): 100}, extra_body={"ignore_eos": True})
        content = r.choices[0].logprobs.content
        assert len(content) == 3
        for e in content:
            assert e.token == "\ufffd" * len(e.token) and bytes(e.bytes) == raw(piece), (e.token, e.bytes)
            for t in e.top_logprobs:  # every alternative: its bytes give its text
                assert bytes(t.bytes).decode("utf-8", errors="replace") == t.token
        joined = b"".join(bytes(e.bytes) for e in content)
        assert joined == raw(piece) * 3
        assert r.choices[0].message.content == joined.decode("utf-8", errors="replace")
    finally:
        s.stop()
