"""The API key and the declared body size are checked on the headers, before
any body byte is read (issue 23): an unauthenticated or oversized upload gets
its 401 or 413 at once and the connection is closed, so pending uploads cost
the server no memory; `Expect: 100-continue` is answered with "100 Continue"
only when both checks pass. Raw sockets, so that nothing waits politely."""
import socket
import time

import pytest
import requests

from serverutil import API_KEY, Server, check_error, post

BODY = 1_000_000


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", API_KEY, "--http-threads", "2")
    yield s
    s.stop()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def head(path="/v1/completions", length=BODY, key=None, extra=b""):
    h = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if key:
        h += b"Authorization: Bearer " + key.encode() + b"\r\n"
    return h + b"Content-Length: %d\r\n" % length + extra + b"\r\n"


def read_reply(sock, timeout=5):
    """What the server sent until it closed (a reset after its reply is fine)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def push(socks, payload, seconds):
    """Sends payload on every socket without blocking, for up to `seconds`;
    a socket the server has closed stops taking bytes."""
    left = {s: memoryview(payload) for s in socks}
    for s in socks:
        s.setblocking(False)
    deadline = time.time() + seconds
    while left and time.time() < deadline:
        progress = False
        for s in list(left):
            try:
                n = s.send(left[s][:262144])
                left[s] = left[s][n:]
                progress = True
                if not len(left[s]):
                    del left[s]
            except BlockingIOError:
                pass
            except OSError:  # reset or broken pipe: refused and closed
                del left[s]
        if not progress:
            time.sleep(0.01)
    for s in socks:
        s.setblocking(True)


def test_unauthenticated_bodies_are_not_read(server):
    """200 connections each declaring 1 MB and sending all but its last byte:
    each gets a 401 at once and the server's RSS does not grow (before the
    fix it read and held every body: +200 MB)."""
    rss0 = rss_kb(server.proc.pid)
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(200)]
    for s in socks:
        s.sendall(head(key="wrong-key"))
    push(socks, b"x" * (BODY - 1), 8)
    time.sleep(0.3)
    grown = rss_kb(server.proc.pid) - rss0
    if grown >= 40_000:
        for s in socks:
            s.close()
        raise AssertionError(f"server RSS grew by {grown} kB")
    replies = [read_reply(s) for s in socks]
    for s in socks:
        s.close()
    for r in replies:
        assert r.startswith(b"HTTP/1.1 401 "), r[:200]
        assert b"Connection: close" in r.split(b"\r\n\r\n")[0], r[:400]
        assert r.count(b"HTTP/1.1") == 1
    assert requests.get(server.url + "/health", timeout=2).status_code == 200


def test_expect_continue_needs_the_key(server):
    # without a key: the 401 instead of "100 Continue", and the connection closes
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(head(length=50, extra=b"Expect: 100-continue\r\n"))
        r = read_reply(s)
    assert r.startswith(b"HTTP/1.1 401 "), r[:200]
    assert b"100 Continue" not in r
    # too large for --max-body-bytes: 413, no "100 Continue" either
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(head(key=API_KEY, length=10_000_000, extra=b"Expect: 100-continue\r\n"))
        r = read_reply(s)
    assert r.startswith(b"HTTP/1.1 413 "), r[:200]
    assert b"100 Continue" not in r
    # with the key and a fitting size: "100 Continue", then the answer to the body
    body = b'{"prompt": [1, 2], "max_tokens": 1}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(head(key=API_KEY, length=len(body), extra=b"Expect: 100-continue\r\n"))
        s.settimeout(5)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), first
        s.sendall(body)
        r = first[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        while b"\r\n\r\n" not in r or not r.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            r += chunk
    assert r.startswith(b"HTTP/1.1 200 "), r[:300]


def test_oversized_declared_body_refused_on_headers(server):
    """A Content-Length over --max-body-bytes (1 MiB here) gets 413 before
    the body; an unknown route and a wrong method are refused there too."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(head(key=API_KEY, length=1048577))
        r = read_reply(s)
    assert r.startswith(b"HTTP/1.1 413 "), r[:200]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(head(path="/v1/nothing", key=API_KEY))
        assert read_reply(s).startswith(b"HTTP/1.1 404 ")
    # a small unauthenticated body is answered the same as before: the client sees the 401
    check_error(post(server.url, "/v1/completions", {"prompt": "x"}, key="nope"), 401)
    check_error(post(server.url, "/v1/completions", {"prompt": "x"}, key=None), 401)
    # and the same key passes
    assert post(server.url, "/v1/completions", {"prompt": [1], "max_tokens": 1}).status_code == 200
