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
        # the engine frees the sequence's cache right after publishing its end: wait for it
        import time
        deadline = time.time() + 10
        while metric(text, "engram_kv_cache_usage_perc") != 0 and time.time() < deadline:
            time.sleep(0.05)
            text = requests.get(s.url + "/metrics").text
        assert metric(text, "engram_kv_cache_usage_perc") == 0
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


def test_health_is_503_while_loading(tmp_path):
    """The server listens before the model is loaded: /health answers 503 with
    an error object until it is ready, and the API 503s meanwhile. Loading a
    model with Engram builds the compressed tokenizer over Qwen3's 151k ids,
    which takes long enough to observe."""
    import lzma
    import socket
    import subprocess as sp
    import time
    from conftest import BUILD, SOURCE
    src = SOURCE / "tests" / "fixtures" / "tokenizers" / "qwen3"
    d = tmp_path / "m"
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_bytes(lzma.decompress((src / "tokenizer.json.xz").read_bytes()))
    (tmp_path / "tok" / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    sp.run([str(SOURCE / ".venv" / "bin" / "python"), str(SOURCE / "tools" / "gen_checkpoint.py"), str(d),
            "--hidden", "32", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--ffn", "64", "--vocab", "151669",
            "--tie", "--engram", "--tokenizer", str(tmp_path / "tok"), "--engram-layers", "1",
            "--engram-vocab", "1000", "--engram-embed", "32", "--engram-heads", "2"], check=True, capture_output=True)
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    p = sp.Popen([str(BUILD / "engram-server"), "--model", str(d), "--port", str(port)], stdout=sp.PIPE,
                 stderr=sp.STDOUT, text=True)
    try:
        seen = []
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
            except requests.ConnectionError:
                assert p.poll() is None, p.stdout.read()
                time.sleep(0.005)
                continue
            seen.append(r.status_code)
            if r.status_code == 503:
                assert "loading" in r.json()["error"]["message"]
                api = requests.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "x"}, timeout=5)
                assert api.status_code in (503, 200)
            if r.status_code == 200:
                break
        assert seen and seen[-1] == 200 and seen[0] == 503, seen[:5]
    finally:
        p.terminate()
        p.wait(timeout=30)
