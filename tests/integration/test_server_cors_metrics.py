"""CORS (off by default, configurable), the connection timeout flag, and the
metric families added beside the basics: inter-token latency, KV cache usage;
the exposition passes promtool."""
import shutil
import subprocess

import requests

from serverutil import Server, metric, post


def test_cors_off_by_default():
    s = Server()
    try:
        r = requests.get(s.url + "/v1/models", headers={"Origin": "https://app.example"})
        assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
        r = requests.options(s.url + "/v1/completions", headers={"Origin": "https://app.example"})
        assert r.status_code == 405
    finally:
        s.stop()


def test_cors_allow_origin_and_preflight():
    s = Server("--cors-allow-origin", "https://app.example", "--connection-timeout", "30")
    try:
        r = requests.options(s.url + "/v1/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert r.status_code == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
        r = post(s.url, "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        r = post(s.url, "/v1/completions", {"prompt": "x", "max_tokens": 2, "stream": True}, stream=True)
        assert r.headers["Access-Control-Allow-Origin"] == "https://app.example"
        r.close()
    finally:
        s.stop()


def test_itl_and_kv_usage_metrics():
    s = Server()
    try:
        assert post(s.url, "/v1/completions", {"prompt": "x", "max_tokens": 5, "ignore_eos": True}).status_code == 200
        text = requests.get(s.url + "/metrics").text
        assert metric(text, "engram_inter_token_latency_seconds_count") == 1
        assert metric(text, "engram_inter_token_latency_seconds_sum") > 0
        assert metric(text, "engram_kv_cache_usage_perc") == 0  # idle: the sequence's cache is free
        p = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=text,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        s.stop()


def test_keepalive_comments_during_long_prefill():
    """With small prefill chunks a long prompt sends SSE comments before its
    first token; the official SDK ignores them."""
    import openai
    s = Server("--prefill-chunk", "8")
    try:
        ids = list(range(10, 110))  # 100 prompt tokens: 13 chunks
        r = post(s.url, "/v1/completions", {"prompt": ids, "max_tokens": 2, "stream": True, "ignore_eos": True},
                 stream=True)
        raw = r.content.decode()
        # one per read at most: progress that piles up while the client is slow coalesces
        assert 1 <= raw.count(": keep-alive\n\n") <= 12
        assert raw.index(": keep-alive") < raw.index("data: ")
        assert raw.endswith("data: [DONE]\n\n")
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        text = "".join(c.choices[0].text for c in client.completions.create(
            model="qwen3_engram", prompt=ids, max_tokens=2, stream=True, extra_body={"ignore_eos": True})
            if c.choices)
        assert isinstance(text, str)
    finally:
        s.stop()
