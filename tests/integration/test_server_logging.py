"""The server's own lines (issue 23's friction list): --version prints the
version; every diagnostic line is "<UTC time> engram-server: ...", the lines
of libmicrohttpd included, and clients that leave mid-stream (normal, counted
as aborted requests) cost no line at all."""
import json
import re
import socket
import subprocess
import time

import requests

from conftest import BUILD
from serverutil import Server, metric

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z engram-server: \S")


def test_version():
    p = subprocess.run([str(BUILD / "engram-server"), "--version"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert re.match(r"^engram-server \d+\.\d+\.\d+ \(libmicrohttpd \d+\.\d+\.\d+, cJSON \d+\.\d+\.\d+\)\n$", p.stdout), p.stdout
    p = subprocess.run([str(BUILD / "engram-server"), "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "--version" in p.stdout


def test_log_lines_are_stamped_and_disconnects_are_quiet():
    s = Server()
    body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 200, "stream": True, "ignore_eos": True}).encode()
    req = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    for i in range(20):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        c.sendall(req)
        c.recv(100)
        if i % 2:  # a reset rather than a close
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
    deadline = time.time() + 10
    while metric(requests.get(s.url + "/metrics").text, "engram_request_success_total",
                 {"finished_reason": "abort"}) != 20:
        assert time.time() < deadline
        time.sleep(0.05)
    out = s.stop()
    lines = out.splitlines()
    assert any("serving" in ln for ln in lines)
    for ln in lines:
        assert LINE.match(ln), ln
    assert not [ln for ln in lines if "libmicrohttpd" in ln], out
