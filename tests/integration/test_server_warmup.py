"""The server's warm-up (--warmup, default 1): outputs (greedy, and sampled
with a seed, with logprobs and cached_tokens) are bit-identical with and
without it, with prefix caching on, on the Engram fixture and the default
model; /metrics after it shows no request, token or step and no cached
block; /health stays 503 until it is done (the log's warm-up line is
written before ready is set, so a 200 seen before that line would mean the
order broke)."""
import shutil
import subprocess
import sys
import time

import pytest
import requests

from conftest import BUILD, SOURCE
from serverutil import MODEL, Server, free_port, metric, post

DEFAULT_MODEL = SOURCE / "models" / "engram-lexicon"


def ids(n, salt=0):
    return [(i * 37 + 11 + 101 * salt) % 900 + 20 for i in range(n)]


def complete(url, prompt, sampled):
    body = {"prompt": prompt, "max_tokens": 6, "ignore_eos": True, "logprobs": 2}
    body.update({"temperature": 1.0, "seed": 1234} if sampled else {"temperature": 0})
    r = post(url, "/v1/completions", body)
    assert r.status_code == 200, r.text
    j = r.json()
    return j["choices"][0]["text"], j["choices"][0]["logprobs"], j["usage"]


@pytest.mark.parametrize("model", [MODEL, DEFAULT_MODEL], ids=["qwen3_engram", "engram-lexicon"])
def test_outputs_equal_without_warmup(model):
    base = ids(70)
    outs = {}
    for warm in (1, 0):
        s = Server("--warmup", warm, "--kv-block-size", 16, "--enable-prefix-caching", 1, "--prefill-chunk", 16,
                   model=model)
        try:
            assert ("warm-up: 16 prompt tokens + 2 decode steps" in s.output()) == bool(warm), s.output()
            text = requests.get(s.url + "/metrics").text
            assert metric(text, "engram_prefix_cache_blocks") == 0
            out = []
            for n in (40, 48, 70, 33):  # the later ones find the earlier ones' blocks cached
                for sampled in (False, True):
                    out.append((n, sampled, complete(s.url, base[:n], sampled)))
            outs[warm] = out
        finally:
            s.stop()
    assert outs[1] == outs[0]
    assert any(u["prompt_tokens_details"]["cached_tokens"] > 0 for _, _, (_, _, u) in outs[1])


def test_metrics_after_warmup_count_nothing():
    s = Server()
    try:
        assert "warm-up: " in s.output()
        text = requests.get(s.url + "/metrics").text
        for name in ("engram_request_success_total", "engram_prompt_tokens_total", "engram_generation_tokens_total",
                     "engram_scheduler_steps_total", "engram_scheduler_step_tokens_total",
                     "engram_prefix_cache_queries_tokens_total", "engram_prefix_cache_blocks",
                     "engram_num_requests_running", "engram_num_requests_waiting", "engram_kv_cache_usage_perc",
                     "engram_time_to_first_token_seconds_count", "engram_inter_token_latency_seconds_count"):
            v = metric(text, name)
            assert v in (None, 0), (name, v)
        assert metric(text, "engram_scheduler_steps_total") == 0  # the engine's counters are there
        complete(s.url, ids(20), False)
        text = requests.get(s.url + "/metrics").text
        assert metric(text, "engram_prompt_tokens_total") == 20  # the first request's alone
        assert metric(text, "engram_generation_tokens_total") == 6
    finally:
        s.stop()


def test_health_503_until_warmup_done(tmp_path):
    """A model whose warm-up takes a few hundred milliseconds on one thread
    (random weights, 4 layers of 1024): /health is polled from the start,
    and each 200 must come after the log's warm-up line."""
    d = tmp_path / "m"
    subprocess.run([sys.executable, str(SOURCE / "tools" / "gen_checkpoint.py"), str(d), "--arch", "qwen3",
                    "--hidden", "1024", "--layers", "4", "--heads", "8", "--kv-heads", "4", "--ffn", "4096",
                    "--vocab", "2048", "--max-pos", "2048", "--dtype", "bf16"], check=True, capture_output=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(MODEL / f, d / f)
    log = tmp_path / "log"
    port = free_port()
    with open(log, "w") as f:
        p = subprocess.Popen([str(BUILD / "engram-server"), "--model", str(d),
                              "--port", str(port), "--threads", "1"], stdout=f, stderr=subprocess.STDOUT,
                             env={"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"})
    try:
        seen, deadline = [], time.time() + 60
        while time.time() < deadline:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
            except requests.ConnectionError:
                assert p.poll() is None, log.read_text()
                time.sleep(0.002)
                continue
            warmed = "warm-up: " in log.read_text()  # read after the answer: a 200 needs it already there
            seen.append((r.status_code, warmed))
            if r.status_code == 200:
                assert warmed, (seen[-5:], log.read_text())
                break
            time.sleep(0.002)
        assert seen and seen[-1][0] == 200, seen[-5:]
        m = [float(x) for x in log.read_text().split("decode steps in ")[1].split(" s")[:1]]
        assert m[0] > 0.05, log.read_text()  # long enough for the polls to have seen the warm-up
        assert sum(1 for c, w in seen if c == 503) > 3, seen
    finally:
        p.terminate()
        p.wait(timeout=30)
