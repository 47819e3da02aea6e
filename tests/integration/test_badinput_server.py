"""Hostile input to engram-server: malformed and truncated JSON, deep nesting,
invalid UTF-8, absurd numbers and sizes, broken HTTP on raw sockets, clients
that vanish mid-stream, bad flags and config files. Every case gets a clean
status (never a crash or a hang); the server must still answer afterwards and
exit 0 on SIGTERM with no sanitizer report (this file also runs against the
ASan/UBSan build)."""
import json
import os
import socket
import subprocess
import time

import pytest
import requests

from conftest import BUILD, MODELS
from serverutil import API_KEY, MODEL, Server, check_error, free_port, post

VALID = {"prompt": "Hello", "max_tokens": 3, "temperature": 0.5, "stop": ["x", "yz"], "seed": 1,
         "logit_bias": {"5": 1.5}, "stream": False}


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", API_KEY, "--max-body-bytes", "200000")
    yield s
    s.stop()


def alive(server):
    r = post(server.url, "/v1/completions", {"prompt": [1, 2], "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_truncated_bodies(server):
    body = json.dumps(VALID)
    for i in range(0, len(body), 3):
        r = post(server.url, "/v1/completions", body[:i])
        check_error(r, 400)
    chat = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 2})
    for i in range(0, len(chat), 4):
        check_error(post(server.url, "/v1/chat/completions", chat[:i]), 400)
    alive(server)


@pytest.mark.parametrize("body", [
    b"", b" ", b"null", b"0", b"{}", b"{{", b"}", b'{"prompt": "x",}', b'{"prompt" "x"}', b"\x00", b'{"a": 1}\x00',
    b"[" * 5000 + b"]" * 5000, b'{"prompt": ' + b"[" * 100000, b'{"prompt": "x", "max_tokens": 1e999}',
    b'{"prompt": "x", "temperature": NaN}', b'{"prompt": "x", "temperature": -0.0, "max_tokens": -1e308}',
    b'{"prompt": [1e20]}', b'{"prompt": [1.5]}', b'{"prompt": [[1, 2], [3]]}', b'{"prompt": [[]]}', b'{"prompt": []}',
    b'{"prompt": [null]}', b'{"prompt": {"a": 1}}', b'{"prompt": "x", "seed": 1e30}',
    b'{"prompt": "x", "stop": [' + b'"a",' * 20 + b'"b"]}',
    b'{"prompt": "x", "logit_bias": {' + b",".join(b'"%d": 1' % i for i in range(2000)) + b"}}",
    b'{"prompt": "x", "logit_bias": {"-1": 1}}', b'{"prompt": "x", "logit_bias": {"01x": 1}}',
    b'{"prompt": "x", "logit_bias": {"99999999999": 1}}', b'{"prompt": "x", "logit_bias": []}',
    b'{"prompt": "\xc0\x80"}', b'{"prompt": "\xf8\x88\x80\x80\x80"}', b'{"prompt": "\xe2\x82"}',
    b'{"prompt": "\xf4\x90\x80\x80"}', b'{"prompt": "x"}\xff', b'{"prompt": "\\udc00"}', b'{"prompt": "\\ud800\\u0041"}',
])
def test_bad_completion_bodies(server, body):
    r = post(server.url, "/v1/completions", body)
    assert r.status_code in (400, 404), (r.status_code, r.text)
    check_error(r, r.status_code)


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "x"}] * 5000},
    {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"messages": [{"role": "user", "content": [5]}]},
    {"messages": [{"role": "user", "content": "x", "name": 5}]},
    {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]},
    {"messages": [{"role": ["user"], "content": "x"}]},
    {"messages": [{"role": "user", "content": "x"}], "stream_options": "yes", "stream": True},
    {"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]},
    {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": 5}},
    {"messages": [{"role": "user", "content": "x" * 150000}]},
])
def test_bad_chat_bodies(server, body):
    r = post(server.url, "/v1/chat/completions", body)
    assert r.status_code in (400, 413), r.text
    check_error(r, r.status_code)


def test_long_but_legal_inputs(server):
    # content that tokenizes past the context: a clean 400 naming the prompt
    r = post(server.url, "/v1/chat/completions", {"messages": [{"role": "user", "content": "word " * 5000}]})
    check_error(r, 400, param="messages", code="context_length_exceeded")
    r = post(server.url, "/v1/completions", {"prompt": "\u00e9\U0001F600" * 2000})
    check_error(r, 400, code="context_length_exceeded")
    alive(server)


def test_tokenize_hostile(server):
    for body in (b"", b"[]", b'{"tokens": [1e99]}', b'{"tokens": [-1]}', b'{"tokens": [' + b"1," * 100 + b"x]}",
                 b'{"prompt": 5}', b'{"prompt": "x", "messages": []}', b'{"prompt": "x", "add_special_tokens": 1}'):
        for path in ("/tokenize", "/detokenize"):
            check_error(post(server.url, path, body), 400)
    assert post(server.url, "/detokenize", {"tokens": []}).json() == {"prompt": ""}


def raw_exchange(port, data, read=True):
    """Sends data, half-closes, reads what comes back (libmicrohttpd answers most
    broken requests and closes; binary junk it just holds until the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(data)
        if not read:
            return b""
        out = b""
        try:
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                out += chunk
        except (OSError, socket.timeout):
            pass
        return out


def test_broken_http(server):
    port = server.port
    for data in (b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x00\x01\x02\x03\r\n\r\n",
                 b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"",
                 b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                 b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                 b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100000 + b"\r\n\r\n"):
        raw_exchange(port, data)
    # a request cut off in the middle, the socket closed at once
    for _ in range(5):
        raw_exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{", read=False)
    # chunked upload over the body limit
    def gen():
        for _ in range(30):
            yield b"a" * 10000
    r = requests.post(server.url + "/v1/completions", data=gen(), headers={"Authorization": f"Bearer {API_KEY}"})
    check_error(r, 413)
    # an endless chunked upload is cut off (413 or a closed connection), the server lives on
    def endless():
        while True:
            yield b"b" * 65536
    try:
        r = requests.post(server.url + "/v1/completions", data=endless(), timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"})
        check_error(r, 413)
    except requests.ConnectionError:
        pass
    check_error(requests.request("FOO", server.url + "/health"), 405)
    assert requests.get(server.url + "/health?probe=1").status_code == 200
    alive(server)


def test_vanishing_stream_clients(server):
    body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 200, "stream": True, "ignore_eos": True}).encode()
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() +
           b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    for i in range(8):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(req)
            if i % 2:
                s.recv(100)  # read the start, then vanish
    # a stream of two requests on one keep-alive connection
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(req.replace(b"200", b"2") + req.replace(b"200", b"3"))
        s.recv(100)
    alive(server)
    deadline = time.time() + 10
    while "engram_num_requests_running 0" not in requests.get(server.url + "/metrics").text:
        assert time.time() < deadline
        time.sleep(0.05)
    assert "engram_num_requests_waiting 0" in requests.get(server.url + "/metrics").text


def run_server(*args, env=None, timeout=60):
    e = dict(os.environ, OMP_NUM_THREADS="1")
    for k in list(e):
        if k.startswith("ENGRAM_") and k not in ("ENGRAM_BUILD_DIR", "ENGRAM_SOURCE_DIR"):
            del e[k]
    e.update(env or {})
    p = subprocess.run([str(BUILD / "engram-server"), *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=e)
    assert p.returncode >= 0 and "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p


def test_bad_flags_and_config(tmp_path):
    cases = [
        ((), 2, "--model"),
        (("--model",), 2, "needs a value"),
        (("--model", MODEL, "--port", "0"), 2, "--port"),
        (("--model", MODEL, "--port", "70000"), 2, "--port"),
        (("--model", MODEL, "--port", "8x"), 2, "--port"),
        (("--model", MODEL, "--max-body-bytes", "-1"), 2, "--max-body-bytes"),
        (("--model", MODEL, "--bogus", "1"), 2, "unknown option"),
        (("--model", MODEL, "--device", "cuda"), 2, "cuda"),
        (("--model", tmp_path / "none"), 1, "config.json"),
        (("--model", MODELS / "llama3"), 1, "tokenizer"),
        (("--model", MODEL, "--host", "no.such.host.invalid"), 1, "host"),
        (("--model", MODEL, "--config", tmp_path / "missing.json"), 2, "missing.json"),
    ]
    for f, content in (("bad.json", "{"), ("list.json", "[1]"), ("key.json", '{"prot": 1}'),
                       ("type.json", '{"port": [1]}'), ("range.json", '{"port": 123456}')):
        (tmp_path / f).write_text(content)
        cases.append((("--model", MODEL, "--config", tmp_path / f), 2, ""))
    for args, status, needle in cases:
        # The server listens before it loads: give the cases that get that far a
        # free port, so a busy 8080 cannot stand in for the error under test.
        if "--port" not in args and "--config" not in args and len(args) >= 2:
            args = (*args, "--port", str(free_port()))
        p = run_server(*args)
        assert p.returncode == status, (args, p.returncode, p.stderr)
        assert needle in p.stderr, (args, p.stderr)
    p = run_server(env={"ENGRAM_MODEL": str(MODEL), "ENGRAM_PORT": "nope"})
    assert p.returncode == 2 and "--port" in p.stderr


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        p = run_server("--model", MODEL, "--port", s.getsockname()[1])
        assert p.returncode == 1 and "listen" in p.stderr, p.stderr


def test_default_config_file():
    """config/engram-server.json parses; flags override its model and port."""
    from conftest import SOURCE
    s = Server("--config", SOURCE / "config" / "engram-server.json")
    assert requests.get(s.url + "/health").json() == {"status": "ok"}
    s.stop()


def test_config_precedence(tmp_path):
    """file < env < flags, for a string and an integer option."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"served_model_name": "from-file", "max_body_bytes": 100, "model": str(MODEL)}))
    s = Server("--config", cfg, model=MODEL)  # --model flag and file agree
    assert requests.get(s.url + "/v1/models").json()["data"][0]["id"] == "from-file"
    check_error(requests.post(s.url + "/v1/completions", data="x" * 101), 413)
    s.stop()
    s = Server(env={"ENGRAM_CONFIG": str(cfg), "ENGRAM_SERVED_MODEL_NAME": "from-env"})
    assert requests.get(s.url + "/v1/models").json()["data"][0]["id"] == "from-env"
    s.stop()
    s = Server("--served-model-name", "from-flag", "--config", cfg,
               env={"ENGRAM_SERVED_MODEL_NAME": "from-env", "ENGRAM_MAX_BODY_BYTES": "1000"})
    assert requests.get(s.url + "/v1/models").json()["data"][0]["id"] == "from-flag"
    assert requests.post(s.url + "/v1/completions", data="x" * 500).status_code == 400
    s.stop()


def test_idle_and_junk_connections_time_out():
    s = Server("--connection-timeout", "1")
    socks = []
    for data in (b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{", b"\x00\x01\x02\r\n\r\n"):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        c.sendall(data)
        socks.append(c)
    t0 = time.time()
    for c in socks:
        try:
            while c.recv(65536):
                pass
        except ConnectionResetError:
            pass
        c.close()
    assert time.time() - t0 < 8  # closed by the server, not by our 10 s timeout
    assert requests.get(s.url + "/health").status_code == 200
    s.stop()
