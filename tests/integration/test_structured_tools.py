"""Forced tool calls and reasoning before a constraint, through the official
OpenAI SDK on a random-weight model with Qwen3's real tokenizer and chat
template (the mask does all the work). tool_choice "required" or a named
function: the output is written in the template's call syntax (checked
against transformers' apply_chat_template rendering of a call, the outside
reference), comes back as tool_calls with finish_reason "tool_calls", and
every call's arguments validate (jsonschema) against its tool's parameters;
streamed and not. With --reasoning-parser the constraint starts after the
reasoning block: the block is free text, what follows it validates. Bad
tool_choice values: a 400 naming the field."""
import json

import jsonschema
import openai
import pytest

from conftest import SOURCE
from serverutil import API_KEY, Server, check_error, make_qwen3_model, post

THINK, UNTHINK = 151667, 151668  # Qwen3's <think> and </think> (not special tokens)
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"type": "string", "enum": ["c", "f"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "unit"], "additionalProperties": False}
TIME = {"type": "object", "properties": {"tz": {"enum": ["UTC", "Asia/Tokyo", "Europe/Paris"]},
                                         "h24": {"type": "boolean"}},
        "required": ["tz"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "description": "Time.", "parameters": TIME}},
         {"type": "function", "function": {"name": "ping", "description": "No arguments."}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME,
           "ping": {"type": "object", "properties": {}, "additionalProperties": False}}
USER = [{"role": "user", "content": "Weather in Paris?"}]
# Biases that make this random model (whose logits are steep: it repeats its
# last token) open a block, repeat <think> in it a few times and close it.
BIAS_QWEN3 = {str(THINK): 25, str(UNTHINK): 45}
# a schema without free strings: the reasoning markers cannot appear in what it allows
ANSWER = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "ok": {"type": "boolean"}, "c": {"enum": ["x", "y", "z"]}},
          "required": ["n", "ok", "c"], "additionalProperties": False}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_qwen3_model(tmp_path_factory.mktemp("structured-tools") / "m")


@pytest.fixture(scope="module")
def plain(model):
    s = Server("--api-key", API_KEY, model=model)
    yield s, openai.OpenAI(base_url=s.url + "/v1", api_key=API_KEY, max_retries=0), model.name
    s.stop()


def chat(client, name, stream, **kw):
    """(content, [(name, arguments)], finish_reason, reasoning) of choice 0, streamed or not."""
    if not stream:
        c = client.chat.completions.create(model=name, **kw).choices[0]
        calls = [(t.function.name, t.function.arguments) for t in c.message.tool_calls or []]
        return c.message.content, calls, c.finish_reason, getattr(c.message, "reasoning_content", None)
    content, reasoning, calls, finish = "", "", {}, None
    for ch in client.chat.completions.create(model=name, stream=True, **kw):
        for c in ch.choices:
            d = c.delta
            content += d.content or ""
            reasoning += getattr(d, "reasoning_content", None) or ""
            for t in d.tool_calls or []:
                assert t.index not in calls and t.type == "function" and t.id.startswith("call_")
                calls[t.index] = (t.function.name, t.function.arguments)
            finish = c.finish_reason or finish
    assert sorted(calls) == list(range(len(calls)))
    return content, [calls[i] for i in sorted(calls)], finish, reasoning or None


def check_calls(calls):
    for name, args in calls:
        jsonschema.validate(json.loads(args), SCHEMAS[name])


@pytest.mark.parametrize("stream", [False, True])
def test_required_one_call(plain, stream):
    _, client, name = plain
    seen = set()
    for seed in range(4):
        content, calls, finish, _ = chat(client, name, stream, messages=USER, tools=TOOLS, tool_choice="required",
                                         parallel_tool_calls=False, max_tokens=200, seed=seed, temperature=1.0)
        assert finish == "tool_calls" and len(calls) == 1, (content, calls, finish)
        assert not (content or "").strip()
        check_calls(calls)
        seen.add(calls[0][0])
    assert len(seen) >= 2  # any of the tools: the model chooses


@pytest.mark.parametrize("stream", [False, True])
def test_required_parallel(plain, stream):
    _, client, name = plain
    n_calls = 0
    for seed in range(2):
        content, calls, finish, _ = chat(client, name, stream, messages=USER, tools=TOOLS, tool_choice="required",
                                         max_tokens=300, seed=seed)
        assert finish in ("tool_calls", "length") and calls, (content, calls, finish)
        if finish == "tool_calls":  # complete: nothing but calls
            assert not (content or "").strip(), content
        check_calls(calls)
        n_calls += len(calls)
    assert n_calls > 2  # more than one call per answer happens


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tool", ["get_weather", "get_time", "ping"])
def test_named(plain, stream, tool):
    _, client, name = plain
    for seed in range(2):
        content, calls, finish, _ = chat(client, name, stream, messages=USER, tools=TOOLS, max_tokens=200, seed=seed,
                                         tool_choice={"type": "function", "function": {"name": tool}})
        assert finish == "tool_calls" and [c[0] for c in calls] == [tool], (content, calls, finish)
        check_calls(calls)
        if tool == "ping":
            assert json.loads(calls[0][1]) == {}


def test_call_syntax_is_the_templates(plain, model):
    """The raw output (the tokens' bytes) is one call as transformers renders
    an assistant's tool call through Qwen3's template (after the empty think
    block it puts in the last turn), around JSON that validates; a named
    function is one call, so the output ends with it."""
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(model))
    mark = "@ARGS@"
    msg = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": mark}}]}
    text = hf.apply_chat_template(USER + [msg], tools=TOOLS, tokenize=False)
    turn = text[text.rindex("<tool_call>"):text.rindex("<|im_end|>")]
    before, after = turn.split(mark)
    _, client, name = plain
    for seed in range(3):
        r = client.chat.completions.create(model=name, messages=USER, tools=TOOLS, max_tokens=200, seed=seed,
                                           logprobs=True,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
        raw = b"".join(bytes(t.bytes) for t in r.choices[0].logprobs.content).decode()
        assert raw.startswith(before) and raw.endswith(after), raw
        args = raw[len(before):len(raw) - len(after)]
        jsonschema.validate(json.loads(args), WEATHER)
        assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == json.loads(args)


def test_length_is_not_repaired(plain):
    _, client, name = plain
    c = client.chat.completions.create(model=name, messages=USER, tools=TOOLS, max_tokens=12, seed=0,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}}).choices[0]
    assert c.finish_reason == "length" and not c.message.tool_calls
    assert c.message.content.startswith("<tool_call>")


@pytest.mark.parametrize("body, param, needle", [
    ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "'nope', which is not in 'tools'"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "\"required\""),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice", "\"required\""),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "cannot be combined"),
    ({"tools": [TOOLS[0], {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "patternProperties": {"x": {}}}}}], "tool_choice": "required"},
     "tools[1].function.parameters", "'patternProperties'"),
])
def test_bad_tool_choice(plain, body, param, needle):
    s, _, _ = plain
    r = post(s.url, "/v1/chat/completions", dict(messages=USER, max_tokens=8, **body))
    e = check_error(r, 400, param=param)
    assert needle in e["message"], e


def test_auto_and_none_unchanged(plain):
    """tool_choice "none" drops the tools; "auto" constrains nothing (a
    random model writes no call)."""
    _, client, name = plain
    for choice in ("none", "auto"):
        c = client.chat.completions.create(model=name, messages=USER, tools=TOOLS, tool_choice=choice, max_tokens=8,
                                           seed=0).choices[0]
        assert c.finish_reason == "length" and not c.message.tool_calls


def test_default_model_has_no_call_syntax():
    """The default model's template writes no tool calls: forcing one is a 400."""
    s = Server("--api-key", API_KEY, model=SOURCE / "models" / "engram-lexicon")
    try:
        r = post(s.url, "/v1/chat/completions", dict(messages=USER, tools=TOOLS, tool_choice="required", max_tokens=8))
        check_error(r, 400, param="tools")
    finally:
        s.stop()


# ---- reasoning: the constraint starts after the block ----

def raw_text(choice):
    return b"".join(bytes(t.bytes) for t in choice.logprobs.content).decode()


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_qwen3(model, stream):
    """Qwen3's parser: a block when the output opens with <think>. The biases
    make the random model open one (the first token may open a block or
    start the answer), write free text in it (not masked: <think> again is
    outside the schema) and close it; then the answer is masked to the
    schema. Without them no block is opened and the answer is constrained
    from its first byte. Host sampling and the backend's sampling op alike."""
    # streamed: rows sampled by the backend's op (the mask in the sampling description); else on the host
    s = Server("--reasoning-parser", "qwen3", "--sample-on-backend", "1" if stream else "0", model=model)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    try:
        rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER}}
        thought = 0
        for seed in range(4):
            kw = dict(messages=USER, max_tokens=100, seed=seed, temperature=1.0, response_format=rf,
                      logit_bias=BIAS_QWEN3)
            content, _, finish, reasoning = chat(client, model.name, stream, **kw)
            assert finish == "stop", (content, reasoning)
            jsonschema.validate(json.loads(content), ANSWER)
            if not stream:  # the same output again, with its raw bytes: a block, or none at all
                c = client.chat.completions.create(model=model.name, logprobs=True, **kw).choices[0]
                blocks = ["<think>" + (reasoning or "") + "</think>" + content] + ([content] if not reasoning else [])
                assert raw_text(c) in blocks, (raw_text(c), reasoning, content)
            thought += bool(reasoning)
        assert thought >= 2  # blocks with text in them, unmasked
        content, _, finish, reasoning = chat(client, model.name, stream, messages=USER, max_tokens=120, seed=0,
                                             response_format=rf)
        assert finish == "stop" and reasoning is None and content.startswith("{")
        jsonschema.validate(json.loads(content), ANSWER)
        # forced calls after the block, too
        content, calls, finish, reasoning = chat(
            client, model.name, stream, messages=USER, tools=TOOLS, max_tokens=200, seed=1,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            logit_bias=BIAS_QWEN3)
        assert finish == "tool_calls" and [c[0] for c in calls] == ["get_time"], (content, calls, reasoning)
        check_calls(calls)
    finally:
        s.stop()


def test_reasoning_deepseek_r1(model):
    """DeepSeek-R1's parser: the output starts inside the block; nothing is
    masked until </think> (this random model writes newlines there, which
    the regex does not allow), then the answer is."""
    s = Server("--reasoning-parser", "deepseek_r1", model=model)
    client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
    try:
        thought = 0
        for seed in range(4):
            c = client.chat.completions.create(
                model=model.name, messages=USER, max_tokens=120, seed=seed, temperature=1.0, logprobs=True,
                logit_bias={str(UNTHINK): 34}, extra_body={"guided_regex": "(yes|no) [0-9]{1,2}"}).choices[0]
            assert c.finish_reason == "stop", c
            r = c.message.reasoning_content or ""
            assert raw_text(c) == r + "</think>" + c.message.content
            assert c.message.content in [f"{a} {n}" for a in ("yes", "no") for n in range(100)] + \
                [f"{a} 0{n}" for a in ("yes", "no") for n in range(10)], c.message.content
            thought += bool(r)
        assert thought >= 2
    finally:
        s.stop()
