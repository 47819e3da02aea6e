"""Gate introspection: the opt-in "engram_gates" field of /v1/completions and
the static page at GET / that shades each token by its gate, rendered in
headless Chromium (Debian's chromium). The gates the API returns must be the
ones engram-run --print-gates computes for the same tokens (whose own gates
are checked against DeepSeek's reference in test_golden_engram.py), and the
page must shade every token with exactly its mean gate."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse

import pytest
import requests

from conftest import BUILD, SOURCE, run_bin

MODEL = SOURCE / "models" / "engram-lexicon"
TEXT = "Only Alexander the Great could tame the horse Bucephalus."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    p = subprocess.Popen([str(BUILD / "engram-server"), "--model", str(MODEL), "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(base + "/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert p.poll() is None, p.stdout.read()
        time.sleep(0.1)
    yield base
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def completion(base, **kw):
    body = dict(model="engram-lexicon", prompt=TEXT, max_tokens=8, temperature=0, engram_gates=True)
    body.update(kw)
    return requests.post(base + "/v1/completions", json=body, timeout=120)


def test_api_returns_gates_like_engram_run(server):
    r = completion(server)
    assert r.status_code == 200, r.text
    eg = r.json()["engram_gates"]
    assert eg["layers"] == [1, 3]
    n = len(eg["token_ids"])
    assert len(eg["tokens"]) == n and len(eg["gates"]) == n and eg["n_prompt"] < n
    p = run_bin("engram-run", "--model", MODEL, "--prompt", TEXT, "--temperature", "0",
                "--max-tokens", "8", "--print-gates")
    ref = json.loads(p.stdout.splitlines()[-1])
    assert ref["tokens"] == eg["token_ids"]
    for a, b in zip(ref["gates"], eg["gates"]):
        assert a == pytest.approx(b, abs=1e-6)
    assert all(0.0 < g < 1.0 for row in eg["gates"] for g in row)


def test_gates_are_opt_in_and_checked(server):
    r = completion(server, engram_gates=False)
    assert r.status_code == 200 and "engram_gates" not in r.json()
    r = completion(server, engram_gates="yes")
    assert r.status_code == 400 and r.json()["error"]["param"] == "engram_gates"
    r = completion(server, stream=True)
    assert r.status_code == 400 and r.json()["error"]["param"] == "engram_gates"


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.fail("headless Chromium is missing: scripts/setup installs Debian's chromium")


def test_page_shades_each_token_by_its_gate(server, tmp_path):
    page = requests.get(server + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    api = completion(server).json()["engram_gates"]
    url = server + "/?" + urllib.parse.urlencode({"text": TEXT, "max": 8, "go": 1})
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=60000"]
    dom = subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    assert 'data-state="done"' in dom, dom[-3000:]
    spans = re.findall(r'<span class="tok[^"]*"[^>]*>', dom)
    assert len(spans) == len(api["tokens"])
    for i, tag in enumerate(spans):
        mean = sum(api["gates"][i]) / len(api["gates"][i])
        gate = float(re.search(r'data-gate="([0-9.]+)"', tag).group(1))
        alpha = float(re.search(r'rgba\(230, 120, 0, ([0-9.]+)\)', tag).group(1))
        assert gate == pytest.approx(mean, abs=1e-5)
        assert alpha == pytest.approx(mean, abs=0.005)  # the shade is the gate (8-bit alpha)
        assert ('class="tok gen"' in tag) == (i >= api["n_prompt"])
    shot = tmp_path / "page.png"
    subprocess.run(args + [f"--screenshot={shot}", "--window-size=1000,700", url],
                   capture_output=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 10000
    if os.environ.get("ENGRAM_UPDATE_SCREENSHOT"):
        shutil.copy(shot, SOURCE / "docs" / "engram-gates.png")
