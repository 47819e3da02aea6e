"""Bad input for the chat template engine (build/engram-chatrender): syntax
errors, unknown filters, raise_exception, runaway loops, deep nesting, huge
outputs, malformed messages/tools JSON. Each must end quickly with exit
status 1 and a one-line error on stderr: never a crash, a hang or output."""
import json
import os

import pytest

from chatutil import FIXTURES, run_ours

MSGS = [{"role": "user", "content": "hi"}]
QWEN = os.path.join(FIXTURES, "qwen3")


def expect_error(rc, out, err, *words):
    assert rc == 1, f"exit status {rc} (negative = killed by a signal); stderr={err!r}"
    assert out == ""
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


BAD_TEMPLATES = [
    ("{% if true %}never closed", "parse"),
    ("{% for x in y %}{% endif %}", "parse"),
    ("{% endfor %}", "parse"),
    ("{{ unclosed", "parse"),
    ("{{ 'unterminated }}", "parse"),
    ("{# unterminated comment", "parse"),
    ("{% raw %} no end", "parse"),
    ("{{ a b }}", "parse"),
    ("{{ (1, 2 }}", "parse"),
    ("{{ [1, 2) }}", "parse"),
    ("{{ } }}", "parse"),
    ("{% unknowntag %}", "parse"),
    ("{% set %}", "parse"),
    ("{% macro %}{% endmacro %}", "parse"),
    ("{{ 1 | }}", "parse"),
    ("{{ x|nosuchfilter }}", "no filter named 'nosuchfilter'"),
    ("{% if false %}{{ x|nosuchfilter }}{% endif %}", "no filter named"),
    ("{{ x is nosuchtest }}", "no test named"),
    ("{{ x|wordwrap(3) }}", "unsupported"),
    ("{% include 'other.jinja' %}", "unsupported"),
    ("{% extends 'base' %}", "unsupported"),
    ("{% for x in y recursive %}{% endfor %}", "unsupported"),
    ("{{ raise_exception('Conversation roles must alternate') }}", "Conversation roles must alternate"),
    ("{{ raise_exception('multi\nline') }}", "raise_exception"),
    ("{{ undefined_thing.attr }}", "undefined"),
    ("{{ messages[0].content.nope.deeper }}", "undefined"),
    ("{{ range(10**9)|length }}", "Range too big"),
    ("{% for i in range(10**9) %}x{% endfor %}", "Range too big"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "limit"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}", "limit"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "limit"),
    ("{{ 'x' * 10**12 }}", "limit"),
    ("{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}", "output limit"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "limit"),
    ("{% set ns = namespace(l=[0]) %}{% for i in range(64) %}{% set ns.l = ns.l + ns.l %}{% endfor %}", "limit"),
    ("{{ " + "(" * 50000 + "1" + ")" * 50000 + " }}", "nested too deeply"),
    ("{{ " + "[" * 50000 + "]" * 50000 + " }}", "nested too deeply"),
    ("{{ " + "not " * 50000 + "1 }}", "nested too deeply"),
    ("{{ " + "-" * 50000 + "1 }}", "nested too deeply"),
    ("{{ 1" + " + 1" * 50000 + " }}", None),  # long but flat: renders or errors, never crashes
    ("{{ x" + ".a" * 50000 + " }}", None),
    ("{{ 'a'" + "|upper" * 50000 + " }}", None),
    ("{% if true %}" * 5000 + "{% endif %}" * 5000, "nested too deeply"),
    ("{% for x in [1] %}" * 5000 + "{% endfor %}" * 5000, "nested too deeply"),
    ("{% set ns = namespace(a=1) %}{% for i in range(100000) %}{% set ns.a = [ns.a] %}{% endfor %}{{ ns.a == ns.a }}", "nesting limit"),
    ("{% set ns = namespace(a=1) %}{% for i in range(100000) %}{% set ns.a = {'k': ns.a} %}{% endfor %}{{ ns.a|tojson }}", "nesting limit"),
    ("{% set ns = namespace(a=1) %}{% for i in range(100000) %}{% set ns.a = (ns.a,) %}{% endfor %}{{ [ns.a]|sort }}", "nesting limit"),
    ("{% set s = 'a' * 10000000 %}{% for i in range(100000) %}{% for j in range(100000) %}{{ s[-1] }}{% endfor %}{% endfor %}", "limit"),
    ("{% set s = 'a' * 10000000 %}{% for i in range(100000) %}{% for j in range(100000) %}{{ s == s ~ '' }}{% endfor %}{% endfor %}", "limit"),
    ("{% set s = 'a' * 10000000 %}{% set n = 'a' * 1000000 ~ 'b' %}{% for i in range(100000) %}{{ s.rfind(n) }}{{ n in s }}{% endfor %}", "limit"),
    ("{% for i in range(100000) %}{% set x = 1 %}{% endfor %}" + "".join("{%% set v%d = %d %%}" % (i, i) for i in range(12000)), "too many variables"),
    ("{{ 9223372036854775807 + 1 }}", "overflow"),
    ("{{ 99999999999999999999999 }}", "too large"),
    ("{{ '%s' % 1 }}", "unsupported"),
    ("{{ '\\N{BULLET}' }}", "unsupported"),
    ("{{ '\\xZZ' }}", "parse"),
    ("{{ {}.update({}) }}", "unsafe"),
    ("{{ [].append(1) }}", "unsafe"),
]


@pytest.mark.parametrize("idx", range(len(BAD_TEMPLATES)))
def test_bad_template(idx):
    tpl, word = BAD_TEMPLATES[idx]
    rc, out, err = run_ours(MSGS, template=tpl, timeout=120)
    if word is None:
        assert rc in (0, 1), f"exit status {rc}: {err!r}"
        if rc == 1:
            expect_error(rc, out, err)
        return
    expect_error(rc, out, err, word)


def test_invalid_utf8_template():
    rc, out, err = run_ours(MSGS, template=b"{{ '\xff\xfe' }}")
    expect_error(rc, out, err, "UTF-8")


def test_huge_template_source():
    rc, out, err = run_ours(MSGS, template="x" * (17 << 20))
    expect_error(rc, out, err, "limit")


BAD_MESSAGES = [
    "", "[", "[{]", '[{"role": "user", "content": "x"}', "{}", '"text"', "null", "42",
    '[{"role": "user", "content": "x"}] trailing', '[{"role": "user", "content": "\\ud800"}]',
    '[{"role": "user", "content": "\\x41"}]', '[{"role": "user", "content": "tab\there"}]',
    '[{"role": "user", "content": 123456789012345678901234567890}]', "[" * 100000 + "]" * 100000,
    '[{"role": "user", "content": "x", }]', "[01]", "[.5]", "[1e]", "[tru]", "[nul]",
]


@pytest.mark.parametrize("idx", range(len(BAD_MESSAGES)))
def test_bad_messages_json(idx):
    rc, out, err = run_ours(model_dir=QWEN, messages_raw=BAD_MESSAGES[idx])
    expect_error(rc, out, err)


def test_invalid_utf8_messages():
    rc, out, err = run_ours(model_dir=QWEN, messages_raw=b'[{"role": "user", "content": "\xc3\x28"}]')
    expect_error(rc, out, err, "UTF-8")


@pytest.mark.parametrize("tools", ["{", "{}", '"x"', "[1, 2]", '[{"a": 1}] x'])
def test_bad_tools_json(tools):
    rc, out, err = run_ours(MSGS, model_dir=QWEN, tools_raw=tools)
    expect_error(rc, out, err)


@pytest.mark.parametrize("msgs", [
    [{"role": "user"}],                                  # missing content: Qwen3 concatenates undefined
    [{"role": "user", "content": None}],                 # None + str
    [{"role": "assistant", "content": None}],            # '</think>' in None
    [{"content": "no role"}],                            # renders nothing for unknown roles
    [1, "two", None],                                    # messages that are not objects
    [{"role": "user", "content": {"nested": "dict"}}],
])
def test_malformed_messages_never_crash(msgs):
    rc, out, err = run_ours(msgs, model_dir=QWEN)
    assert rc in (0, 1), err
    if rc == 1:
        expect_error(rc, out, err)


def test_ten_megabyte_content_renders():
    big = "é" * (5 << 20)
    msgs = [{"role": "user", "content": big}, {"role": "assistant", "content": "<think>" + big + "</think>" + big}]
    rc, out, err = run_ours(msgs, model_dir=QWEN, add_generation_prompt=True, timeout=120)
    assert rc == 0, err
    assert out.startswith("<|im_start|>user\n" + big[:10]) and out.endswith("<|im_start|>assistant\n")


def test_missing_template_dir_is_chatml():
    rc, out, err = run_ours(MSGS, model_dir="/nonexistent/dir")
    assert rc == 0, err
    assert out == "<|im_start|>user\nhi<|im_end|>\n"


def test_malformed_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": ')
    rc, out, err = run_ours(MSGS, model_dir=str(tmp_path))
    expect_error(rc, out, err, "invalid JSON")


def test_wide_json_object_is_linear():
    """100k keys in one object: parsing, lookup and sorted tojson stay fast (hash index, merge sort)."""
    big = {"k%d" % i: i for i in range(100000)}
    msgs = [{"role": "user", "content": "x", "big": big}]
    rc, out, err = run_ours(msgs, template="{{ messages[0].big|length }} {{ messages[0].big.k99999 }} "
                                          "{{ (messages[0].big|tojson(sort_keys=true))[:12] }}", timeout=60)
    assert rc == 0, err
    assert out == '100000 99999 {"k0": 0, "k'


def test_unreadable_tokenizer_config_is_io_error(tmp_path):
    (tmp_path / "tokenizer_config.json").mkdir()  # exists but cannot be read as a file
    rc, out, err = run_ours(MSGS, model_dir=str(tmp_path))
    expect_error(rc, out, err, "i/o error")


def test_nul_byte_in_template_file(tmp_path):
    (tmp_path / "chat_template.jinja").write_bytes(b"{{ 1 }}\0{{ 2 }}")
    rc, out, err = run_ours(MSGS, model_dir=str(tmp_path))
    expect_error(rc, out, err, "NUL")
