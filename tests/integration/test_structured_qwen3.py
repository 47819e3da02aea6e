"""Structured outputs through the official openai SDK on a random-weight
model with Qwen3's real tokenizer (151k tokens, byte-level BPE, added
tokens): the hard case, since the model knows nothing and the mask does all
the work. The same request shapes as test_structured_outputs.py (which runs
them on the default model): client.beta.chat.completions.parse with pydantic
models (nested, optional fields, enums, lists, recursion), raw json_schema
with n > 1, json_object, regex, choice and GBNF, streamed and not. Every
output that finished with "stop" validates (jsonschema, Python's re,
membership). This model repeats its last token, so unbounded repetitions
would run to max_tokens: the shapes here are bounded (maxLength, {m,n})."""
import json
import re

import jsonschema
import openai
import pytest

from serverutil import API_KEY, Server, make_qwen3_model, post
from test_structured_outputs import ASK, RAW, Tree, Word


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = make_qwen3_model(tmp_path_factory.mktemp("structured-qwen3") / "m")
    s = Server("--api-key", API_KEY, model=d)
    yield s, openai.OpenAI(base_url=s.url + "/v1", api_key=API_KEY, max_retries=0), d.name
    s.stop()


def texts_of(client, stream, **body):
    """[(text, finish_reason)] of every choice, streamed or not (chat)."""
    if not stream:
        return [(c.message.content, c.finish_reason) for c in client.chat.completions.create(**body).choices]
    out = {}
    for ch in client.chat.completions.create(stream=True, **body):
        for c in ch.choices:
            t, f = out.get(c.index, ("", None))
            out[c.index] = (t + (c.delta.content or ""), c.finish_reason or f)
    return [out[i] for i in sorted(out)]


@pytest.mark.parametrize("seed", [0, 1])
def test_parse_pydantic(served, seed):
    _, client, name = served
    r = client.beta.chat.completions.parse(model=name, messages=ASK, response_format=Word, max_tokens=500, seed=seed,
                                           temperature=1.0)
    c = r.choices[0]
    assert c.finish_reason == "stop", c.message.content
    assert isinstance(c.message.parsed, Word)
    jsonschema.validate(json.loads(c.message.content), Word.model_json_schema())


def test_parse_recursive(served):
    _, client, name = served
    done = 0
    for seed in range(3):
        r = client.beta.chat.completions.parse(model=name, messages=ASK, response_format=Tree, max_tokens=400,
                                               seed=seed, temperature=1.0)
        c = r.choices[0]
        if c.finish_reason == "length":  # a deep tree may not fit: cut off, not repaired
            assert c.message.content.startswith("{")
            continue
        assert c.finish_reason == "stop" and isinstance(c.message.parsed, Tree)
        jsonschema.validate(json.loads(c.message.content), Tree.model_json_schema())
        done += 1
    assert done >= 2


@pytest.mark.parametrize("stream", [False, True])
def test_raw_json_schema_n(served, stream):
    _, client, name = served
    out = texts_of(client, stream, model=name, messages=ASK, max_tokens=400, seed=3, n=2, temperature=1.0,
                   response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": RAW, "strict": True}})
    assert [f for _, f in out] == ["stop", "stop"], out
    for t, _ in out:
        v = json.loads(t)
        jsonschema.validate(v, RAW)
        assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", v["code"])


@pytest.mark.parametrize("stream", [False, True])
def test_json_object(served, stream):
    """Any object: this random model repeats its last token, so inside a
    string it never stops; biases toward '"', '}' and '"}' let it close
    (only where the mask allows them: the object is still well-formed)."""
    _, client, name = served
    for seed in range(3):
        [(t, f)] = texts_of(client, stream, model=name, messages=ASK, max_tokens=60, seed=seed,
                            response_format={"type": "json_object"}, logit_bias={"1": 26, "92": 26, "9207": 26})
        assert f == "stop" and isinstance(json.loads(t), dict), (t, f)


@pytest.mark.parametrize("stream", [False, True])
def test_regex_choice_grammar(served, stream):
    _, client, name = served
    cases = [
        ({"guided_regex": r"(yes|no), [a-z]{2,5} [0-9]{1,3}(\.[0-9])?"},
         lambda t: re.fullmatch(r"(yes|no), [a-z]{2,5} [0-9]{1,3}(\.[0-9])?", t)),
        ({"guided_regex": r"\w{1,8}@[a-z]{1,8}\.(com|org)"}, lambda t: re.fullmatch(r"\w{1,8}@[a-z]{1,8}\.(com|org)", t)),
        ({"guided_choice": ["red", "green", "blue sky", "日本"]}, lambda t: t in ["red", "green", "blue sky", "日本"]),
        ({"guided_grammar": 'root ::= "(" num ("+" num)* ")"\nnum ::= [1-9] [0-9]?\n'},
         lambda t: re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?)*\)", t)),
        ({"structured_outputs": {"regex": r"[\u3040-\u309f]{1,4}!"}}, lambda t: re.fullmatch(r"[\u3040-\u309f]{1,4}!", t)),
    ]
    for extra, ok in cases:
        for seed in range(2):
            [(t, f)] = texts_of(client, stream, model=name, messages=ASK, max_tokens=60, seed=seed, temperature=1.0,
                                extra_body=extra)
            assert f == "stop" and ok(t), (extra, t, f)


def test_completions_regex(served):
    """/v1/completions too (a text prompt, no template)."""
    s, _, _ = served
    for seed in range(2):
        r = post(s.url, "/v1/completions", {"prompt": "Date:", "max_tokens": 30, "seed": seed,
                                             "guided_regex": r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"})
        c = r.json()["choices"][0]
        assert c["finish_reason"] == "stop" and re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]", c["text"]), c
