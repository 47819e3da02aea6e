"""Values that used to pass silently (issue 23, the low findings): an
Authorization header with a NUL, a seed of 2^63, duplicate JSON keys, config
values of the wrong JSON type, empty ENGRAM_* variables, an api_key holding
\\u0000, an eos_token_id outside the vocabulary, and sampling values above an
open bound that round to it as a float (repetition_penalty 1e-300). Each is now a clean
refusal naming what is wrong."""
import json
import os
import shutil
import socket
import subprocess

import pytest
import requests

from conftest import BUILD, run_bin
from serverutil import API_KEY, MODEL, Server, check_error, free_port, post


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", API_KEY)
    yield s
    s.stop()


def exchange(port, data):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def test_authorization_with_nul_refused(server):
    body = b'{"prompt": [1], "max_tokens": 1}'
    for auth in (b"Bearer " + API_KEY.encode() + b"\x00junk", b"Bearer " + API_KEY.encode()[:4] + b"\x00" +
                 API_KEY.encode()[4:], b"Bearer \x00" + API_KEY.encode()):
        reply = exchange(server.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: " + auth +
                         b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]
    ok = exchange(server.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode() +
                  b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    assert ok.startswith(b"HTTP/1.1 200 "), ok[:300]


def test_seed_bounds_exact(server):
    base = {"prompt": [1, 2], "max_tokens": 1}
    for seed in (2 ** 63, 2 ** 63 + 4096, 2 ** 64, -(2 ** 63) - 4096, 1e30):
        check_error(post(server.url, "/v1/completions", json.dumps({**base, "seed": seed})), 400, param="seed")
    # 2^63 - 1 reads as the double 2^63: refused, saying why
    e = check_error(post(server.url, "/v1/completions", '{"prompt": [1, 2], "max_tokens": 1, "seed": 9223372036854775807}'),
                    400, param="seed")
    assert "2^63" in e["message"]
    for seed in (2 ** 63 - 1024, -(2 ** 63), 0, -1):  # the largest double below 2^63, the smallest int64
        r = post(server.url, "/v1/completions", json.dumps({**base, "seed": seed}))
        assert r.status_code == 200, (seed, r.text)


@pytest.mark.parametrize("field", ["repetition_penalty", "top_p"])
def test_open_bound_as_float(server, field):
    """Above the open bound 0 as a double, but 0.0 as the engine's float: refused, saying so."""
    base = {"prompt": [1, 2], "max_tokens": 1}
    for v in (1e-300, 1e-46):
        e = check_error(post(server.url, "/v1/completions", {**base, field: v}), 400, param=field)
        assert field in e["message"] and "32-bit float" in e["message"], e
    r = post(server.url, "/v1/completions", {**base, field: 1e-45})  # the smallest float above 0 (a subnormal)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body,param", [
    ('{"prompt": "a", "prompt": [1], "max_tokens": 1}', "prompt"),
    ('{"prompt": [1], "max_tokens": 1, "max_tokens": 2}', "max_tokens"),
    ('{"prompt": [1], "logit_bias": {"5": 1, "5": -100}}', "5"),
    ('{"prompt": [1], "stream_options": {"include_usage": true, "include_usage": false}, "stream": true}',
     "include_usage"),
])
def test_duplicate_keys_refused(server, body, param):
    e = check_error(post(server.url, "/v1/completions", body), 400, param=param)
    assert "Duplicate key" in e["message"]


def test_duplicate_keys_in_chat_and_tokenize(server):
    chat = '{"messages": [{"role": "user", "content": "hi", "role": "system"}], "max_tokens": 1}'
    check_error(post(server.url, "/v1/chat/completions", chat), 400, param="role")
    check_error(post(server.url, "/tokenize", '{"prompt": "a", "prompt": "b"}'), 400, param="prompt")
    check_error(post(server.url, "/detokenize", '{"tokens": [1], "tokens": [2]}'), 400, param="tokens")
    # a key quoted in the message is cut on a character boundary
    k = "é" * 100
    e = check_error(post(server.url, "/v1/completions", '{"prompt": [1], "%s": 1, "%s": 2}' % (k, k)), 400)
    assert e["param"] == "é" * 30
    # the same key in different objects is fine
    ok = '{"prompt": [1], "max_tokens": 1, "stream_options": null, "logit_bias": {"max_tokens": 1}}'
    check_error(post(server.url, "/v1/completions", ok), 400, param="logit_bias")  # not a token id: another error
    r = post(server.url, "/v1/chat/completions",
             '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "max_tokens": 1}')
    assert r.status_code == 200, r.text


def run_server(*args, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_") or k in ("ENGRAM_BUILD_DIR",
                                                                                       "ENGRAM_SOURCE_DIR")}
    e["OMP_NUM_THREADS"] = "1"
    e.update(env or {})
    p = subprocess.run([str(BUILD / "engram-server"), *map(str, args)], capture_output=True, text=True, timeout=60,
                       env=e)
    assert p.returncode >= 0 and "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p


@pytest.mark.parametrize("content,needle", [
    ('{"port": "18208"}', '"port" must be a number'),
    ('{"threads": "2"}', '"threads" must be a number'),
    ('{"max_body_bytes": true}', '"max_body_bytes" must be a number'),
    ('{"gpu_memory_utilization": "0.5"}', '"gpu_memory_utilization" must be a number'),
    ('{"api_key": 12345}', '"api_key" must be a string'),
    ('{"host": null}', '"host" must be a string'),
    ('{"api_key": "ab\\u0000cd"}', "\\u0000"),
    ('{"served_model_name": "\\u0000"}', "\\u0000"),
])
def test_config_values_of_the_wrong_type(tmp_path, content, needle):
    cfg = tmp_path / "c.json"
    cfg.write_text(content)
    p = run_server("--model", MODEL, "--port", free_port(), "--config", cfg)
    assert p.returncode == 2 and needle in p.stderr, p.stderr


def test_config_backslash_before_u0000_is_text(tmp_path):
    """An escaped backslash followed by u0000 is six characters of text, no NUL."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"api_key": "k\\u0000"}))
    assert "\\\\u0000" in cfg.read_text()
    s = Server("--config", cfg)
    try:
        assert post(s.url, "/v1/completions", {"prompt": [1], "max_tokens": 1}, key="k\\u0000").status_code == 200
        check_error(post(s.url, "/v1/completions", {"prompt": [1], "max_tokens": 1}, key="k"), 401)
    finally:
        s.stop()


@pytest.mark.parametrize("name", ["ENGRAM_API_KEY", "ENGRAM_PORT", "ENGRAM_HOST", "ENGRAM_MAX_BODY_BYTES",
                                  "ENGRAM_CONFIG"])
def test_empty_environment_variables_are_errors(name):
    p = run_server("--model", MODEL, "--port", free_port(), env={name: ""})
    assert p.returncode == 2 and name in p.stderr, p.stderr


def test_empty_api_key_flag_is_an_error():
    p = run_server("--model", MODEL, "--port", free_port(), "--api-key", "")
    assert p.returncode == 2 and "--api-key" in p.stderr, p.stderr
    p = run_server("--model", MODEL, "--port", free_port(), "--api-key=")
    assert p.returncode == 2 and "--api-key" in p.stderr, p.stderr


@pytest.mark.parametrize("eos,needle", [
    (1647, "eos_token_id 1647 is outside the vocabulary (vocab_size 1647)"),
    ([2, 99999], "eos_token_id 99999 is outside the vocabulary"),
    (-1, "eos_token_id -1 is outside the vocabulary"),
    (2.5, "integer token ids"),
    ("2", "a token id or a list"),
    (list(range(9)), "more than the 8 supported"),
])
def test_eos_outside_the_vocabulary_refused_at_load(tmp_path, eos, needle):
    d = tmp_path / "m"
    shutil.copytree(MODEL, d)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["vocab_size"] == 1647
    cfg["eos_token_id"] = eos
    (d / "config.json").write_text(json.dumps(cfg))
    p = run_server("--model", d, "--port", free_port())
    assert p.returncode == 1 and needle in p.stderr and "config.json" in p.stderr, p.stderr
    p = run_bin("engram-run", "--model", d, "--prompt-ids", "1", "--max-tokens", "1", check=False)
    assert p.returncode == 1 and needle in p.stderr, p.stderr


def test_eos_inside_the_vocabulary_loads(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(MODEL, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["eos_token_id"] = [1646, 0]
    (d / "config.json").write_text(json.dumps(cfg))
    run_bin("engram-run", "--model", d, "--prompt-ids", "1", "--max-tokens", "1")
    s = Server(model=d)
    try:
        assert requests.get(s.url + "/health").status_code == 200
    finally:
        s.stop()
