"""What answers during a drain (issue 23's friction list), as README says:
after SIGTERM with --shutdown-timeout, new generations and /health get 503
with Retry-After, while /v1/models, /tokenize, /detokenize and /metrics keep
answering 200, and the stream already running finishes normally."""
import json
import signal
import threading
import time

import requests

from conftest import SOURCE
from serverutil import Server, check_error, post

LEXICON = SOURCE / "models" / "engram-lexicon"


def test_endpoints_during_a_drain():
    s = Server("--shutdown-timeout", "60", model=LEXICON)
    events, first = [], threading.Event()

    def stream():
        body = {"prompt": "the horse", "max_tokens": 400, "temperature": 0, "ignore_eos": True, "stream": True}
        with requests.post(s.url + "/v1/completions", json=body, stream=True, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    events.append(line[6:].decode())
                    first.set()

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    assert first.wait(30)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert t.is_alive(), "the stream ended before the checks: make it longer"
    r = requests.get(s.url + "/health", timeout=5)
    check_error(r, 503)
    assert r.headers["Retry-After"] == "1"
    check_error(post(s.url, "/v1/completions", {"prompt": "x", "max_tokens": 1}), 503)
    check_error(post(s.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}), 503)
    assert requests.get(s.url + "/v1/models", timeout=5).json()["data"][0]["id"] == "engram-lexicon"
    assert "engram_num_requests_running 1" in requests.get(s.url + "/metrics", timeout=5).text
    ids = post(s.url, "/tokenize", {"prompt": "horse"}).json()["tokens"]
    assert post(s.url, "/detokenize", {"tokens": ids}).json() == {"prompt": "horse"}
    t.join(60)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    s.proc.wait(timeout=30)  # the drain ends with the last request
    out = s.stop()
    assert "draining for up to 60s" in out and "aborting" not in out, out[-2000:]
