"""The access log (--access-log, issue 23): one JSON line per request with
what the client saw (status, body bytes, X-Request-Id), the door's own
refusals included; off by default; --log-level filters the diagnostics and
puts libmicrohttpd's client-gone lines at debug."""
import json
import os
import socket
import tempfile
import time

import requests

from serverutil import API_KEY, Server, metric

FIELDS = {"time", "request_id", "client", "method", "route", "status", "bytes", "duration_ms", "end"}


def read_log(path, n, timeout=10):
    """The first n lines of the access log as dicts, leaving out /health (the
    start's polls, whose last line may come after the client has its answer:
    a line is written when libmicrohttpd reports the request over, so this
    waits for them)."""
    deadline = time.time() + timeout
    while True:
        with open(path) as f:
            out = [json.loads(ln) for ln in f.read().splitlines()]
        for e in out:
            assert set(e) == FIELDS, e
            assert e["time"].endswith("Z") and len(e["time"]) == 24, e
        out = [e for e in out if e["route"] != "/health"]
        if len(out) >= n or time.time() > deadline:
            return out
        time.sleep(0.05)


def raw(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.sendall(data)
        got = b""
        while True:
            b = c.recv(65536)
            if not b:
                return got
            got += b


def test_access_log_lines_match_responses():
    fd, path = tempfile.mkstemp(prefix="engram-access-", suffix=".log")
    os.close(fd)
    s = Server("--access-log", path, "--api-key", API_KEY)
    try:
        base = len(read_log(path, 0, timeout=0))
        auth = {"Authorization": f"Bearer {API_KEY}"}
        r1 = requests.post(s.url + "/v1/completions", headers=dict(auth, **{"X-Request-Id": "client-id.42"}),
                           json={"prompt": [1, 2, 3], "max_tokens": 4})
        assert r1.status_code == 200 and r1.headers["X-Request-Id"] == "client-id.42"
        r2 = requests.post(s.url + "/v1/completions", headers=auth, stream=True,
                           json={"prompt": [1, 2, 3], "max_tokens": 5, "stream": True})
        body2 = b"".join(r2.iter_content(chunk_size=None))
        assert r2.status_code == 200 and body2.endswith(b"data: [DONE]\n\n")
        r3 = requests.post(s.url + "/v1/completions", json={"prompt": [1], "max_tokens": 1})  # no key
        assert r3.status_code == 401
        r4 = requests.get(s.url + "/nowhere", headers={"X-Request-Id": "bad id with spaces"})
        assert r4.status_code == 404 and r4.headers["X-Request-Id"].startswith("req-")
        # a head the door refuses (two Content-Lengths): never reaches libmicrohttpd
        got = raw(s.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                          b"Content-Length: 3\r\n\r\n{}")
        assert got.startswith(b"HTTP/1.1 400")
        door_body = got.split(b"\r\n\r\n", 1)[1]
        log = read_log(path, base + 5)[base:]
        assert len(log) == 5, log
        # A line is written when libmicrohttpd reports its request over, which
        # can come after the client has its answer and has sent the next one:
        # the lines' order is not the requests', so find each by its id.
        by_id = {x["request_id"]: x for x in log}
        a, b, c, d = (by_id.get(r.headers["X-Request-Id"]) for r in (r1, r2, r3, r4))
        e = next((x for x in log if x["route"] == "-"), None)
        assert None not in (a, b, c, d, e), log
        assert (a["request_id"], a["method"], a["route"], a["status"], a["bytes"], a["end"], a["client"]) == \
            ("client-id.42", "POST", "/v1/completions", 200, len(r1.content), "ok", "127.0.0.1")
        assert (b["method"], b["route"], b["status"], b["bytes"], b["end"]) == \
            ("POST", "/v1/completions", 200, len(body2), "ok")
        assert b["request_id"] == r2.headers["X-Request-Id"] and b["request_id"].startswith("req-")
        assert (c["route"], c["status"], c["bytes"]) == ("/v1/completions", 401, len(r3.content))
        assert (d["route"], d["status"], d["request_id"]) == ("other", 404, r4.headers["X-Request-Id"])
        assert (e["method"], e["route"], e["status"], e["end"], e["bytes"]) == \
            ("-", "-", 400, "refused", len(door_body))
        assert len({x["request_id"] for x in (a, b, c, d)}) == 4
        assert all(x["duration_ms"] >= 0 for x in log)
        # a client that leaves mid-stream: its line says so
        body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 200, "stream": True, "ignore_eos": True}).encode()
        c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                  b"Content-Length: %d\r\n\r\n" % (API_KEY.encode(), len(body)) + body)
        assert c.recv(100).startswith(b"HTTP/1.1 200")
        c.close()
        f = read_log(path, base + 6)[base + 5]
        assert (f["status"], f["route"]) == (200, "/v1/completions") and f["end"] != "ok", f
    finally:
        out = s.stop()
        os.unlink(path)
    assert '"request_id"' not in out  # the file, not stderr


def test_access_log_to_stderr_and_off_by_default():
    s = Server("--access-log", "-")
    try:
        requests.get(s.url + "/v1/models")
        deadline = time.time() + 10
        while '"route":"/v1/models"' not in s.output():
            assert time.time() < deadline, s.output()
            time.sleep(0.05)
    finally:
        s.stop()
    s = Server()
    try:
        requests.get(s.url + "/v1/models")
    finally:
        out = s.stop()
    assert '"request_id"' not in out


def test_log_level_debug_shows_client_gone_and_error_hides_info():
    s = Server("--log-level", "debug")
    try:
        body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 200, "stream": True, "ignore_eos": True}).encode()
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert c.recv(100).startswith(b"HTTP/1.1 200")
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        deadline = time.time() + 10
        while metric(requests.get(s.url + "/metrics").text, "engram_request_success_total",
                     {"finished_reason": "abort"}) != 3:
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        out = s.stop()
    assert "engram-server: debug: libmicrohttpd: " in out, out
    s = Server("--log-level", "error")
    out = s.stop()
    assert "serving" not in out and "stopping" not in out, out
