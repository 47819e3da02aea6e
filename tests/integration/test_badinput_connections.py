"""Connection management (issue 23, the high finding): a flood of idle
sockets must not stop service, caps in all and per client address close the
longest idle connections first and refuse a newcomer (503, counted) only when
none is idle, and the deadlines for heads, bodies and kept-alive idleness are
absolute: a trickle of bytes cannot extend them. Probes use 127.0.0.2 as
their source address where the per-address cap of 127.0.0.1 is under test."""
import socket
import subprocess
import time

import pytest

from conftest import BUILD
from serverutil import MODEL, Server, free_port, metric


def connect(port, src="127.0.0.1", timeout=5):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def get(port, path, src="127.0.0.1", timeout=1.0):
    """GET path on a new connection; the status and body, within timeout seconds."""
    with connect(port, src, timeout) as s:
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def metrics(port, src="127.0.0.2"):
    status, text = get(port, "/metrics", src, timeout=5)
    assert status == 200, status
    return text


def closed_by_server(s, wait):
    """Whether the server has closed s (EOF or reset) within wait seconds."""
    s.settimeout(wait)
    try:
        return s.recv(65536) == b"" or True  # data then EOF: the reply to a refusal
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_flood_then_health():
    """300 idle sockets (half fresh, half kept alive after a request) under the
    default caps: /health still answers within a second."""
    s = Server()
    socks = []
    try:
        for i in range(300):
            c = connect(s.port)
            if i % 2:
                c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                assert c.recv(65536).startswith(b"HTTP/1.1 200 ")
            socks.append(c)
        t0 = time.time()
        assert get(s.port, "/health")[0] == 200
        assert time.time() - t0 < 1.0
        assert metric(metrics(s.port), "engram_http_connections") >= 300
    finally:
        for c in socks:
            c.close()
        s.stop()


def test_caps_close_the_longest_idle_first():
    s = Server("--max-connections", "50", "--max-connections-per-ip", "40")
    socks = []
    try:
        for _ in range(120):
            socks.append(connect(s.port))
        time.sleep(0.2)
        # the oldest were closed to make room; the newest 40 (the address's cap) are open
        assert all(closed_by_server(c, 2) for c in socks[:60])
        assert not any(closed_by_server(c, 0.05) for c in socks[-30:])
        t0 = time.time()
        assert get(s.port, "/health")[0] == 200  # from the flooding address: it takes an idle one's place
        assert get(s.port, "/health", src="127.0.0.2")[0] == 200
        assert time.time() - t0 < 1.0
        text = metrics(s.port)
        assert metric(text, "engram_http_connections_closed_total", {"reason": "evicted"}) >= 80
        assert metric(text, "engram_http_connections_refused_total", {"reason": "max_connections"}) == 0
    finally:
        for c in socks:
            c.close()
        s.stop()


def busy(port, src):
    """A connection inside a request: its head is in (the "100 Continue"
    proves libmicrohttpd has it), its body never comes."""
    c = connect(port, src)
    c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n")
    r = c.recv(65536)
    assert r.startswith(b"HTTP/1.1 100 Continue"), r
    return c


def refused(port, src):
    """The reply to a newcomer from src: a 503 at once, or None when it was let in."""
    with connect(port, src) as c:
        c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = c.recv(65536)
    return r if r.startswith(b"HTTP/1.1 503 ") else None


def retry(fn, seconds=10):
    """fn() once it no longer fails because the server refused the connection."""
    deadline = time.time() + seconds
    while True:
        try:
            return fn()
        except (AssertionError, ConnectionResetError, BrokenPipeError, IndexError):
            assert time.time() < deadline
            time.sleep(0.05)


def test_refused_only_when_none_is_idle():
    """Connections inside a request are not idle: over a cap a newcomer gets a
    503 with Retry-After, counted by reason."""
    s = Server("--max-connections", "6", "--max-connections-per-ip", "3")
    held = []
    try:
        held += [busy(s.port, "127.0.0.1") for _ in range(3)]
        r = refused(s.port, "127.0.0.1")  # the address's cap, none of its own idle
        assert r and b"Retry-After: 1" in r and b"max-connections-per-ip" in r, r
        held += [busy(s.port, "127.0.0.2") for _ in range(3)]
        r = refused(s.port, "127.0.0.3")  # the cap in all, none idle
        assert r and b"(--max-connections)" in r, r
        held.pop().close()  # a place frees once libmicrohttpd has closed it: until then newcomers are refused
        held.append(retry(lambda: busy(s.port, "127.0.0.3")))
        held.pop().close()
        text = retry(lambda: metrics(s.port, src="127.0.0.4"))
        assert metric(text, "engram_http_connections_refused_total", {"reason": "max_connections_per_ip"}) == 1
        assert metric(text, "engram_http_connections_refused_total", {"reason": "max_connections"}) >= 1
    finally:
        for c in held:
            c.close()
        s.stop()


def trickle(sock, data, every, limit):
    """Sends data a byte at a time; the seconds until the server closed the
    connection (None if it never did within limit)."""
    t0 = time.time()
    for b in data:
        try:
            sock.sendall(bytes([b]))
        except (BrokenPipeError, ConnectionResetError):
            return time.time() - t0
        if closed_by_server(sock, every):
            return time.time() - t0
        if time.time() - t0 > limit:
            return None
    return None


def test_a_trickle_cannot_extend_the_deadlines():
    s = Server("--request-timeout", "2", "--connection-timeout", "3")
    try:
        # a head, a byte every 0.25 s: cut at --request-timeout (min with --connection-timeout) from the accept
        c = connect(s.port)
        t = trickle(c, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, 0.25, 8)
        c.close()
        assert t is not None and 1.5 < t < 3.5, t
        # a body after a whole head: cut at --request-timeout
        c = connect(s.port)
        c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        t = trickle(c, b"x" * 1000, 0.25, 8)
        c.close()
        assert t is not None and 1.5 < t < 3.5, t
        # a kept-alive connection's next head: cut at --connection-timeout from the last response
        c = connect(s.port)
        c.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.recv(65536).startswith(b"HTTP/1.1 200 ")
        t = trickle(c, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, 0.25, 8)
        c.close()
        assert t is not None and 2.5 < t < 4.5, t
        text = metrics(s.port)
        assert metric(text, "engram_http_connections_closed_total", {"reason": "request_timeout"}) >= 2
        assert metric(text, "engram_http_connections_closed_total", {"reason": "idle_timeout"}) >= 1
        assert get(s.port, "/health")[0] == 200
    finally:
        s.stop()


def test_cap_above_the_descriptor_limit_is_an_error():
    p = subprocess.run([str(BUILD / "engram-server"), "--model", str(MODEL), "--port", str(free_port()),
                        "--max-connections", "1000000"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--max-connections" in p.stderr and "ulimit" in p.stderr, p.stderr
