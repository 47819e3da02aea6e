"""Bad input for the tokenizer (also run against the ASan/UBSan build):
invalid UTF-8, encoded surrogates, NUL bytes, 10 MB strings, malformed or
truncated tokenizer.json, unknown component types, bad ids. Each gives a
clear error (exit 1, one line on stderr) or the same result as HF
`tokenizers`, never a crash or an unbounded run."""
import json
import os
import subprocess
import time

import pytest

os.environ.setdefault("RAYON_NUM_THREADS", "1")

from tokenizers import Tokenizer  # noqa: E402

import tokfixtures as tf  # noqa: E402

TRAINED = os.path.join(tf.FIXTURES, "trained")
TRAINED_JSON = os.path.join(TRAINED, "tokenizer.json")


def run(*args, stdin=None, timeout=120):
    p = subprocess.run([tf.TOKENIZE, *args], input=stdin, capture_output=True, timeout=timeout)
    assert p.returncode >= 0, f"killed by signal {-p.returncode}: {p.stderr[-2000:]!r}"
    assert b"AddressSanitizer" not in p.stderr and b"runtime error" not in p.stderr, p.stderr[-3000:]
    return p


def encode_file(tmp_path, data, tok=TRAINED, *flags):
    f = tmp_path / "in.txt"
    f.write_bytes(data)
    return run("--tokenizer", tok, "--text-file", str(f), *flags)


@pytest.mark.parametrize("data", [
    b"\xff", b"abc\x80def", b"\xe2\x82", b"\xc0\xaf", b"\xf5\x80\x80\x80", b"\xf4\x90\x80\x80",
    b"\xed\xa0\x80",                    # lone high surrogate U+D800 as bytes
    b"\xed\xbf\xbf",                    # lone low surrogate
    b"\xed\xa0\xbd\xed\xb8\x80",        # CESU-8 surrogate pair
    b"ok \xe0\x80\x80 overlong", b"\xf0\x9f\x98", b"a" * 1000 + b"\xfe",
])
def test_invalid_utf8_is_rejected(tmp_path, data):
    p = encode_file(tmp_path, data)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "invalid UTF-8" in err and err.count("\n") == 1


def test_jsonl_lone_surrogate_escape_is_an_error_line():
    lines = b'"\\ud800"\n"ok"\n"\\udc00x"\n"\\ud83d\\ude00"\n'
    p = run("--tokenizer", TRAINED, "--jsonl", stdin=lines)
    assert p.returncode == 0
    out = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert out[0] == {"error": "invalid UTF-8"} and out[2] == {"error": "invalid UTF-8"}
    hf = Tokenizer.from_file(TRAINED_JSON)
    assert out[1] == hf.encode("ok").ids and out[3] == hf.encode("\U0001F600").ids


@pytest.mark.parametrize("text", ["\x00", "a\x00b", "\x00\x00\x00 x \x00", "<s>\x00</s>", "\x00" * 100])
def test_nul_bytes_match_hf(tmp_path, text):
    hf = Tokenizer.from_file(TRAINED_JSON)
    p = encode_file(tmp_path, text.encode())
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == hf.encode(text).ids
    assert tf.run_jsonl(TRAINED, [text])[0] == hf.encode(text).ids


@pytest.mark.parametrize("kind", ["letters", "spaces", "digits", "emoji", "newlines", "mixed", "random",
                                  "angles", "marks"])
def test_10mb_inputs_finish(tmp_path, kind):
    import random
    rng = random.Random(1)
    n = 10 * 1024 * 1024
    if kind == "letters":
        data = b"a" * n
    elif kind == "spaces":
        data = b" " * n
    elif kind == "digits":
        data = b"7" * n
    elif kind == "emoji":
        data = "😀".encode() * (n // 4)
    elif kind == "newlines":
        data = b"\r\n" * (n // 2)
    elif kind == "marks":  # one base letter and 5 M combining marks to reorder (NFKC)
        data = b"a" + "\u0301\u0316".encode() * (n // 4)
    elif kind == "angles":  # near-misses of added tokens everywhere
        data = b"<|im_start<mask<s <<think" * (n // 25)
    elif kind == "mixed":
        data = ("word  \t\n" + "中文" + "123 ").encode() * (n // 20)
    else:
        alphabet = list(tf.ALPHABET)
        data = "".join(rng.choice(alphabet) for _ in range(n // 3)).encode()
    t0 = time.time()
    p = encode_file(tmp_path, data)
    took = time.time() - t0
    assert p.returncode == 0, p.stderr
    ids = json.loads(p.stdout)
    assert len(ids) > 2 and took < 100


def test_1mb_matches_hf(tmp_path):
    hf = Tokenizer.from_file(TRAINED_JSON)
    text = ("Hello world 12345 \n\n  " + "中文字😀" + "<s> x </s>") * 30000
    p = encode_file(tmp_path, text.encode())
    assert p.returncode == 0
    assert json.loads(p.stdout) == hf.encode(text).ids


def test_long_combining_run_matches_hf(tmp_path):
    hf = Tokenizer.from_file(TRAINED_JSON)
    text = "e" + "\u0301\u0316\u0300\u0317\u05b0" * 20000 + " ok \u1100\u1161\u11a8"
    p = encode_file(tmp_path, text.encode())
    assert p.returncode == 0
    assert json.loads(p.stdout) == hf.encode(text).ids


def test_over_64mb_is_a_limit_error(tmp_path):
    p = encode_file(tmp_path, b"a" * (64 * 1024 * 1024 + 1))
    assert p.returncode == 1
    assert "limit" in p.stderr.decode() or "over the limit" in p.stderr.decode()


# ---------------------------------------------------------------------------
# Malformed tokenizer.json

BASE = open(TRAINED_JSON, encoding="utf-8").read()


def load_json_text(tmp_path, text, name="tokenizer.json"):
    f = tmp_path / name
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return run("--tokenizer", str(f), "--text", "hello world")


def expect_error(p, *words):
    assert p.returncode == 1, (p.returncode, p.stdout[:200], p.stderr)
    err = p.stderr.decode()
    assert err.count("\n") == 1, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("cut", [0, 1, 10, 100, 1000, 5000, 20000, len(BASE.encode()) - 2])
def test_truncated_json(tmp_path, cut):
    expect_error(load_json_text(tmp_path, BASE.encode()[:cut]))


def mutate(fn):
    j = json.loads(BASE)
    fn(j)
    return json.dumps(j)


def _set(path, value):
    def f(j):
        o = j
        for k in path[:-1]:
            o = o[k]
        o[path[-1]] = value
    return f


@pytest.mark.parametrize("fn,words", [
    (_set(["model", "type"], "Unigram"), ["unsupported", "Unigram"]),
    (_set(["model", "type"], "WordPiece"), ["unsupported", "WordPiece"]),
    (_set(["normalizer"], {"type": "Precompiled", "precompiled_charsmap": "AAAA"}), ["unsupported", "Precompiled"]),
    (_set(["normalizer"], {"type": "Sequence", "normalizers": [{"type": "BertNormalizer"}]}), ["BertNormalizer"]),
    (_set(["pre_tokenizer"], {"type": "BertPreTokenizer"}), ["unsupported", "BertPreTokenizer"]),
    (_set(["pre_tokenizer"], {"type": "Split", "pattern": {"Regex": "("}, "behavior": "Isolated", "invert": False}), ["regex"]),
    (_set(["pre_tokenizer"], {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways", "invert": False}), ["Sideways"]),
    (_set(["pre_tokenizer"], {"type": "Split", "pattern": {}, "behavior": "Isolated"}), ["pattern"]),
    (_set(["decoder"], {"type": "CTC"}), ["unsupported", "CTC"]),
    (_set(["decoder"], {"type": "Strip", "content": "ab", "start": 1, "stop": 0}), ["Strip"]),
    (_set(["post_processor"], {"type": "Magic"}), ["unsupported", "Magic"]),
    (_set(["post_processor"], {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}}], "pair": [], "special_tokens": {}}), ["<x>"]),
    (_set(["model", "merges"], ["a", "b c d"]), ["merge"]),
    (_set(["model", "merges"], [["zzzq", "qqq"]]), ["not in the vocabulary"]),
    (_set(["model", "merges"], [1, 2]), ["merge"]),
    (_set(["model", "vocab"], {"a": -1}), ["id"]),
    (_set(["model", "vocab"], {"a": 1e12}), ["id"]),
    (_set(["model", "vocab"], {"a": "zero"}), ["id"]),
    (_set(["model", "vocab"], []), ["vocab"]),
    (_set(["model", "unk_token"], "<nope>"), ["unk_token"]),
    (_set(["model", "dropout"], 0.5), ["dropout"]),
    (_set(["model"], None), ["model"]),
    (_set(["added_tokens"], [{"id": 5}]), ["content"]),
    (_set(["added_tokens"], {}), ["added_tokens"]),
])
def test_malformed_components(tmp_path, fn, words):
    expect_error(load_json_text(tmp_path, mutate(fn)), *words)


def test_invalid_utf8_in_json_is_an_error(tmp_path):
    """Found by fuzz_tokenizer_load: a Replace content with a raw 0xFD byte
    made the normalized text invalid UTF-8 for PCRE2 (a crash)."""
    j = json.loads(BASE)
    j["normalizer"] = {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": "@@ "}
    raw = json.dumps(j).encode().replace(b"@@", b"\xfd")
    expect_error(load_json_text(tmp_path, raw), "UTF-8")


def test_deep_nesting_is_an_error(tmp_path):
    n = {"type": "NFC"}
    for _ in range(200):
        n = {"type": "Sequence", "normalizers": [n]}
    expect_error(load_json_text(tmp_path, mutate(_set(["normalizer"], n))), "deeply")


@pytest.mark.parametrize("text", ["", "null", "[]", "42", "\"x\"", "{}", "{\"model\": 3}", "\x00\x01",
                                  "{\"model\": {\"vocab\": {}, \"merges\": []}}"])
def test_not_a_tokenizer(tmp_path, text):
    p = load_json_text(tmp_path, text)
    if text == "{\"model\": {\"vocab\": {}, \"merges\": []}}":
        # an empty BPE is a valid (useless) tokenizer, as in HF
        assert p.returncode == 0 and json.loads(p.stdout) == []
    else:
        expect_error(p)


def test_missing_paths(tmp_path):
    expect_error(run("--tokenizer", str(tmp_path / "nope"), "--text", "x"), "nope")
    expect_error(run("--tokenizer", str(tmp_path), "--text", "x"), "tokenizer.json")


def test_bad_config_json(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "tokenizer.json").write_text(BASE)
    (d / "tokenizer_config.json").write_text("{ not json")
    expect_error(run("--tokenizer", str(d), "--text", "x"), "tokenizer_config.json")


def test_bad_ids_decode_like_hf():
    hf = Tokenizer.from_file(TRAINED_JSON)
    p = run("--tokenizer", TRAINED, "--decode", "99999999,5,2000000000")
    assert p.returncode == 0 and p.stdout.decode() == hf.decode([99999999, 5, 2000000000]) + "\n"
    p = run("--tokenizer", TRAINED, "--decode", "-1,5")
    assert p.returncode == 0 and p.stdout.decode() == hf.decode([5]) + "\n"
    p = run("--tokenizer", TRAINED, "--decode", "1,x")
    assert p.returncode == 2
    p = run("--tokenizer", TRAINED, "--decode", "99999999999999")
    assert p.returncode == 2


def test_usage_errors():
    assert run().returncode == 2
    assert run("--tokenizer", TRAINED).returncode == 2
    assert run("--tokenizer", TRAINED, "--text", "a", "--decode", "1").returncode == 2
    assert run("--bogus").returncode == 2


def test_jsonl_garbage_lines():
    lines = b'not json\n"unterminated\n[1,2,x]\n\n"\\q"\n"fine"\n'
    p = run("--tokenizer", TRAINED, "--jsonl", stdin=lines)
    assert p.returncode == 0
    out = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert len(out) == 6
    assert all("error" in o for o in out[:5])
    assert out[5] == Tokenizer.from_file(TRAINED_JSON).encode("fine").ids
