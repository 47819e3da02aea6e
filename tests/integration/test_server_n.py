"""n > 1 on engram-server through the official SDK: every choice is there with
its index, usage sums the choices, choice i with seed s is the single-choice
answer with seed s + i, streamed and not, chat and completions."""
import openai
import pytest

from serverutil import MODEL, Server

MSGS = [{"role": "user", "content": "tell me about rivers"}]


@pytest.fixture(scope="module")
def client():
    s = Server()
    yield openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    s.stop()


def test_chat_n(client):
    kw = dict(model=MODEL.name, messages=MSGS, max_tokens=6, temperature=1.0, extra_body={"ignore_eos": True})
    r = client.chat.completions.create(n=3, seed=5, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 18
    for i, c in enumerate(r.choices):
        single = client.chat.completions.create(n=1, seed=5 + i, **kw)
        assert c.message.content == single.choices[0].message.content
    assert len({c.message.content for c in r.choices}) > 1  # different seeds, different samples


def test_completions_n_streamed_equals_non_streamed(client):
    kw = dict(model=MODEL.name, prompt="The river", max_tokens=5, temperature=1.0, seed=11, n=2,
              extra_body={"ignore_eos": True})
    whole = client.completions.create(**kw)
    texts = {0: "", 1: ""}
    finishes = {}
    usage = None
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.text
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]
    assert finishes == {0: "length", 1: "length"}
    assert usage.completion_tokens == 10 == whole.usage.completion_tokens


def test_chat_n_streamed_roles(client):
    roles, finishes = {}, {}
    for chunk in client.chat.completions.create(model=MODEL.name, messages=MSGS, max_tokens=3, n=2, stream=True,
                                                extra_body={"ignore_eos": True}):
        for c in chunk.choices:
            if c.delta.role:
                roles[c.index] = roles.get(c.index, 0) + 1
            if c.finish_reason:
                finishes[c.index] = finishes.get(c.index, 0) + 1
    assert roles == {0: 1, 1: 1} and finishes == {0: 1, 1: 1}


def test_n_out_of_range(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL.name, messages=MSGS, n=17)
    assert e.value.body["param"] == "n"
