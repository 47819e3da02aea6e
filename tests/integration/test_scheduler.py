"""Continuous batching: greedy outputs do not depend on what else runs in the
same steps (batch invariance), many concurrent streams finish with correct
SSE and give every KV block back, and a tiny KV cache forces preemption
(recompute) without changing any output."""
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serverutil import Server, make_slow_model, metric, post

WORDS = "the quick brown fox jumps over a lazy dog while seven small birds sing near old river stones".split()


def prompt(i):
    n = 3 + (i * 7) % 40  # 3..42 words: short prompts beside several chunks long
    return " ".join(WORDS[(i * 5 + k * 3) % len(WORDS)] for k in range(n)) + f" {i}"


def complete(url, p, max_tokens=12):
    r = post(url, "/v1/completions", {"prompt": p, "max_tokens": max_tokens, "temperature": 0,
                                      "ignore_eos": True})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def sse_data(resp):
    """The 'data: ' payloads of a streamed response, checking the framing; SSE
    comments (': keep-alive' after a prompt chunk) are allowed."""
    raw = b"".join(resp.iter_content(chunk_size=None))
    assert raw.endswith(b"\n\n"), raw[-200:]
    out = []
    for b in raw[:-2].split(b"\n\n"):
        assert b"\n" not in b, b[:200]
        if b.startswith(b":"):
            continue
        assert b.startswith(b"data: "), b[:200]
        out.append(b[len(b"data: "):].decode())
    return out


def wait_idle(url, timeout=5):
    deadline = time.time() + timeout
    while True:
        text = requests.get(url + "/metrics").text
        if (metric(text, "engram_num_requests_running") == 0 and metric(text, "engram_num_requests_waiting") == 0
                and metric(text, "engram_kv_cache_usage_perc") == 0):
            return text
        assert time.time() < deadline, text
        time.sleep(0.05)


def test_batch_invariance_32_prompts():
    s = Server("--prefill-chunk", "8", "--max-num-batched-tokens", "48", "--max-num-seqs", "32",
               "--max-queued-requests", "64")
    try:
        prompts = [prompt(i) for i in range(32)]
        alone = [complete(s.url, p) for p in prompts]
        with ThreadPoolExecutor(32) as ex:
            together = list(ex.map(lambda p: complete(s.url, p), prompts))
        assert together == alone
        text = wait_idle(s.url)
        assert metric(text, "engram_scheduler_steps_total") > 0
        assert metric(text, "engram_scheduler_step_tokens_total") > metric(text, "engram_scheduler_steps_total")
    finally:
        s.stop()


def test_64_concurrent_streams():
    s = Server("--max-num-seqs", "16", "--max-queued-requests", "128", "--max-num-batched-tokens", "64")
    try:
        def stream(i):
            r = post(s.url, "/v1/completions", {"prompt": prompt(i), "max_tokens": 8, "temperature": 0,
                                                "ignore_eos": True, "stream": True}, stream=True)
            assert r.status_code == 200, r.text
            events = sse_data(r)
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            return "".join(c["choices"][0]["text"] for c in chunks if c["choices"])

        with ThreadPoolExecutor(64) as ex:
            texts = list(ex.map(stream, range(64)))
        assert all(texts)
        assert texts[:4] == [complete(s.url, prompt(i), 8) for i in range(4)]
        wait_idle(s.url)
    finally:
        s.stop()


def test_tiny_kv_cache_preempts_and_outputs_match():
    # 8 blocks of 16 positions; each request needs up to 4 blocks
    s = Server("--kv-cache-tokens", "128", "--max-num-seqs", "8", "--prefill-chunk", "8",
               "--max-queued-requests", "64")
    try:
        prompts = [prompt(i) for i in range(1, 13)]
        alone = [complete(s.url, p, 24) for p in prompts]
        text = wait_idle(s.url)
        assert metric(text, "engram_num_preemptions_total") == 0  # one at a time always fits
        for _ in range(3):  # preemption depends on how the requests overlap: up to three rounds
            with ThreadPoolExecutor(len(prompts)) as ex:
                together = list(ex.map(lambda p: complete(s.url, p, 24), prompts))
            assert together == alone
            text = wait_idle(s.url)
            if metric(text, "engram_num_preemptions_total") > 0:
                break
        assert metric(text, "engram_num_preemptions_total") > 0
        # a request that can never fit the cache is refused up front
        r = post(s.url, "/v1/completions", {"prompt": prompt(3), "max_tokens": 120})
        assert r.status_code == 400, r.text
    finally:
        s.stop()


def test_disconnects_leave_no_blocks(tmp_path):
    """Streams that vanish after their first chunk are cancelled at the next
    step boundary: their blocks come back (slow model, so they are running)."""
    model = make_slow_model(tmp_path / "slow")
    s = Server("--max-num-seqs", "8", model=model)
    try:
        streams = []
        for i in range(8):
            r = post(s.url, "/v1/completions", {"prompt": prompt(i), "max_tokens": 1000, "ignore_eos": True,
                                                "stream": True}, stream=True)
            assert r.status_code == 200
            next(r.iter_content(chunk_size=1))
            streams.append(r)
        text = requests.get(s.url + "/metrics").text
        assert metric(text, "engram_num_requests_running") > 0 and metric(text, "engram_kv_cache_usage_perc") > 0
        for r in streams:
            r.close()
        wait_idle(s.url, timeout=1.5)
    finally:
        s.stop()


def with_small_tokenizer(src, dst, vocab):
    """A copy of a tokenizer-less fixture with a byte-level BPE of exactly `vocab`
    ids trained by HF tokenizers (the server wants a tokenizer; prompts stay ids)."""
    import shutil
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    shutil.copytree(src, dst)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([" ".join(WORDS)] * 50, trainer)
    assert tok.get_vocab_size() <= vocab
    tok.save(str(dst / "tokenizer.json"))
    return dst


@pytest.mark.parametrize("fixture", ["qwen3_moe", "qwen3_moe_bf16"])
def test_moe_batch_invariance_chunked_and_preempted(tmp_path, fixture):
    """A mixture-of-experts model (the Qwen3-MoE fixture, token-id prompts)
    through the same scheduler: 16 concurrent requests give each one's greedy
    output alone, with prompts in 5-token chunks and a KV cache small enough
    that sequences are preempted and recomputed. Its f32 and its bf16 weights:
    the matrix paths read bf16 in place (and avx512bf16 rounds the
    activations for them only)."""
    from conftest import MODELS
    moe = with_small_tokenizer(MODELS / fixture, tmp_path / "moe", 512)
    # prefix caching off: the runs alone would leave the prompts cached, and the
    # concurrent run would then need too few blocks to be preempted
    s = Server("--kv-cache-tokens", "96", "--kv-block-size", "16", "--max-num-seqs", "16", "--prefill-chunk", "5",
               "--max-num-batched-tokens", "24", "--max-queued-requests", "64", "--enable-prefix-caching", "0",
               model=moe)
    try:
        def ids(i):
            return [(7 * i + 13 * k + 3) % 500 + 3 for k in range(4 + (i * 5) % 19)]

        def run(p):
            r = post(s.url, "/v1/completions", {"prompt": p, "max_tokens": 24, "temperature": 0,
                                                "ignore_eos": True, "logprobs": 1})
            assert r.status_code == 200, r.text
            lp = r.json()["choices"][0]["logprobs"]
            return lp["tokens"], lp["token_logprobs"]

        prompts = [ids(i) for i in range(16)]
        alone = [run(p) for p in prompts]
        assert all(len(a[0]) == 24 for a in alone)
        # preemption depends on how the requests overlap: up to three rounds until one preempts
        for _ in range(3):
            with ThreadPoolExecutor(16) as ex:
                together = list(ex.map(run, prompts))
            assert together == alone
            if metric(wait_idle(s.url), "engram_num_preemptions_total") > 0:
                break
        assert metric(wait_idle(s.url), "engram_num_preemptions_total") > 0
    finally:
        s.stop()
