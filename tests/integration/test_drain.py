"""Graceful shutdown and back-pressure on the bare engram-server (no nginx in
front; test_deploy_loopback.py covers the same drain through nginx):
SIGTERM with --shutdown-timeout while 16 streams run lets all 16 finish
normally while /health and new requests get 503 with Retry-After, and the
process exits 0; the timeout and a second signal cut the drain short (the
streams end with an error event and [DONE]); a full queue is an immediate
503 with Retry-After, with --max-num-seqs 1 and a queue of 2."""
import json
import signal
import threading
import time

import pytest
import requests

from conftest import SOURCE
from serverutil import Server, check_error, make_slow_model, metric

LEXICON = SOURCE / "models" / "engram-lexicon"


class Stream(threading.Thread):
    """One streamed /v1/completions request read raw on its own thread:
    .status, .events (the 'data: ' payloads), .first (set at the first
    event), .error (an exception in the reader)."""

    def __init__(self, url, i, max_tokens):
        super().__init__(daemon=True)
        self.url, self.i, self.max_tokens = url, i, max_tokens
        self.status, self.events, self.error = None, [], None
        self.first = threading.Event()
        self.start()

    def run(self):
        body = {"prompt": f"Request {self.i}: the horse", "max_tokens": self.max_tokens, "temperature": 0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        try:
            r = requests.post(self.url + "/v1/completions", json=body, stream=True, timeout=120)
            self.status = r.status_code
            for line in r.iter_lines():
                if line and not line.startswith(b":"):  # ": keep-alive" comments while queued
                    assert line.startswith(b"data: "), line
                    self.events.append(line[6:].decode())
                    self.first.set()
        except Exception as ex:  # checked by the test
            self.error = ex
        finally:
            self.first.set()

    def finish_reasons(self):
        return [c["finish_reason"] for e in self.events[:-1] if "choices" in (o := json.loads(e))
                for c in o["choices"] if c["finish_reason"]]


def metrics(url):
    return requests.get(url + "/metrics", timeout=5).text


def wait_exit(s, timeout):
    """Seconds until the server exits by itself (a timeout raises; the test's
    s.stop() then signals again and reports)."""
    t0 = time.time()
    s.proc.wait(timeout=timeout)
    return time.time() - t0


def expect_aborted(st):
    """A stream cut off by the end of a drain: no finish_reason, an OpenAI error
    event (server_error), then [DONE]."""
    assert st.error is None and st.status == 200, (st.status, st.error)
    assert st.events[-1] == "[DONE]", st.events[-3:]
    err = json.loads(st.events[-2])
    assert set(err) == {"error"} and err["error"]["type"] == "server_error", err
    assert st.finish_reasons() == []


def test_sigterm_drains_16_streams():
    n, max_tokens = 16, 640
    # KV room for all 16 to the end (the default, the model's 1024-token context, makes the youngest
    # wait for recompute partway, so "all 16 running" would depend on how far they got). 640 tokens
    # each so the first stream is still going when the last one starts on a loaded 2-core machine
    # (CI saw 12 of 16 running at 192 tokens: the first four had finished).
    s = Server("--shutdown-timeout", "60", "--max-num-seqs", "16", "--kv-cache-tokens", "12288", model=LEXICON)
    try:
        streams = [Stream(s.url, i, max_tokens) for i in range(n)]
        for st in streams:
            assert st.first.wait(30), "a stream never started"
        assert all(st.status == 200 for st in streams), [st.status for st in streams]
        # all 16 in the batch at once: the gauge is published after each step, so wait for the step
        # that admitted the last one; a stream that ended before then breaks the test's premise
        deadline = time.time() + 10
        while (running := metric(metrics(s.url), "engram_num_requests_running")) != n:
            assert all(st.is_alive() for st in streams), "a stream finished before all 16 ran"
            assert time.time() < deadline, running
            time.sleep(0.005)
        s.proc.send_signal(signal.SIGTERM)
        t_term = time.time()

        # draining: /health and every new request get 503 with Retry-After
        deadline = time.time() + 5
        while (h := requests.get(s.url + "/health", timeout=5)).status_code == 200:
            assert time.time() < deadline, "/health stayed 200 after SIGTERM"
            time.sleep(0.005)
        check_error(h, 503)
        assert h.headers.get("Retry-After") == "1"
        late = [requests.post(s.url + "/v1/completions", json={"prompt": "Late", "max_tokens": 2}, timeout=10),
                requests.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                                     "max_tokens": 2, "stream": True}, timeout=10)]
        still_running = sum(st.is_alive() for st in streams)
        for r in late:
            check_error(r, 503)
            assert r.headers.get("Retry-After") == "1"
        assert still_running > 0, "the streams finished before the late requests: not a drain"
        assert s.proc.poll() is None

        # every accepted stream completes normally
        for st in streams:
            st.join(90)
            assert not st.is_alive()
        for st in streams:
            assert st.error is None, (st.i, st.error)
            assert st.events[-1] == "[DONE]", (st.i, st.events[-3:])
            assert all("error" not in json.loads(e) for e in st.events[:-1]), st.i
            assert st.finish_reasons() == ["length"], (st.i, st.finish_reasons())
            assert json.loads(st.events[-2])["usage"]["completion_tokens"] == max_tokens
        wait_exit(s, 60)
        assert time.time() - t_term < 60
    finally:
        out = s.stop()  # exit status 0, no sanitizer report
    assert "draining for up to 60s" in out and "aborting" not in out, out[-3000:]


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    return make_slow_model(tmp_path_factory.mktemp("slow") / "m")


def test_shutdown_timeout_aborts_the_rest(slow):
    s = Server("--shutdown-timeout", "1", model=slow)
    try:
        streams = [Stream(s.url, i, 1500) for i in range(4)]  # far longer than 1 s
        for st in streams:
            assert st.first.wait(30)
        s.proc.send_signal(signal.SIGTERM)
        took = wait_exit(s, 20)
        assert 0.9 < took < 10, took
        for st in streams:
            st.join(20)
            expect_aborted(st)
    finally:
        out = s.stop()
    assert "--shutdown-timeout reached, aborting 4 request(s)" in out, out[-3000:]


def test_second_signal_cuts_the_drain_short(slow):
    s = Server("--shutdown-timeout", "60", model=slow)
    try:
        streams = [Stream(s.url, i, 1500) for i in range(2)]
        for st in streams:
            assert st.first.wait(30)
        s.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + 5
        while requests.get(s.url + "/health", timeout=5).status_code == 200:
            assert time.time() < deadline
            time.sleep(0.005)
        s.proc.send_signal(signal.SIGINT)
        assert wait_exit(s, 10) < 5
        for st in streams:
            st.join(20)
            expect_aborted(st)
    finally:
        out = s.stop()
    assert "second signal, aborting the drain" in out, out[-3000:]


def test_full_queue_is_503_at_once(slow):
    """One running sequence and a queue of two: the fourth request is refused
    at once with Retry-After; the queued ones then run to completion."""
    s = Server("--max-num-seqs", "1", "--max-queued-requests", "2", model=slow)
    try:
        running = Stream(s.url, 0, 600)
        assert running.first.wait(30)
        queued = [Stream(s.url, i, 4) for i in (1, 2)]
        deadline = time.time() + 10
        while metric(metrics(s.url), "engram_num_requests_waiting") != 2:
            assert time.time() < deadline and running.is_alive(), metrics(s.url)
            time.sleep(0.01)
        t0 = time.time()
        r = requests.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, timeout=30)
        assert time.time() - t0 < 1
        check_error(r, 503)
        assert r.headers.get("Retry-After") == "1"
        assert running.is_alive() and all(q.is_alive() for q in queued), "the queue emptied before the overflow"
        for st in (running, *queued):
            st.join(60)
            assert st.error is None and st.status == 200 and st.events[-1] == "[DONE]", (st.i, st.events[-3:])
            assert st.finish_reasons() == ["length"]
        text = metrics(s.url)
        assert metric(text, "engram_http_requests_total", {"route": "/v1/completions", "status": "503"}) == 1
    finally:
        s.stop()
