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
    # One sequence at a time and N streams of the longest output the context
    # allows: the drain runs them one after another, so generation outlasts the
    # checks however fast the machine decodes (the default model does 400
    # tokens in well under the 0.3 s a single stream once had to last).
    N = 6
    s = Server("--shutdown-timeout", "60", "--max-num-seqs", "1", model=LEXICON)
    events, first = [[] for _ in range(N)], threading.Event()

    def stream(i):
        body = {"prompt": "the horse", "max_tokens": 1000, "temperature": 0, "ignore_eos": True, "stream": True}
        with requests.post(s.url + "/v1/completions", json=body, stream=True, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith(b"data: "):
                    events[i].append(line[6:].decode())
                    first.set()

    ts = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(N)]
    for t in ts:
        t.start()
    assert first.wait(30)
    deadline = time.time() + 30  # every stream accepted (one running, the rest queued) before the signal
    while f"engram_num_requests_waiting {N - 1}" not in requests.get(s.url + "/metrics", timeout=5).text:
        assert time.time() < deadline, "the streams were not all queued"
        time.sleep(0.01)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert sum(t.is_alive() for t in ts) >= 2, "the streams ended before the checks: make them longer"
    r = requests.get(s.url + "/health", timeout=5)
    check_error(r, 503)
    assert r.headers["Retry-After"] == "1"
    check_error(post(s.url, "/v1/completions", {"prompt": "x", "max_tokens": 1}), 503)
    check_error(post(s.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}), 503)
    assert requests.get(s.url + "/v1/models", timeout=5).json()["data"][0]["id"] == "engram-lexicon"
    assert "engram_num_requests_running 1" in requests.get(s.url + "/metrics", timeout=5).text
    ids = post(s.url, "/tokenize", {"prompt": "horse"}).json()["tokens"]
    assert post(s.url, "/detokenize", {"tokens": ids}).json() == {"prompt": "horse"}
    for t, ev in zip(ts, events):  # the accepted streams all finish normally
        t.join(60)
        assert ev[-1] == "[DONE]"
        assert json.loads(ev[-2])["choices"][0]["finish_reason"] == "length"
    s.proc.wait(timeout=30)  # the drain ends with the last request
    out = s.stop()
    assert "draining for up to 60s" in out and "aborting" not in out, out[-2000:]
