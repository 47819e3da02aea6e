"""Automatic prefix caching through the server: outputs (greedy, and sampled
with a seed, with logprobs) equal those of a server with caching off, for
prompts whose cached prefix ends mid-block or on a block boundary, with
blocks of 16 and 4, on the Engram fixture model and the default model;
usage.prompt_tokens_details.cached_tokens says how much was reused; two
cache_salt values never share a block; a tiny KV cache under many
overlapping prompts evicts and preempts without changing an output; the
same prompt arriving twice at once is computed once."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import SOURCE
from serverutil import MODEL, Server, check_error, metric, post

DEFAULT_MODEL = SOURCE / "models" / "engram-lexicon"


def ids(n, salt=0):
    return [(i * 37 + 11 + 101 * salt) % 900 + 20 for i in range(n)]


def complete(url, prompt, sampled=False, max_tokens=6, salt=None):
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "logprobs": 2}
    body.update({"temperature": 1.0, "seed": 1234} if sampled else {"temperature": 0})
    if salt is not None:
        body["cache_salt"] = salt
    r = post(url, "/v1/completions", body)
    assert r.status_code == 200, r.text
    j = r.json()
    return j["choices"][0]["text"], j["choices"][0]["logprobs"], j["usage"]["prompt_tokens_details"]["cached_tokens"]


def cases(bs):
    """(prompt length, tokens expected from the cache) in order, after a first
    prompt of 4 blocks: mid-block, on a block end, shorter, the same again."""
    return [(4 * bs, 0), (4 * bs + 3, 4 * bs), (5 * bs, 4 * bs), (3 * bs - 1, 2 * bs), (4 * bs, 3 * bs),
            (6 * bs + 1, 5 * bs)]


@pytest.mark.parametrize("model", [MODEL, DEFAULT_MODEL], ids=["qwen3_engram", "engram-lexicon"])
@pytest.mark.parametrize("bs", [16, 4])
def test_outputs_equal_caching_off(model, bs):
    base = ids(6 * bs + 1)
    ref, got = [], []
    for on, out in ((0, ref), (1, got)):
        s = Server("--kv-block-size", bs, "--enable-prefix-caching", on, "--prefill-chunk", 8, model=model)
        try:
            for n, hit in cases(bs):
                for sampled in (False, True):
                    text, lps, cached = complete(s.url, base[:n], sampled)
                    out.append((n, sampled, text, lps))
                    want = 0 if not on else hit if not sampled else (n - 1) // bs * bs
                    assert cached == want, (on, n, sampled, cached)
            text = requests.get(s.url + "/metrics").text
            if on:
                assert metric(text, "engram_prefix_cache_hits_tokens_total") > 0
                assert metric(text, "engram_prefix_cache_blocks") >= 6
            else:
                assert metric(text, "engram_prefix_cache_queries_tokens_total") == 0
        finally:
            s.stop()
    assert got == ref


def test_cache_salt_isolation_and_chat_usage():
    s = Server("--kv-block-size", 4)
    try:
        p = ids(30, 1)
        assert complete(s.url, p, salt="tenant-a")[2] == 0
        assert complete(s.url, p, salt="tenant-b")[2] == 0
        assert complete(s.url, p)[2] == 0
        assert complete(s.url, p, salt="tenant-a")[2] == 28
        assert complete(s.url, p, salt="tenant-b")[2] == 28
        assert complete(s.url, p)[2] == 28
        outs = {complete(s.url, p, salt=x)[:2] == complete(s.url, p)[:2] for x in ("tenant-a", "tenant-c")}
        assert outs == {True}
        msgs = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 3}]
        usage = []
        for _ in range(2):
            r = post(s.url, "/v1/chat/completions", {"messages": msgs, "max_tokens": 3, "temperature": 0})
            assert r.status_code == 200, r.text
            usage.append(r.json()["usage"])
        assert usage[0]["prompt_tokens_details"] == {"cached_tokens": 0}
        n = usage[1]["prompt_tokens"]
        assert usage[1]["prompt_tokens_details"] == {"cached_tokens": (n - 1) // 4 * 4}
        for bad in ("", 5, ["x"], "x" * 1025):
            check_error(post(s.url, "/v1/completions", {"prompt": p, "max_tokens": 1, "cache_salt": bad}), 400,
                        "cache_salt")
    finally:
        s.stop()


def test_tiny_cache_evicts_and_outputs_match():
    """36 blocks of 4 positions, eight at once, prompts sharing prefixes of
    every length: blocks are evicted and sequences preempted (and resumed
    from their cached blocks), outputs stay those of caching off."""
    prompts = [ids(8 + (i * 5) % 23, i % 3) + ids(i % 4 + 1, 7 + i) for i in range(24)]
    args = ("--kv-cache-tokens", 144, "--kv-block-size", 4, "--max-num-seqs", 8, "--prefill-chunk", 8,
            "--max-queued-requests", 64)
    outs = []
    for on in (0, 1):
        s = Server(*args, "--enable-prefix-caching", on, "--prefix-cache-max-blocks", 20)
        try:
            with ThreadPoolExecutor(8) as ex:
                outs.append(list(ex.map(lambda i: complete(s.url, prompts[i], i % 2 == 1, 24)[:2], range(24))))
            text = requests.get(s.url + "/metrics").text
            if on:
                assert metric(text, "engram_prefix_cache_evictions_total") > 0
                assert metric(text, "engram_prefix_cache_hits_tokens_total") > 0
                assert metric(text, "engram_num_preemptions_total") > 0
        finally:
            s.stop()
    assert outs[1] == outs[0]


def test_same_prompt_at_once_computed_once():
    s = Server("--kv-block-size", 4, "--prefill-chunk", 8)
    try:
        p = ids(41, 2)
        with ThreadPoolExecutor(2) as ex:
            res = list(ex.map(lambda _: complete(s.url, p), range(2)))
        assert res[0][:2] == res[1][:2]
        assert sorted(r[2] for r in res) == [0, 40]
    finally:
        s.stop()
