"""Helpers for the server tests: start build/engram-server on a free port,
wait for /health, stop it with SIGTERM and check it exited cleanly (status 0,
no sanitizer report), read SSE streams raw, make a slow checkpoint."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import requests

from conftest import BUILD, MODELS, SOURCE

MODEL = MODELS / "qwen3_engram"
API_KEY = "sk-test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args, model=MODEL, env=None):
        exe = BUILD / "engram-server"
        assert exe.exists(), f"{exe} not built"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="engram-server-", suffix=".log", delete=False)
        e = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
        e.update(env or {})
        model_args = ["--model", str(model)] if model is not None else []  # None: args name the model
        self.proc = subprocess.Popen([str(exe), *model_args, "--port", str(self.port), "--threads", "1",
                                      *map(str, args)], stdout=self.log, stderr=subprocess.STDOUT, env=e)
        deadline = time.time() + 60
        while True:
            assert self.proc.poll() is None, f"engram-server exited: {self.output()}"
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline, f"engram-server did not become healthy: {self.output()}"
            time.sleep(0.05)

    def output(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def stop(self, check=True):
        """SIGTERM, wait, and (check) demand exit status 0 and a clean log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"engram-server did not stop on SIGTERM: {self.output()[-4000:]}")
        out = self.output()
        os.unlink(self.log.name)
        if check:
            assert "Sanitizer" not in out and "runtime error" not in out, out[-6000:]
            assert self.proc.returncode == 0, f"exit status {self.proc.returncode}: {out[-4000:]}"
        return out


def sse_events(resp):
    """Reads a streaming requests.Response as raw SSE: a list of the payloads
    after 'data: ', checking the framing byte by byte."""
    raw = b"".join(resp.iter_content(chunk_size=None))
    assert raw.endswith(b"\n\n"), raw[-200:]
    blocks = raw[:-2].split(b"\n\n")
    out = []
    for b in blocks:
        assert b.startswith(b"data: "), b[:200]
        assert b"\n" not in b, b[:200]
        out.append(b[len(b"data: "):].decode())
    return out


def make_slow_model(dirpath):
    """A random qwen3 checkpoint big enough that decoding takes milliseconds
    per token (cancellation is observable), with the fixture's tokenizer."""
    subprocess.run([sys.executable, str(SOURCE / "tools" / "gen_checkpoint.py"), str(dirpath), "--arch", "qwen3",
                    "--hidden", "512", "--layers", "4", "--heads", "8", "--kv-heads", "4", "--ffn", "2048",
                    "--vocab", "2048", "--max-pos", "2048", "--dtype", "bf16"], check=True, capture_output=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(MODEL / f, dirpath / f)
    return dirpath


def make_qwen3_model(dirpath):
    """A tiny random checkpoint with Qwen3's real tokenizer and chat template
    (tests/fixtures/tokenizers/qwen3): fast, with Qwen3's vocabulary and its
    EOS (<|im_end|>, 151645, as Qwen3's config.json)."""
    import lzma
    src = SOURCE / "tests" / "fixtures" / "tokenizers" / "qwen3"
    tok = dirpath.parent / (dirpath.name + "-tok")
    tok.mkdir(parents=True)
    (tok / "tokenizer.json").write_bytes(lzma.decompress((src / "tokenizer.json.xz").read_bytes()))
    (tok / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    subprocess.run([sys.executable, str(SOURCE / "tools" / "gen_checkpoint.py"), str(dirpath), "--hidden", "32",
                    "--layers", "2", "--heads", "2", "--kv-heads", "1", "--ffn", "64", "--vocab", "151669", "--tie", "--eos", "151645",
                    "--tokenizer", str(tok)], check=True, capture_output=True)
    return dirpath


def write_tokenizer(d):
    """A byte-level BPE whose 512 ids decode to distinct printable strings, so the
    server (which needs a tokenizer) can run a fixture of 512 ids without one and
    its token texts map back to ids: returns {text: id}."""
    chars = [chr(c) for c in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars)}
    merges = []
    for a in chars:
        for b in chars:
            if len(vocab) < 512:
                vocab[a + b] = len(vocab)
                merges.append([a, b])
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": bl, "post_processor": None, "decoder": bl,
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": vocab, "merges": merges}}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    return {s: i for s, i in vocab.items()}


def metric(text, name, labels=None):
    """The value of one sample of the Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        key, _, val = line.rpartition(" ")
        if labels is None and key == name:
            return float(val)
        if labels is not None and key == name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}":
            return float(val)
    return None


def post(url, path, body, key=API_KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        headers["Content-Type"] = "application/json"
    return requests.post(url + path, data=body, headers=headers, timeout=60, **kw)


def check_error(r, status, param=..., code=...):
    """r is an OpenAI error envelope with this status (and param/code when given)."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    e = body["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert isinstance(e["message"], str) and e["message"]
    assert isinstance(e["type"], str) and e["type"]
    if param is not ...:
        assert e["param"] == param, e
    if code is not ...:
        assert e["code"] == code, e
    return e
