"""Strict HTTP framing (issue 23): the classic request-smuggling set over raw
sockets. A request whose body length is ambiguous (two Content-Lengths, a
Content-Length with a Transfer-Encoding, an unknown transfer coding, a
negative or out-of-range length, an obfuscated header) gets one 400 and the
connection is closed: the bytes after it are never read as a next request,
and no reply carries two status lines. Valid framing keeps working, chunked
uploads and kept-alive connections included."""
import socket

import pytest
import requests

from serverutil import API_KEY, Server, check_error

BODY = b'{"prompt": [1, 2], "max_tokens": 1}'
SMUGGLED = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # would get a 200 if the framing were read another way


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", API_KEY)
    yield s
    s.stop()


def exchange(port, data, timeout=5):
    """Sends data and reads until the server closes (a reset after the reply is fine)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def request(headers, body=BODY, version=b"HTTP/1.1"):
    return (b"POST /v1/completions " + version + b"\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() +
            b"\r\nContent-Type: application/json\r\n" + headers + b"\r\n" + body)


SMUGGLING = {
    "CL.CL differ": b"Content-Length: %d\r\nContent-Length: 5\r\n" % len(BODY),
    "CL.CL same": b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(BODY), len(BODY)),
    "CL list": b"Content-Length: %d, %d\r\n" % (len(BODY), len(BODY)),
    "CL.TE": b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(BODY),
    "TE.CL": b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % len(BODY),
    "TE gzip": b"Transfer-Encoding: gzip\r\n",
    "TE identity": b"Transfer-Encoding: identity\r\n",
    "TE chunked,gzip": b"Transfer-Encoding: chunked, gzip\r\n",
    "TE xchunked": b"Transfer-Encoding: xchunked\r\n",
    "TE.TE": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
    "TE space before colon": b"Transfer-Encoding : chunked\r\nContent-Length: %d\r\n" % len(BODY),
    "TE folded": b"Transfer-Encoding:\r\n chunked\r\nContent-Length: %d\r\n" % len(BODY),
    "TE vertical tab": b"Transfer-Encoding:\x0bchunked\r\n",
    "CL negative": b"Content-Length: -5\r\n",
    "CL plus": b"Content-Length: +%d\r\n" % len(BODY),
    "CL 10^20": b"Content-Length: 100000000000000000000\r\n",
    "CL 2^63": b"Content-Length: 9223372036854775808\r\n",
    "CL hex": b"Content-Length: 0x10\r\n",
    "CL empty": b"Content-Length: \r\n",
    "CL space inside": b"Content-Length: 1 0\r\n",
    "CL trailing space": b"Content-Length: %d \r\n" % len(BODY),
    "TE trailing space": b"Transfer-Encoding: chunked \r\n",
    "CR in a value": b"Content-Length: %d\rX-A: b\r\n" % len(BODY),
    "NUL in a value": b"X-A: a\x00b\r\nContent-Length: %d\r\n" % len(BODY),
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_smuggling_set_refused(server, name):
    reply = exchange(server.port, request(SMUGGLING[name]) + SMUGGLED)
    assert reply.startswith(b"HTTP/1.1 400 "), (name, reply[:300])
    assert reply.count(b"HTTP/1.1 ") == 1, (name, reply)  # one status line, no reply to the smuggled request
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Connection: close" in head, (name, head)
    assert body.startswith(b'{"error":'), (name, body)


def test_transfer_encoding_in_http10_refused(server):
    reply = exchange(server.port, request(b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"HTTP/1.0") + SMUGGLED)
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1 ") == 1, reply


def test_oversized_head_and_other_versions(server):
    reply = exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 ") and reply.count(b"HTTP/1.1 ") == 1, reply[:300]
    reply = exchange(server.port, b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 505 "), reply[:300]
    reply = exchange(server.port, b"GET /health\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]


def test_second_request_on_a_kept_alive_connection_is_checked(server):
    """The door screens a connection's first head; later ones are checked from
    libmicrohttpd's parsed headers: the same one 400, and the connection closes."""
    good = request(b"Content-Length: %d\r\n" % len(BODY))
    bad = request(b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(BODY))
    reply = exchange(server.port, good + bad + SMUGGLED)
    first, sep, rest = reply.partition(b"HTTP/1.1 400 ")
    assert first.startswith(b"HTTP/1.1 200 ") and sep, reply[:600]
    assert rest.count(b"HTTP/1.1 ") == 0, reply


def test_valid_framing_still_served(server):
    # whitespace before a value is not obfuscation (after one, libmicrohttpd reads no length: refused above)
    reply = exchange(server.port, request(b"Content-Length:\t %d\r\nConnection: close\r\n" % len(BODY)))
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
    # a chunked upload, and a chunked upload by hand with the coding's case changed
    r = requests.post(server.url + "/v1/completions", data=iter([BODY[:10], BODY[10:]]),
                      headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    reply = exchange(server.port, request(b"Transfer-Encoding: Chunked\r\nConnection: close\r\n", chunked))
    assert reply.startswith(b"HTTP/1.1 200 "), reply[:300]
    # two requests on one connection, pipelined
    one = request(b"Content-Length: %d\r\n" % len(BODY))
    reply = exchange(server.port, one + one.replace(b"Content-Type", b"Connection: close\r\nContent-Type"))
    assert reply.count(b"HTTP/1.1 200 ") == 2, reply[:600]
    # empty lines before a request line are ignored (RFC 9112 2.2)
    assert exchange(server.port, b"\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200 ")
    check_error(requests.post(server.url + "/v1/completions", data=b"{}",
                              headers={"Authorization": f"Bearer {API_KEY}"}), 400)
