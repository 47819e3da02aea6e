"""The first request's latency after a server start, with and without
--warmup: starts build/engram-server ROUNDS times per setting (interleaved:
1, 0, 0, 1, 1, 0, ...), polls /health every 5 ms, sends one completion as soon as
it answers 200, and prints per start: seconds from launch to ready, the
warm-up's own seconds (its log line), and the request's TTFT and e2e as the
server measured them (/metrics: engram_time_to_first_token_seconds_sum,
engram_e2e_request_latency_seconds_sum) and e2e as the client saw it;
then the same for a second request of the same shape (other ids, so no
prefix-cache hit): what the first would cost on a warm server.

  .venv/bin/python bench/first_request.py [--rounds 3] [--prompt 128] [--max-tokens 16] [--exe PATH] -- SERVER_ARGS...
  e.g. -- --synthetic llama3-1b+layers:4 --threads 2
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text, name):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def one(exe, warm, args, prompt, max_tokens):
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="first-request-", suffix=".log", delete=False)
    t0 = time.time()
    p = subprocess.Popen([exe, "--port", str(port), "--warmup", str(warm), *args],
                         stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert p.poll() is None, Path(log.name).read_text()
            try:
                if requests.get(url + "/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.005)
        ready = time.time() - t0
        t1 = time.time()
        r = requests.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens,
                                                         "temperature": 0, "ignore_eos": True}, timeout=600)
        client_e2e = time.time() - t1
        assert r.status_code == 200, r.text
        text = requests.get(url + "/metrics").text
        ttft1, e2e1 = (metric(text, n) for n in ("engram_time_to_first_token_seconds_sum", "engram_e2e_request_latency_seconds_sum"))
        # a second request of the same shape (other ids: no prefix-cache hit): what a warm server does
        r = requests.post(url + "/v1/completions", json={"prompt": [(t + 1) % 900 + 20 for t in prompt], "max_tokens": max_tokens,
                                                         "temperature": 0, "ignore_eos": True}, timeout=600)
        assert r.status_code == 200, r.text
        text = requests.get(url + "/metrics").text
        out = Path(log.name).read_text()
        w = re.search(r"warm-up: .* in ([0-9.]+) s", out)
        assert re.search(r"loaded in [0-9.]+s", out), out  # this server's answers, none other's
        return {"warmup": warm, "ready_s": ready, "loaded_s": float(re.search(r"loaded in ([0-9.]+)s", out).group(1)), "warmup_s": float(w.group(1)) if w else 0.0,
                "ttft_ms": 1e3 * ttft1, "e2e_ms": 1e3 * e2e1,
                "ttft2_ms": 1e3 * (metric(text, "engram_time_to_first_token_seconds_sum") - ttft1),
                "e2e2_ms": 1e3 * (metric(text, "engram_e2e_request_latency_seconds_sum") - e2e1),
                "client_e2e_ms": 1e3 * client_e2e}
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        os.unlink(log.name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--exe", default=str(ROOT / "build" / "engram-server"), help="e.g. build-gpu/engram-server")
    ap.add_argument("server_args", nargs="*")
    a = ap.parse_args()
    prompt = [(i * 37 + 11) % 900 + 20 for i in range(a.prompt)]
    rows = []
    for k in range(a.rounds):
        for warm in ((1, 0) if k % 2 == 0 else (0, 1)):  # ABBA: neither always goes first
            row = one(a.exe, warm, a.server_args, prompt, a.max_tokens)
            rows.append(row)
            print(f"round {k} warmup {warm}: ready {row['ready_s']:.2f} s (log: loaded in {row['loaded_s']:.2f} s, warm-up {row['warmup_s']:.2f} s), "
                  f"first request TTFT {row['ttft_ms']:.1f} ms, e2e {row['e2e_ms']:.1f} ms "
                  f"(client {row['client_e2e_ms']:.1f} ms); second request TTFT {row['ttft2_ms']:.1f} ms, "
                  f"e2e {row['e2e2_ms']:.1f} ms", flush=True)
    for warm in (1, 0):
        r = [x for x in rows if x["warmup"] == warm]
        med = lambda key: sorted(x[key] for x in r)[len(r) // 2]
        print(f"warmup {warm} median of {len(r)}: ready {med('ready_s'):.2f} s, warm-up {med('warmup_s'):.2f} s, "
              f"first request TTFT {med('ttft_ms'):.1f} ms, e2e {med('e2e_ms'):.1f} ms; "
              f"second request TTFT {med('ttft2_ms'):.1f} ms, e2e {med('e2e2_ms'):.1f} ms")


if __name__ == "__main__":
    main()
