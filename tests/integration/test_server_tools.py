"""Tool calling through the official OpenAI SDK, against transformers'
apply_chat_template (jinja2) with Qwen3's real chat template as the outside
reference: the tools reach the prompt exactly as the template renders them
(prompt token counts equal HF's), an assistant turn written by the template
with tool calls comes back as those tool_calls (its text forced as the
output with our "engram_force" extension, on a tiny random model), streamed
and not, and a follow-up turn with the calls and the tool's result renders
as HF renders it."""
import json

import openai
import pytest

from serverutil import Server, make_qwen3_model

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                        "unit": {"type": "string", "enum": ["c", "f"]}},
                       "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Local time in a time zone.",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}},
]
USER = [{"role": "user", "content": "Weather in Paris, and the time in Tokyo?"}]
CALLS = [("get_weather", {"city": "Paris", "unit": "c"}), ("get_time", {"tz": "Asia/Tokyo"})]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer
    d = make_qwen3_model(tmp_path_factory.mktemp("tools") / "m")
    hf = AutoTokenizer.from_pretrained(str(d))
    s = Server(model=d)
    yield s, hf, openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0), d.name
    s.stop()


def assistant_turn(hf, content=""):
    """The text the template gives an assistant turn that makes CALLS (what a
    Qwen3 model is taught to write), cut out of HF's rendering."""
    msg = {"role": "assistant", "content": content,
           "tool_calls": [{"id": f"call_{i}", "type": "function",
                           "function": {"name": n, "arguments": json.dumps(a)}} for i, (n, a) in enumerate(CALLS)]}
    text = hf.apply_chat_template(USER + [msg], tools=TOOLS, tokenize=False)
    start = text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
    return text[start:text.rindex("<|im_end|>")]


def hf_prompt_tokens(hf, messages, tools):
    return len(hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True))


def without_calls(text):
    """The text outside the <tool_call> blocks."""
    out, at = "", 0
    while (o := text.find("<tool_call>", at)) >= 0:
        out += text[at:o]
        at = text.index("</tool_call>", o) + len("</tool_call>")
    return out + text[at:]


def check_calls(calls):
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == CALLS
    assert all(c.type == "function" and c.id.startswith("call_") for c in calls)
    assert len({c.id for c in calls}) == len(calls)


@pytest.mark.parametrize("content", ["", "Let me look both up."])
def test_tool_calls_not_streamed(setup, content):
    s, hf, client, name = setup
    turn = assistant_turn(hf, content)
    assert turn.count("<tool_call>") == 2
    r = client.chat.completions.create(model=name, messages=USER, tools=TOOLS, max_tokens=500,
                                       extra_body={"engram_force": turn})
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    check_calls(ch.message.tool_calls)
    rest = without_calls(turn)
    assert ch.message.content == (rest if rest.strip() else None)
    assert r.usage.prompt_tokens == hf_prompt_tokens(hf, USER, TOOLS)  # the tools as jinja2 renders them
    assert r.usage.completion_tokens == len(hf.encode(turn, add_special_tokens=False))


def test_tool_calls_streamed(setup):
    s, hf, client, name = setup
    turn = assistant_turn(hf, "Checking.")
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model=name, messages=USER, tools=TOOLS, max_tokens=500, stream=True,
                                                extra_body={"engram_force": turn}):
        d = chunk.choices[0].delta
        content += d.content or ""
        assert "<tool_call>" not in content  # a call never leaks as content
        for tc in d.tool_calls or []:
            assert tc.index not in calls  # each call comes whole, once
            calls[tc.index] = tc
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    check_calls([calls[i] for i in sorted(calls)])
    assert content == without_calls(turn)


def test_no_calls_and_tool_choice_none(setup):
    s, hf, client, name = setup
    r = client.chat.completions.create(model=name, messages=USER, tools=TOOLS, max_tokens=50,
                                       extra_body={"engram_force": "I cannot <tool_call> without a closing tag."})
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == "I cannot <tool_call> without a closing tag."
    turn = assistant_turn(hf)  # with tool_choice "none" the tools are neither offered nor parsed
    r = client.chat.completions.create(model=name, messages=USER, tools=TOOLS, tool_choice="none", max_tokens=500,
                                       extra_body={"engram_force": turn})
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content == turn
    assert r.usage.prompt_tokens == hf_prompt_tokens(hf, USER, None)


def test_follow_up_turn_renders_like_hf(setup):
    """The calls and the tool's results sent back: the prompt is HF's."""
    s, hf, client, name = setup
    msgs = USER + [
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                        for i, (n, a) in enumerate(CALLS)]},
        {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\": 14}"},
        {"role": "tool", "tool_call_id": "call_1", "content": "09:30"},
    ]
    r = client.chat.completions.create(model=name, messages=msgs, tools=TOOLS, max_tokens=4,
                                       extra_body={"engram_force": "Done."})
    assert r.choices[0].message.content == "Done." and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == hf_prompt_tokens(hf, msgs, TOOLS)


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_then_tool_calls(setup, tmp_path, stream):
    """--reasoning-parser qwen3: the <think> block Qwen3's template writes for
    an assistant turn with reasoning_content comes back as reasoning_content,
    the calls after it as tool_calls; content is what is left (only
    whitespace here: null)."""
    _, hf, _, name = setup
    reasoning = "Two lookups: weather first, then the time."
    msg = {"role": "assistant", "content": "", "reasoning_content": reasoning,
           "tool_calls": [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                          for i, (n, a) in enumerate(CALLS)]}
    text = hf.apply_chat_template(USER + [msg], tools=TOOLS, tokenize=False)
    start = text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
    turn = text[start:text.rindex("<|im_end|>")]
    assert turn.startswith("<think>") and reasoning in turn
    d = make_qwen3_model(tmp_path / "m")
    s = Server("--reasoning-parser", "qwen3", model=d)
    try:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        args = dict(model=d.name, messages=USER, tools=TOOLS, max_tokens=500, extra_body={"engram_force": turn})
        if not stream:
            r = client.chat.completions.create(**args)
            m = r.choices[0].message
            got_reasoning, got_content, calls, finish = m.reasoning_content, m.content, m.tool_calls, r.choices[0].finish_reason
        else:
            got_reasoning, got_content, parts, finish = "", "", {}, None
            for chunk in client.chat.completions.create(stream=True, **args):
                delta = chunk.choices[0].delta
                got_reasoning += getattr(delta, "reasoning_content", None) or ""
                got_content += delta.content or ""
                for tc in delta.tool_calls or []:
                    parts[tc.index] = tc
                finish = chunk.choices[0].finish_reason or finish
            calls = [parts[i] for i in sorted(parts)]
            got_content = got_content if got_content.strip() else None
        assert got_reasoning.strip("\n") == reasoning and "<think>" not in got_reasoning
        assert got_content is None and finish == "tool_calls"
        check_calls(calls)
        # without tools the rest is the content, and a model that does not think is all content
        r = client.chat.completions.create(model=d.name, messages=USER, max_tokens=50,
                                           extra_body={"engram_force": "<think>\nhm\n</think>\n\nParis: 14 C."})
        assert r.choices[0].message.reasoning_content == "\nhm\n"
        assert r.choices[0].message.content == "\n\nParis: 14 C."
        r = client.chat.completions.create(model=d.name, messages=USER, max_tokens=50,
                                           extra_body={"engram_force": "Paris: 14 C."})
        assert r.choices[0].message.reasoning_content is None and r.choices[0].message.content == "Paris: 14 C."
    finally:
        s.stop()
