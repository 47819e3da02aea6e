#!/usr/bin/env python3
"""Soak test of engram-server (issue 23): many concurrent streaming clients
with random prompt and output lengths that also disconnect (a close or a
reset mid-stream) and cancel (give up after a random time) at random, for a
given duration, while a sampler records the server's RSS, open descriptors,
KV blocks in use and its metrics every few seconds. Standard library only.

Fails (exit 1) on
  - any response other than 200 and the queue-full 503 ("The server is
    overloaded: ..."), a stream read to its end without [DONE] or with an
    error event, a connection the server refused or reset before answering;
  - a leak trend: mean RSS over the last quarter of the samples more than
    --rss-slack (5%) above the mean over the second quarter (the first is
    warm-up), or open descriptors after the run above those before it;
  - KV blocks in use, running or waiting requests not back to zero within
    30 s of the last client stopping;
  - the server not exiting 0 on SIGTERM (when this script started it), or a
    sanitizer report in its log.

  tools/soak.py --server build/engram-server --model models/engram-lexicon \\
                --duration 1800 --clients 64 [--json OUT] [--server-arg ARG ...]
  tools/soak.py --url http://127.0.0.1:8080 --pid PID ...   (a running server)

Prints a summary (requests by outcome, RSS and descriptors first/last, KV
at the end) and writes every sample with --json."""
import argparse
import asyncio
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

WORDS = ("memory table token engram layer hash river stone light music paper garden window winter silver "
         "language meaning history science number letter animal mountain village morning evening question "
         "answer story voice color").split()


def rss_fds(pid):
    """The process's resident set (bytes) and open descriptors."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def metric(text, name, labels=""):
    """One sample of the Prometheus text (labels as written, e.g. '{a="b"}')."""
    for line in text.splitlines():
        if line.startswith(name + labels + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def http(host, port, method, path, body=None, timeout=30):
    """One request on its own connection: (status, body bytes)."""
    r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        data = json.dumps(body).encode() if body is not None else b""
        w.write(f"{method} {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await w.drain()
        raw = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


class Stats:
    def __init__(self):
        self.outcomes = {}  # outcome -> count
        self.errors = []    # unexpected things, first 20 kept

    def count(self, what):
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    def error(self, what):
        self.count("unexpected")
        if len(self.errors) < 20:
            self.errors.append(what)


async def one_request(args, rng, stats):
    chat = rng.random() < 0.5
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, args.max_prompt_words)))
    body = {"max_tokens": rng.randint(1, args.max_tokens), "stream": True, "temperature": rng.choice([0, 0.8]),
            "seed": rng.randint(0, 1 << 30), "ignore_eos": rng.random() < 0.5}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    path = "/v1/chat/completions" if chat else "/v1/completions"
    roll = rng.random()
    action = "full" if roll < 0.6 else "disconnect" if roll < 0.8 else "cancel"
    data = json.dumps(body).encode()
    try:
        r, w = await asyncio.open_connection(args.host, args.port)
    except OSError as e:
        stats.error(f"connect: {e}")
        return
    try:
        w.write(f"POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await w.drain()
        try:
            if action == "cancel":  # give up after a random time, wherever the request is
                status, raw = await asyncio.wait_for(read_stream(r, None), rng.uniform(0.02, 3.0))
            else:
                status, raw = await read_stream(r, rng.randint(1, 2000) if action == "disconnect" else None)
        except asyncio.TimeoutError:
            stats.count("cancelled")
            return
        if status == 503 and b"overloaded" in raw:
            stats.count("queue_full_503")
        elif status != 200:
            stats.error(f"status {status}: {raw[:300]!r}")
        elif action == "disconnect" and not raw.endswith(b"0\r\n\r\n"):
            stats.count("disconnected")
            if rng.random() < 0.5:  # a reset rather than a close
                w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif b"data: [DONE]" not in raw or b'"error"' in raw:
            stats.error(f"stream without [DONE] or with an error: {raw[-300:]!r}")
        else:
            stats.count("completed")
    except (ConnectionError, asyncio.IncompleteReadError) as e:
        stats.error(f"{action}: {e!r}")
    finally:
        w.close()


async def read_stream(r, limit):
    """Status and body bytes (a stream's chunked framing left in), up to
    limit body bytes (None: the whole response)."""
    head = await r.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):  # an error reply: exactly its body
            return status, await r.readexactly(int(line.split(b":", 1)[1]))
    body = b""
    while limit is None or len(body) < limit:
        b = await r.read(4096 if limit is None else min(4096, limit - len(body)))
        if not b:
            break
        body += b
        if body.endswith(b"0\r\n\r\n") and b"data: [DONE]" in body:
            break  # the last chunk: the server keeps the connection open
    return status, body


async def client(args, seed, deadline, stats):
    rng = random.Random(seed)
    while time.time() < deadline:
        await one_request(args, rng, stats)


async def sampler(args, pid, stop, samples):
    t0 = time.time()
    while True:
        s = {"t": round(time.time() - t0, 2)}
        if pid:
            s["rss"], s["fds"] = rss_fds(pid)
        try:
            status, m = await http(args.host, args.port, "GET", "/metrics")
            m = m.decode()
            s.update(running=metric(m, "engram_num_requests_running"), waiting=metric(m, "engram_num_requests_waiting"),
                     kv=metric(m, "engram_kv_cache_usage_perc"), conns=metric(m, "engram_http_connections"),
                     ok=metric(m, "engram_request_success_total", '{finished_reason="stop"}'),
                     length=metric(m, "engram_request_success_total", '{finished_reason="length"}'),
                     abort=metric(m, "engram_request_success_total", '{finished_reason="abort"}'),
                     error=metric(m, "engram_request_success_total", '{finished_reason="error"}'))
        except (OSError, asyncio.TimeoutError) as e:
            s["metrics_error"] = repr(e)
        samples.append(s)
        if args.verbose:
            print(json.dumps(s), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), args.sample_every)
            return
        except asyncio.TimeoutError:
            pass


def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


async def soak(args, pid):
    stats = Stats()
    samples = []
    stop = asyncio.Event()
    fds0 = rss_fds(pid)[1] if pid else None
    samp = asyncio.create_task(sampler(args, pid, stop, samples))
    deadline = time.time() + args.duration
    await asyncio.gather(*(client(args, args.seed * 1000 + i, deadline, stats) for i in range(args.clients)))
    # the clients are gone: KV blocks, running and waiting back to zero
    settle = time.time() + 30
    final = {}
    while time.time() < settle:
        _, m = await http(args.host, args.port, "GET", "/metrics")
        m = m.decode()
        final = {"kv": metric(m, "engram_kv_cache_usage_perc"), "running": metric(m, "engram_num_requests_running"),
                 "waiting": metric(m, "engram_num_requests_waiting"), "conns": metric(m, "engram_http_connections"),
                 "error": metric(m, "engram_request_success_total", '{finished_reason="error"}')}
        if final["kv"] == 0 and final["running"] == 0 and final["waiting"] == 0 and (final["conns"] or 0) <= 1:
            break
        await asyncio.sleep(0.5)
    stop.set()
    await samp
    if pid:
        await asyncio.sleep(1)
        final["rss"], final["fds"] = rss_fds(pid)
    return stats, samples, final, fds0


def judge(args, stats, samples, final, fds0):
    problems = list(stats.errors)
    if final.get("kv") != 0 or final.get("running") != 0 or final.get("waiting") != 0:
        problems.append(f"not back to zero 30 s after the last client: {final}")
    if final.get("error"):
        problems.append(f"{final['error']:.0f} generations finished with an error")
    rss = [s["rss"] for s in samples if "rss" in s]
    growth = None
    if len(rss) >= 8:
        q = len(rss) // 4
        growth = mean(rss[-q:]) / mean(rss[q:2 * q]) - 1
        if growth > args.rss_slack:
            problems.append(f"RSS grew {growth * 100:.1f}% from the second quarter to the last (limit "
                            f"{args.rss_slack * 100:.0f}%)")
    elif args.pid or args.server:
        problems.append(f"only {len(rss)} RSS samples: run longer or sample more often")
    if fds0 is not None and final.get("fds", 0) > fds0:
        problems.append(f"open descriptors {final['fds']} after the run, {fds0} before it")
    return problems, growth


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", help="engram-server binary to start (else --url and --pid)")
    ap.add_argument("--model", default="models/engram-lexicon")
    ap.add_argument("--server-arg", action="append", default=[], help="extra engram-server argument (repeat)")
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--pid", type=int, help="the running server's pid (RSS, descriptors)")
    ap.add_argument("--duration", type=float, default=180, help="seconds during which clients start requests")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-prompt-words", type=int, default=150)
    ap.add_argument("--sample-every", type=float, default=3)
    ap.add_argument("--rss-slack", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the samples and the summary here")
    ap.add_argument("--verbose", action="store_true", help="print every sample")
    args = ap.parse_args()
    proc, log = None, None
    if args.server:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            args.port = s.getsockname()[1]
        args.host = "127.0.0.1"
        log = tempfile.NamedTemporaryFile(prefix="engram-soak-", suffix=".log", delete=False)
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
        proc = subprocess.Popen([args.server, "--model", args.model, "--port", str(args.port), *args.server_arg],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        args.pid = proc.pid
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                sys.exit(f"soak: engram-server exited: {open(log.name).read()[-3000:]}")
            try:
                if asyncio.run(http(args.host, args.port, "GET", "/health", timeout=2))[0] == 200:
                    break
            except (OSError, asyncio.TimeoutError, ValueError, IndexError):
                pass
            if time.time() > deadline:
                proc.kill()
                sys.exit("soak: engram-server did not become healthy")
            time.sleep(0.2)
    else:
        hostport = args.url.split("//", 1)[-1].rstrip("/")
        args.host, _, port = hostport.partition(":")
        args.port = int(port or 80)
    t0 = time.time()
    stats, samples, final, fds0 = asyncio.run(soak(args, args.pid))
    wall = time.time() - t0
    problems, growth = judge(args, stats, samples, final, fds0)
    if proc:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed (no exit 60 s after SIGTERM)"
        out = open(log.name, errors="replace").read()
        os.unlink(log.name)
        if rc != 0:
            problems.append(f"engram-server exit status {rc}: {out[-2000:]}")
        if "Sanitizer" in out or "runtime error" in out:
            problems.append(f"sanitizer report: {out[-4000:]}")
    rss = [s["rss"] for s in samples if "rss" in s]
    fds = [s["fds"] for s in samples if "fds" in s]
    summary = {"duration_s": args.duration, "wall_s": round(wall, 1), "clients": args.clients,
               "outcomes": stats.outcomes, "requests": sum(stats.outcomes.values()),
               "rss_first_mb": round(rss[0] / 2**20, 1) if rss else None,
               "rss_last_mb": round(rss[-1] / 2**20, 1) if rss else None,
               "rss_max_mb": round(max(rss) / 2**20, 1) if rss else None,
               "rss_growth_q2_to_q4_pct": round(growth * 100, 2) if growth is not None else None,
               "fds_before": fds0, "fds_max": max(fds) if fds else None, "after": final,
               "samples": len(samples), "problems": problems}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "samples": samples}, f)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
