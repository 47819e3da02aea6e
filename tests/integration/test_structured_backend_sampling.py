"""A grammar's mask applied where the sampling happens: with
--sample-on-backend 1 the constrained rows are sampled by backend_ops.sample,
greedy ones by backend_ops.sample_argmax (the CPU backend's reference ops
here; the CUDA kernels on a GPU, checked by tests/gpu/sampling_parity.c), the
mask of allowed tokens carried in the sampling description, instead of the
host sampler over a masked row. The
outputs must be the host path's exactly (same tokens for the same seed) and
valid against the schema (jsonschema), greedy and sampled, n > 1, streamed."""
import json

import jsonschema
import openai
import pytest

from conftest import SOURCE
from serverutil import API_KEY, Server, metric
import requests

MODEL = SOURCE / "models" / "engram-lexicon"
ASK = [{"role": "user", "content": "Describe a word as JSON."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "word": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["noun", "verb", "other"]},
        "ranks": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3},
        "common": {"type": "boolean"},
    },
    "required": ["word", "kind", "ranks", "common"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}}


@pytest.fixture(scope="module")
def servers():
    host = Server("--api-key", API_KEY, "--served-model-name", "m", "--sample-on-backend", "0", model=MODEL)
    dev = Server("--api-key", API_KEY, "--served-model-name", "m", "--sample-on-backend", "1", model=MODEL)
    yield host, dev
    host.stop()
    dev.stop()


def client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=API_KEY, max_retries=0)


def outputs(s, **kw):
    r = client(s).chat.completions.create(model="m", messages=ASK, response_format=FORMAT, max_tokens=120, **kw)
    return [(c.message.content, c.finish_reason) for c in r.choices]


@pytest.mark.parametrize("kw", [
    {"temperature": 0},
    {"temperature": 0, "frequency_penalty": 0.5, "logit_bias": {"5": 3.0}},
    {"temperature": 1.0, "seed": 7, "n": 3},
    {"temperature": 0.8, "top_p": 0.9, "seed": 11, "n": 2},
    {"temperature": 1.2, "seed": 3, "frequency_penalty": 0.5, "logit_bias": {"5": 3.0}},
])
def test_backend_sampling_equals_host_and_validates(servers, kw):
    host, dev = servers
    a, b = outputs(host, **kw), outputs(dev, **kw)
    assert a == b
    done = 0
    for text, finish in b:
        if finish == "stop":
            jsonschema.validate(json.loads(text), SCHEMA)
            done += 1
    assert done >= 1, b


def test_streamed_backend_sampling(servers):
    host, dev = servers
    texts = []
    for s in (host, dev):
        stream = client(s).chat.completions.create(model="m", messages=ASK, response_format=FORMAT, max_tokens=120,
                                                   temperature=1.0, seed=5, stream=True)
        texts.append("".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices))
    assert texts[0] == texts[1]
    jsonschema.validate(json.loads(texts[1]), SCHEMA)


def test_masks_counted_on_the_backend_path(servers):
    _, dev = servers
    before = metric(requests.get(dev.url + "/metrics").text, "engram_grammar_masks_total") or 0
    outputs(dev, temperature=0)
    after = metric(requests.get(dev.url + "/metrics").text, "engram_grammar_masks_total")
    assert after > before


def test_mixed_steps_equal_host(servers):
    """Constrained and free rows, greedy and sampled, in the same steps: the
    description then holds sampled rows, greedy rows (sample_argmax) and
    masks behind it for some of them only. Each request's output is the host
    path's (steps are batch-invariant), and the constrained ones validate."""
    from concurrent.futures import ThreadPoolExecutor
    kinds = [
        {"response_format": FORMAT, "temperature": 0},
        {"response_format": FORMAT, "temperature": 0.9, "seed": 4},
        {"temperature": 0, "logit_bias": {"7": 2.0}},
        {"temperature": 0.7, "seed": 9},
        {"response_format": FORMAT, "temperature": 0, "presence_penalty": 0.8},
        {"temperature": 0},
    ]

    def one(s, kw):
        r = client(s).chat.completions.create(model="m", messages=ASK, max_tokens=60, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason

    got = {}
    for s in servers:
        with ThreadPoolExecutor(len(kinds)) as ex:
            got[s] = list(ex.map(lambda kw: one(s, kw), kinds))
    host, dev = servers
    assert got[host] == got[dev]
    for kw, (text, finish) in zip(kinds, got[dev]):
        if "response_format" in kw and finish == "stop":
            jsonschema.validate(json.loads(text), SCHEMA)
