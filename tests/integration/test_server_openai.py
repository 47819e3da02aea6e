"""engram-server against the official openai SDK and raw HTTP: completions and
chat, streamed and not, usage, stop strings, seeds, greedy equality with
engram-run, raw SSE framing, the error envelope of every status, client
disconnects, queue overflow, /metrics (promtool when installed), /tokenize."""
import asyncio
import json
import shutil
import subprocess
import time

import openai
import pytest
import requests

from conftest import run_bin
from serverutil import (API_KEY, MODEL, Server, check_error, make_slow_model, metric, post, sse_events)

PROMPT_IDS = [5, 17, 300, 42, 9, 1000]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there, who are you?"}]


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", API_KEY, "--served-model-name", "engram-test")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


# ---- the SDK ----

def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["engram-test"]
    assert client.models.retrieve("engram-test").id == "engram-test"


def test_completion(client):
    r = client.completions.create(model="engram-test", prompt="Hello world", max_tokens=8, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == "engram-test"
    assert len(r.choices) == 1 and r.choices[0].finish_reason == "length"
    assert isinstance(r.choices[0].text, str)
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8


def test_chat(client):
    r = client.chat.completions.create(model="engram-test", messages=CHAT, max_completion_tokens=6, temperature=0,
                                       extra_body={"ignore_eos": True})
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    c = r.choices[0]
    assert c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason == "length" and r.usage.completion_tokens == 6


def test_chat_stream_matches_non_stream(client):
    kw = dict(model="engram-test", messages=CHAT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completion_stream(client):
    kw = dict(model="engram-test", prompt=PROMPT_IDS, max_tokens=10, temperature=0)
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == [full.choices[0].finish_reason]
    assert all(c.usage is None for c in chunks)


def test_greedy_equals_engram_run(client, server):
    """Server output at temperature 0 is engram-run's on the same prompt ids."""
    for ids, n in ((PROMPT_IDS, 24), ([1, 2, 3], 40)):
        p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", ",".join(map(str, ids)), "--temperature", "0",
                    "--max-tokens", n, "--print-ids", "--threads", "1")
        out_ids = json.loads(p.stdout.rstrip("\n").rsplit("\n", 1)[1])
        text = p.stdout[:p.stdout.rindex("\n[")]
        r = client.completions.create(model="engram-test", prompt=ids, max_tokens=n, temperature=0)
        assert r.choices[0].text == text
        assert r.usage.completion_tokens == len(out_ids) and r.usage.prompt_tokens == len(ids)
        assert r.choices[0].finish_reason == ("length" if len(out_ids) == n else "stop")
        dec = post(server.url, "/detokenize", {"tokens": out_ids}).json()["prompt"]
        if "</s>" not in dec:  # no special tokens in the output: decode agrees too
            assert dec == text
    # chat: the template's ids through engram-run
    ids = post(server.url, "/tokenize", {"messages": CHAT}).json()["tokens"]
    p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", ",".join(map(str, ids)), "--temperature", "0",
                "--max-tokens", 16, "--print-ids", "--threads", "1")
    r = client.chat.completions.create(model="engram-test", messages=CHAT, max_tokens=16, temperature=0)
    assert r.choices[0].message.content == p.stdout[:p.stdout.rindex("\n[")]
    assert r.usage.prompt_tokens == len(ids)


def test_seed_reproducible(client):
    kw = dict(model="engram-test", prompt="Once upon a time", max_tokens=20, temperature=1.0, top_p=0.95,
              extra_body={"ignore_eos": True})
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    assert a == b
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in (1, 2, 3)}
    assert len(others | {a}) > 1


def test_sampling_params_accepted(client):
    r = client.chat.completions.create(model="engram-test", messages=CHAT, max_tokens=5, temperature=0.7, top_p=0.9,
                                       presence_penalty=0.5, frequency_penalty=0.5, seed=7, user="u1",
                                       logit_bias={"10": 5}, extra_body={"top_k": 20, "min_p": 0.05,
                                                                         "repetition_penalty": 1.1})
    assert r.choices[0].finish_reason in ("stop", "length")


def test_logit_bias_forces_token(client, server):
    r = client.completions.create(model="engram-test", prompt=PROMPT_IDS, max_tokens=4, temperature=0,
                                  logit_bias={"300": 100}, extra_body={"ignore_eos": True})
    piece = post(server.url, "/detokenize", {"tokens": [300]}).json()["prompt"]
    assert r.choices[0].text == piece * 4


def test_stop_strings(client):
    kw = dict(model="engram-test", prompt=PROMPT_IDS, max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw).choices[0].text
    # a stop string spanning the texts of tokens k and k+1 (k tokens make a prefix of the text)
    for k in range(3, 29):
        head = client.completions.create(**dict(kw, max_tokens=k)).choices[0].text
        b = len(head)
        if b >= 2 and full.startswith(head) and len(full) >= b + 2 and "\ufffd" not in full[b - 2:b + 2]:
            break
    else:
        pytest.fail("no token boundary found")
    stop = full[b - 2:b + 2]
    want = full[:full.index(stop)]
    assert full.index(stop) == b - 2  # it does span the boundary
    r = client.completions.create(stop=stop, **kw)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    s = list(client.completions.create(stop=[stop, "\x01never"], stream=True, **kw))
    assert "".join(c.choices[0].text for c in s) == want
    assert [c.choices[0].finish_reason for c in s if c.choices[0].finish_reason] == ["stop"]
    # a stop string that never occurs changes nothing
    r = client.completions.create(stop=["\x01\x02"], **kw)
    assert r.choices[0].text == full and r.choices[0].finish_reason == "length"


def test_n_choices(client):
    kw = dict(model="engram-test", max_tokens=6, extra_body={"ignore_eos": True})
    one = client.chat.completions.create(messages=CHAT, temperature=0, **kw)
    r = client.chat.completions.create(messages=CHAT, temperature=0, n=3, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == one.choices[0].message.content for c in r.choices)
    assert r.usage.prompt_tokens == one.usage.prompt_tokens and r.usage.completion_tokens == 18
    # choice i samples with seed + i
    kw = dict(model="engram-test", prompt="Once", max_tokens=8, temperature=1.0, extra_body={"ignore_eos": True})
    r = client.completions.create(n=2, seed=50, **kw)
    assert [c.text for c in r.choices] == [client.completions.create(seed=s, **kw).choices[0].text for s in (50, 51)]
    # streamed: a role chunk and exactly one finish_reason per choice, texts as above
    chunks = list(client.chat.completions.create(messages=CHAT, n=2, seed=9, stream=True,
                                                 stream_options={"include_usage": True}, max_tokens=5,
                                                 model="engram-test", extra_body={"ignore_eos": True}))
    full = client.chat.completions.create(messages=CHAT, n=2, seed=9, max_tokens=5, model="engram-test",
                                          extra_body={"ignore_eos": True})
    for i in range(2):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert mine[0].delta.role == "assistant"
        assert [m.finish_reason for m in mine if m.finish_reason] == ["length"]
        assert "".join(m.delta.content or "" for m in mine) == full.choices[i].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_async_client(server):
    async def go():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
        r = await c.chat.completions.create(model="engram-test", messages=CHAT, max_tokens=4)
        n = 0
        async for _ in await c.completions.create(model="engram-test", prompt="Hi", max_tokens=3, stream=True):
            n += 1
        await c.close()
        return r, n
    r, n = asyncio.run(go())
    assert r.choices[0].message.role == "assistant" and n >= 1


def test_sdk_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="engram-test", messages=CHAT, n=17)
    assert e.value.body["param"] == "n"
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


# ---- raw HTTP ----

def test_raw_sse_framing(server):
    body = {"model": "engram-test", "messages": CHAT, "max_tokens": 5, "stream": True, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    with post(server.url, "/v1/chat/completions", body, stream=True) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "text/event-stream"
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert len({o["id"] for o in objs}) == 1 and len({o["created"] for o in objs}) == 1
    assert all(o["object"] == "chat.completion.chunk" and o["model"] == "engram-test" for o in objs)
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [o["choices"][0]["finish_reason"] for o in objs[:-1]].count("length") == 1
    assert objs[-2]["choices"][0]["finish_reason"] == "length" and objs[-2]["choices"][0]["delta"] == {}
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 5
    assert all("usage" in o and o["usage"] is None for o in objs[:-1])
    # without include_usage: no usage key at all, and [DONE] last
    body.pop("stream_options")
    with post(server.url, "/v1/completions", dict(body, prompt="Hi", messages=None), stream=True) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert all("usage" not in o and o["object"] == "text_completion" for o in objs)
    assert objs[-1]["choices"][0]["finish_reason"] == "length"


def test_utf8_never_split(server):
    """Streamed pieces are each valid UTF-8 (the raw bytes of every event decode)."""
    body = {"prompt": [7, 8, 9], "max_tokens": 60, "stream": True, "temperature": 1.0, "seed": 3, "ignore_eos": True}
    with post(server.url, "/v1/completions", body, stream=True) as r:
        raw = b"".join(r.iter_content(chunk_size=None))
    for block in raw.split(b"\n\n")[:-1]:
        block.decode("utf-8")  # raises on a split character
        if block != b"data: [DONE]":
            json.loads(block[6:])


@pytest.mark.parametrize("body,param", [
    ('{"prompt": "x", ', None),
    ("[1, 2]", None),
    ('"just a string"', None),
    ('{"prompt": "x"} trailing', None),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": -2}, "top_k"),
    ({"prompt": "x", "min_p": 1.5}, "min_p"),
    ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "x", "frequency_penalty": True}, "frequency_penalty"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty"),
    ({"prompt": "x", "seed": "1"}, "seed"),
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "stop": ["a", 1]}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "n": 17}, "n"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "best_of": 2}, "best_of"),
    ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": 200}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"999999": 1}}, "logit_bias"),
    ({"prompt": "x", "user": 5}, "user"),
    ({"prompt": "x", "model": 5}, "model"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [1, -1]}, "prompt"),
    ({"prompt": [1, 99999]}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "max_tokens": 100000}, "max_tokens"),
    ({"prompt": list(range(1, 300))}, "prompt"),
])
def test_completions_400(server, body, param):
    check_error(post(server.url, "/v1/completions", body), 400, param=param)


@pytest.mark.parametrize("body,param", [
    ({}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}, 5]}, "messages[1]"),
    # this model's chat template (ChatML) writes no tool calls
    ({"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"messages": CHAT, "tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0]"),
    ({"messages": CHAT, "tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"messages": CHAT, "tools": {"type": "function"}}, "tools"),
    ({"messages": CHAT, "tool_choice": "required"}, "tool_choice"),
    ({"messages": CHAT, "tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ({"messages": CHAT, "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": CHAT, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"type": "function"}]}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]}, "messages[0].tool_call_id"),
    ({"messages": CHAT, "engram_force": ""}, "engram_force"),
    ({"messages": CHAT, "response_format": {"type": "xml"}}, "response_format"),  # json_object: test_structured_outputs
    ({"messages": CHAT, "response_format": "text"}, "response_format"),
    ({"messages": CHAT, "top_logprobs": 3}, "top_logprobs"),
    ({"messages": CHAT, "max_completion_tokens": -1}, "max_completion_tokens"),
    ({"messages": CHAT, "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
])
def test_chat_400(server, body, param):
    check_error(post(server.url, "/v1/chat/completions", body), 400, param=param)


def test_context_length(server):
    e = check_error(post(server.url, "/v1/completions", {"prompt": [5] * 300}), 400, code="context_length_exceeded")
    assert "256" in e["message"]


def test_supported_options_pass(server):
    body = {"messages": CHAT, "max_tokens": 2, "response_format": {"type": "text"}, "tools": [], "logprobs": False,
            "top_logprobs": 0, "tool_choice": "none", "n": 1, "stop": None, "metadata": {"a": "b"}}
    r = post(server.url, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    assert c["message"]["role"] == "assistant" and c["logprobs"] is None


def test_invalid_utf8_body(server):
    check_error(post(server.url, "/v1/completions", b'{"prompt": "\xff\xfe"}'), 400)
    check_error(post(server.url, "/v1/completions", b'{"prompt": "\xed\xa0\x80"}'), 400)  # a surrogate
    check_error(post(server.url, "/v1/completions", b'{"prompt": "\\ud800"}'), 400)
    check_error(post(server.url, "/v1/completions", b'{"prompt": "a\\u0000b"}'), 400)
    assert post(server.url, "/v1/completions", b'{"prompt": "a\\\\u0000b", "max_tokens": 1}').status_code == 200


def test_unknown_model_404(server):
    check_error(post(server.url, "/v1/completions", {"model": "gpt-4", "prompt": "x"}), 404, param="model",
                code="model_not_found")
    check_error(requests.get(server.url + "/v1/models/gpt-4", headers={"Authorization": f"Bearer {API_KEY}"}), 404,
                code="model_not_found")


def test_route_and_method(server):
    check_error(requests.get(server.url + "/v2/nothing"), 404)
    check_error(post(server.url, "/v1/completion", {"prompt": "x"}), 404)
    r = requests.get(server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"})
    check_error(r, 405)
    assert r.headers["Allow"] == "POST"
    r = requests.post(server.url + "/health")
    check_error(r, 405)
    assert "GET" in r.headers["Allow"]
    check_error(requests.delete(server.url + "/v1/models"), 405)


def test_auth(server):
    check_error(post(server.url, "/v1/completions", {"prompt": "x"}, key=None), 401, code="invalid_api_key")
    check_error(post(server.url, "/v1/completions", {"prompt": "x"}, key="sk-wrong"), 401)
    check_error(post(server.url, "/v1/completions", {"prompt": "x"}, key=API_KEY + "x"), 401)
    check_error(requests.get(server.url + "/v1/models", headers={"Authorization": API_KEY}), 401)
    check_error(post(server.url, "/tokenize", {"prompt": "x"}, key=None), 401)
    assert requests.get(server.url + "/health").json() == {"status": "ok"}
    assert requests.get(server.url + "/metrics").status_code == 200


def test_body_too_large(server):
    big = json.dumps({"prompt": "a" * (1 << 20)})
    check_error(post(server.url, "/v1/completions", big), 413)
    check_error(post(server.url, "/v1/completions", b"x" * (40 << 20)), 413)
    assert post(server.url, "/v1/completions", {"prompt": "x", "max_tokens": 1}).status_code == 200


def test_tokenize_detokenize(server):
    r = post(server.url, "/tokenize", {"prompt": "Hello world"}).json()
    assert r["count"] == len(r["tokens"]) > 0 and r["max_model_len"] == 256
    assert "Hello world" in post(server.url, "/detokenize", {"tokens": r["tokens"]}).json()["prompt"]
    chat = post(server.url, "/tokenize", {"messages": CHAT}).json()
    text = post(server.url, "/detokenize", {"tokens": chat["tokens"]}).json()["prompt"]
    assert "<|im_start|>user\nHello there, who are you?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    check_error(post(server.url, "/detokenize", {"tokens": [1, 1 << 30]}), 400, param="tokens")
    check_error(post(server.url, "/detokenize", {"tokens": "x"}), 400, param="tokens")
    check_error(post(server.url, "/tokenize", {}), 400)
    check_error(post(server.url, "/tokenize", {"prompt": "x", "model": "other"}), 404)


def test_metrics(server):
    # the engine drops a finished request from its running set just after publishing its end
    deadline = time.time() + 10
    text = requests.get(server.url + "/metrics").text
    while metric(text, "engram_num_requests_running") != 0 and time.time() < deadline:
        time.sleep(0.05)
        text = requests.get(server.url + "/metrics").text
    assert metric(text, "engram_num_requests_running") == 0
    assert metric(text, "engram_generation_tokens_total") > 0
    assert metric(text, "engram_request_success_total", {"finished_reason": "length"}) > 0
    assert metric(text, "engram_http_requests_total", {"route": "/v1/completions", "status": "400"}) > 0
    assert metric(text, "engram_e2e_request_latency_seconds_count") > 0
    assert metric(text, "engram_kv_cache_usage_perc") == 0
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup installs Debian's prometheus"
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


# ---- a slow model: disconnects, overflow, shutdown ----

@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    d = make_slow_model(tmp_path_factory.mktemp("slow"))
    s = Server("--max-num-seqs", "1", "--max-queued-requests", "0", model=d)
    yield s
    s.stop()


def wait_metric(url, name, labels, value, timeout=5.0):
    deadline = time.time() + timeout
    while True:
        v = metric(requests.get(url + "/metrics").text, name, labels)
        if v == value or time.time() > deadline:
            return v
        time.sleep(0.02)


def test_disconnect_cancels_then_next_succeeds(slow):
    body = {"prompt": [1, 2, 3], "max_tokens": 1500, "stream": True, "ignore_eos": True, "temperature": 0}
    r = requests.post(slow.url + "/v1/completions", json=body, stream=True, timeout=30)
    it = r.iter_lines()
    first = next(l for l in it if l)
    assert first.startswith(b"data: ")
    # one batch slot, taken, and no queue: overflow is an immediate 503
    t0 = time.time()
    busy = requests.post(slow.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30)
    check_error(busy, 503)
    assert busy.headers["Retry-After"] == "1" and time.time() - t0 < 2
    r.close()  # the client goes away mid-stream
    t0 = time.time()
    assert wait_metric(slow.url, "engram_num_requests_running", None, 0) == 0
    assert wait_metric(slow.url, "engram_request_success_total", {"finished_reason": "abort"}, 1) == 1
    assert time.time() - t0 < 4  # cancelled: 1500 tokens would take far longer
    gen = metric(requests.get(slow.url + "/metrics").text, "engram_generation_tokens_total")
    assert gen < 1500
    ok = requests.post(slow.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_disconnect_cancels_non_streaming(slow):
    """A non-streaming client that goes away also cancels its request: the
    engine resumes the suspended connection at each new token, libmicrohttpd
    then sees the closed socket and the completion callback cancels."""
    import socket
    import urllib.parse
    before = metric(requests.get(slow.url + "/metrics").text, "engram_request_success_total",
                    {"finished_reason": "abort"}) or 0
    u = urllib.parse.urlparse(slow.url)
    body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 1500, "ignore_eos": True, "temperature": 0}).encode()
    sock = socket.create_connection((u.hostname, u.port))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: " +
                 str(len(body)).encode() + b"\r\n\r\n" + body)
    assert wait_metric(slow.url, "engram_num_requests_running", None, 1, timeout=30) == 1  # a busy CI machine
    sock.close()  # the client goes away while its completion is being generated
    t0 = time.time()
    assert wait_metric(slow.url, "engram_request_success_total", {"finished_reason": "abort"}, before + 1) == before + 1
    assert wait_metric(slow.url, "engram_num_requests_running", None, 0) == 0
    assert time.time() - t0 < 4  # cancelled: 1500 tokens would take far longer
    ok = requests.post(slow.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 3}, timeout=30)
    assert ok.status_code == 200


def test_disconnect_while_queued_cancels(tmp_path):
    """Clients that go away while their requests wait in the queue (one batch
    slot, taken by a long request) are noticed within seconds, streamed or
    not: the engine pokes requests that have waited a second, every second
    (an SSE keep-alive, or a resume of the suspended connection), the server
    sees the closed socket, and the cancelled requests leave the queue."""
    import socket
    import urllib.parse
    d = make_slow_model(tmp_path / "m")
    s = Server("--max-num-seqs", "1", "--max-queued-requests", "4", model=d)
    try:
        long = requests.post(s.url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2040, "stream": True,
                                                              "ignore_eos": True}, stream=True, timeout=60)
        it = long.iter_lines()  # kept: a dropped iterator may close the connection
        assert next(l for l in it if l).startswith(b"data: ")
        # queued and streamed: the client sees keep-alives only
        q = requests.post(s.url + "/v1/completions", json={"prompt": [4, 5], "max_tokens": 4, "stream": True},
                          stream=True, timeout=60)
        assert q.status_code == 200
        # queued, not streamed, on a raw socket
        u = urllib.parse.urlparse(s.url)
        body = json.dumps({"prompt": [6, 7], "max_tokens": 4}).encode()
        sock = socket.create_connection((u.hostname, u.port))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: " +
                     str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_metric(s.url, "engram_num_requests_waiting", None, 2) == 2
        first = next(l for l in q.iter_lines(chunk_size=1) if l)
        assert first == b": keep-alive", first  # a poke: no data yet, the request still waits
        q.close()
        sock.close()
        t0 = time.time()
        assert wait_metric(s.url, "engram_num_requests_waiting", None, 0, timeout=10) == 0
        took = time.time() - t0
        text = requests.get(s.url + "/metrics").text
        # both left before the long one finished: nothing has finished normally yet
        assert metric(text, "engram_request_success_total", {"finished_reason": "length"}) == 0, text
        assert metric(text, "engram_num_requests_running") == 1
        assert took < 5, took
        long.close()
    finally:
        s.stop()


def test_sigterm_mid_stream(tmp_path):
    d = make_slow_model(tmp_path / "m")
    s = Server(model=d)
    body = {"messages": CHAT, "max_tokens": 1500, "stream": True, "ignore_eos": True}
    r = requests.post(s.url + "/v1/chat/completions", json=body, stream=True, timeout=30)
    it = r.iter_lines()
    next(l for l in it if l)
    s.proc.send_signal(15)
    rest = [l for l in it if l]
    assert rest[-1] == b"data: [DONE]"
    err = json.loads(rest[-2][6:])
    assert set(err) == {"error"} and err["error"]["type"] == "server_error"
    s.stop()
