"""scripts/serve, as a user runs it: it sets up, builds, and serves the default
model; a chat completion through the official OpenAI SDK answers in the
model's domain (dictionary definitions)."""
import os
import signal
import socket
import subprocess
import time

import openai
import requests

from conftest import SOURCE


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_script_serves_the_default_model():
    port = free_port()
    p = subprocess.Popen([str(SOURCE / "scripts" / "serve"), "--port", str(port)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300  # setup and build are no-ops here; the bound only stops a hang
        while True:
            try:
                if requests.get(base + "/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert p.poll() is None, p.stdout.read()
            assert time.time() < deadline, "scripts/serve did not become healthy"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused")
        r = client.chat.completions.create(
            model="engram-lexicon", temperature=0, max_tokens=40,
            messages=[{"role": "user", "content": 'What does "river" mean?'}])
        text = r.choices[0].message.content
        assert "river" in text.lower()
        words = [w for w in text.split() if w.isalpha()]
        assert len(words) >= 5, text
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
