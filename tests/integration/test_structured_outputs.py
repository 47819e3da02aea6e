"""Structured outputs through the official openai SDK on the default model
(models/engram-lexicon): client.beta.chat.completions.parse with pydantic
models (nested, optional fields, enums, lists, recursion), raw json_schema,
json_object, vLLM's guided_json / guided_regex / guided_choice /
guided_grammar and structured_outputs, streamed and not, n > 1, stop strings
and max_tokens. Every output that finished with "stop" is validated by the
jsonschema package (or Python's re, or membership); the mask does the work,
so sampling at temperature 1 must still give valid output. Bad schemas: 400
naming the keyword; the grammar cache and metrics."""
import enum
import json
import re
from typing import List, Optional

import jsonschema
import openai
import pydantic
import pytest
import requests

from conftest import SOURCE
from serverutil import API_KEY, Server, check_error, metric, post

MODEL = SOURCE / "models" / "engram-lexicon"
ASK = [{"role": "user", "content": "Describe a word as JSON."}]


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", API_KEY, "--served-model-name", "m", model=MODEL)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


class Kind(str, enum.Enum):
    noun = "noun"
    verb = "verb"
    other = "other"


class Sense(pydantic.BaseModel):
    gloss: str = pydantic.Field(max_length=24)
    rank: int = pydantic.Field(ge=0, le=9)


class Word(pydantic.BaseModel):
    word: str = pydantic.Field(max_length=16)
    kind: Kind
    senses: List[Sense] = pydantic.Field(max_length=2)
    plural: Optional[str] = pydantic.Field(default=None, max_length=16)
    common: bool


class Tree(pydantic.BaseModel):
    label: str = pydantic.Field(max_length=6)
    kids: List["Tree"] = pydantic.Field(max_length=2)


def chat_schema_body(schema, **kw):
    return dict(model="m", messages=ASK, max_tokens=kw.pop("max_tokens", 400), seed=kw.pop("seed", 0),
                response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
                **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parse_pydantic(client, seed):
    r = client.beta.chat.completions.parse(model="m", messages=ASK, response_format=Word, max_tokens=400, seed=seed,
                                           temperature=1.0)
    c = r.choices[0]
    assert c.finish_reason == "stop", c.message.content
    assert isinstance(c.message.parsed, Word)
    jsonschema.validate(json.loads(c.message.content), Word.model_json_schema())


def test_parse_recursive(client):
    done = 0
    for seed in range(4):
        resp = client.chat.completions.create(**chat_schema_body(openai.lib._pydantic.to_strict_json_schema(Tree),
                                                                 seed=seed, temperature=0.7))
        c = resp.choices[0]
        if c.finish_reason == "length":  # a deep tree may not fit: cut off, not repaired
            continue
        assert c.finish_reason == "stop"
        Tree.model_validate_json(c.message.content)
        jsonschema.validate(json.loads(c.message.content), Tree.model_json_schema())
        done += 1
    assert done >= 1


RAW = {"type": "object",
       "properties": {"id": {"type": "integer", "minimum": 0}, "score": {"type": "number"},
                      "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3},
                      "note": {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "null"}]},
                      "flag": {"const": True}, "date": {"type": "string", "format": "date"},
                      "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
       "required": ["id", "score", "tags", "note", "flag", "date", "code"], "additionalProperties": False}


@pytest.mark.parametrize("stream", [False, True])
def test_raw_json_schema_n(client, stream):
    body = chat_schema_body(RAW, n=3, temperature=1.0)
    if stream:
        texts, reasons = ["", "", ""], [None, None, None]
        for ch in client.chat.completions.create(stream=True, **body):
            for c in ch.choices:
                texts[c.index] += c.delta.content or ""
                reasons[c.index] = c.finish_reason or reasons[c.index]
    else:
        r = client.chat.completions.create(**body)
        texts = [c.message.content for c in r.choices]
        reasons = [c.finish_reason for c in r.choices]
    assert reasons == ["stop"] * 3, texts
    for t in texts:
        v = json.loads(t)
        jsonschema.validate(v, RAW)
        assert re.fullmatch(r"[A-Z]{2}-[0-9]{3}", v["code"])


def test_json_object(client):
    r = client.chat.completions.create(model="m", messages=ASK, max_tokens=300, seed=5, temperature=0.8,
                                       response_format={"type": "json_object"})
    c = r.choices[0]
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.message.content), dict)
    else:  # any JSON object may be long: a cut-off one is a prefix of a valid object
        assert c.finish_reason == "length" and c.message.content.lstrip().startswith("{")


@pytest.mark.parametrize("stream", [False, True])
def test_guided_regex_and_choice(client, stream):
    pat = r"(yes|no), [a-z]{2,5} [0-9]{1,3}(\.[0-9])?"
    for seed in range(3):
        args = dict(model="m", prompt="Answer:", max_tokens=40, seed=seed, temperature=1.0)
        if stream:
            chunks = list(client.completions.create(stream=True, extra_body={"guided_regex": pat}, **args))
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][-1]
        else:
            r = client.completions.create(extra_body={"guided_regex": pat}, **args)
            text, reason = r.choices[0].text, r.choices[0].finish_reason
        assert reason == "stop" and re.fullmatch(pat, text), text
    choices = ["red", "green", "blue sky"]
    for seed in range(3):
        r = client.chat.completions.create(model="m", messages=ASK, max_tokens=10, seed=seed,
                                           extra_body={"guided_choice": choices})
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content in choices


def test_structured_outputs_and_grammar(server):
    r = post(server.url, "/v1/completions", {"prompt": "x", "max_tokens": 20, "seed": 1,
                                             "structured_outputs": {"choice": ["alpha", "beta"]}})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] in ("alpha", "beta")
    g = 'root ::= "(" num ("+" num)* ")"\nnum ::= [1-9] [0-9]?\n'
    r = post(server.url, "/v1/completions", {"prompt": "x", "max_tokens": 40, "seed": 2, "guided_grammar": g})
    assert r.status_code == 200
    c = r.json()["choices"][0]
    assert c["finish_reason"] == "stop" and re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?)*\)", c["text"]), c


def test_stop_strings_and_length(client):
    # max_tokens cuts the output: "length", not repaired
    r = client.chat.completions.create(**chat_schema_body(RAW, max_tokens=5))
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content.startswith("{")
    # a stop string inside the constrained output ends it as usual
    r = client.completions.create(model="m", prompt="x", max_tokens=30, seed=0, stop=["-"],
                                  extra_body={"guided_regex": "ab-cd"})
    assert r.choices[0].text == "ab" and r.choices[0].finish_reason == "stop"


def test_logprobs_are_the_models(client):
    """Logprobs report the raw distribution: the top alternatives need not be allowed tokens."""
    r = client.chat.completions.create(model="m", messages=ASK, max_tokens=3, seed=0, logprobs=True, top_logprobs=5,
                                       extra_body={"guided_choice": ["zzzz"]})
    c = r.choices[0]
    assert c.message.content in ("zzzz", "zzz", "zz", "z") or "zzzz".startswith(c.message.content)
    assert len(c.logprobs.content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 5 for t in c.logprobs.content)


@pytest.mark.parametrize("body, param, needle", [
    ({"guided_json": {"type": "object", "patternProperties": {}}}, "guided_json", "patternProperties"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"oneOf": [{}]}}}},
     "response_format.json_schema.schema", "oneOf"),
    ({"guided_regex": "(a"}, "guided_regex", "missing ')'"),
    ({"guided_regex": "(?=a)b"}, "guided_regex", "lookaround"),
    ({"guided_choice": []}, "guided_choice", "non-empty"),
    ({"guided_grammar": "root ::= root \"a\""}, "guided_grammar", "left recursion"),
    ({"guided_json": {"$ref": "#/$defs/none"}}, "guided_json", "points to nothing"),
    ({"response_format": {"type": "xml"}}, "response_format", "json_schema"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice", "Only one"),
])
def test_bad_input(server, body, param, needle):
    r = post(server.url, "/v1/completions", dict(prompt="x", max_tokens=4, **body))
    check_error(r, 400, param=param)
    assert needle in r.json()["error"]["message"]


def test_cache_and_metrics(server):
    key = {"Authorization": "Bearer " + API_KEY}
    before = requests.get(server.url + "/metrics", headers=key).text
    schema = {"type": "object", "properties": {"q": {"type": "boolean"}}, "required": ["q"]}
    for _ in range(3):
        r = post(server.url, "/v1/completions", {"prompt": "x", "max_tokens": 30, "guided_json": schema, "seed": 0})
        assert r.status_code == 200
        jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), schema)
    after = requests.get(server.url + "/metrics", headers=key).text
    n0 = metric(before, "engram_grammar_compile_seconds_count") or 0
    assert metric(after, "engram_grammar_compile_seconds_count") == n0 + 1  # compiled once
    assert metric(after, "engram_grammar_cache_hits_total") >= (metric(before, "engram_grammar_cache_hits_total") or 0) + 2
    assert metric(after, "engram_grammar_masks_total") > (metric(before, "engram_grammar_masks_total") or 0)
    assert metric(after, "engram_grammar_mask_seconds_total") > 0
