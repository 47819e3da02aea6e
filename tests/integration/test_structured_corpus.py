"""The schema corpus (tests/fixtures/schema_corpus.json, written by
tools/gen_schema_corpus.py): 240 real-world-shaped JSON schemas. Each one
inside the documented subset compiles and yields output that validates
under the jsonschema package (Draft 2020-12 and its format checker) on a
random-weight model with Qwen3's tokenizer, where the mask does all the
work; each one using a keyword outside it is a 400 naming that keyword.

The model repeats its last token, so it would fill every unbounded string
or array until max_tokens: biases toward '"', ']' and '}' let it close them
wherever the mask allows (they change nothing where it does not). A schema
whose output 160 tokens cut off (unbounded arrays and open objects, where the
repeating model keeps going) is asked again with the closers at OpenAI's
largest bias and 2,048 tokens: every compiled schema must end in a valid
output."""
import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from conftest import SOURCE
from serverutil import API_KEY, Server, make_qwen3_model, post

CORPUS = json.loads((SOURCE / "tests" / "fixtures" / "schema_corpus.json").read_text())
V = jsonschema.Draft202012Validator  # its own format checker (date-time and time need rfc3339-validator)
BIAS = {"1": 20, "60": 20, "92": 20, "9207": 20, "1341": 20}  # '"', ']', '}', '"}', '"]'
CLOSE = {k: 100 for k in BIAS}  # the retry: close wherever the mask allows


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server("--api-key", API_KEY, "--max-num-seqs", "8", model=make_qwen3_model(tmp_path_factory.mktemp("corpus") / "m"))
    yield s
    s.stop()


def test_corpus(server):
    assert len(CORPUS) >= 200 and sum(e["refuse"] is None for e in CORPUS) >= 200

    retried = []

    def one(e, max_tokens=160, bias=BIAS):
        r = post(server.url, "/v1/completions", {"prompt": "JSON:", "max_tokens": max_tokens, "temperature": 0,
                                                 "guided_json": e["schema"], "logit_bias": bias})
        body = r.json()
        if r.status_code == 200 and body["choices"][0]["finish_reason"] == "length" and bias is BIAS:
            retried.append(e["name"])
            return one(e, 2048, CLOSE)
        return e, r.status_code, body

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, CORPUS))
    valid, cut, problems = 0, [], []
    for e, status, body in results:
        if e["refuse"]:
            if status != 400 or body["error"]["param"] != "guided_json" or \
                    f"'{e['refuse']}'" not in body["error"]["message"]:
                problems.append((e["name"], status, body))
            continue
        if status != 200:
            problems.append((e["name"], status, body))
            continue
        c = body["choices"][0]
        if c["finish_reason"] == "length":
            cut.append(e["name"])
            continue
        try:
            assert c["finish_reason"] == "stop"
            V(e["schema"], format_checker=V.FORMAT_CHECKER).validate(
                json.loads(c["text"]))
            valid += 1
        except (AssertionError, ValueError, jsonschema.ValidationError) as x:
            problems.append((e["name"], c["text"], str(x)[:300]))
    assert not problems, problems[:5]
    n_ok = sum(e["refuse"] is None for e in CORPUS)
    print(f"corpus: {valid} valid ({len(retried)} of them on the retry), {len(cut)} cut off by max_tokens, "
          f"{len(CORPUS) - n_ok} refused")
    assert valid == n_ok and not cut, cut
