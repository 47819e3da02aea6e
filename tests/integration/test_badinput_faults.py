"""Fault injection, SQLite-style (issue 23; base/fault.h): in a build with
-DENGRAM_FAULT=ON (scripts/test's ASan build), the Nth allocation, the Nth
read (pread, io_uring completion, fread; EIO or a short read) fails, for N
over the operations of a scenario: the model's load and a short generation,
the Engram store's gathers from NVMe with the prefetch thread reading ahead,
and one request's path through the server. Every failure must reach the
caller: engram-run exits 0 with the reference's tokens or 1 with a one-line
message; the server answers the faulted request (any status, or a closed
connection when not even the reply could be made), then serves the next one
exactly, answers /health and exits 0 on SIGTERM. Never a signal, a hang, a
sanitizer report or a leak (LeakSanitizer runs at every exit).

scripts/test runs every N of a scenario of at most FULL_UP_TO operations
(the server's request path, the store's reads) and samples the others with
a stride (SAMPLES values: engram-run's load and generation make ~18,000
allocations); ENGRAM_FAULT_FULL=1 runs every N:
  ENGRAM_FAULT_FULL=1 ASAN_OPTIONS=detect_leaks=1 ENGRAM_BUILD_DIR=build-asan \\
      .venv/bin/python -m pytest -q tests/integration/test_badinput_faults.py
Without the option the tests skip."""
import json
import os
import re
import subprocess

import pytest
import requests

from conftest import BUILD, MODELS, run_bin
from serverutil import Server, free_port

MODEL = MODELS / "qwen3_engram"
SAMPLES = 12  # N per scenario in scripts/test (a scenario of at most FULL_UP_TO operations runs whole)
FULL_UP_TO = 200
FULL = os.environ.get("ENGRAM_FAULT_FULL") == "1"
RUN = ["--model", MODEL, "--prompt-ids", "5,6,7,8,9,10,11,12", "--max-tokens", "3", "--temperature", "0",
       "--print-ids", "--threads", "1"]


def counts(stderr):
    m = re.search(r"engram-fault: alloc=(\d+) io=(\d+) cuda_alloc=(\d+)", stderr)
    return {"alloc": int(m[1]), "io": int(m[2]), "cuda_alloc": int(m[3])} if m else None


def fault_env(**kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    for k in [k for k in env if k.startswith("ENGRAM_FAULT_") and k != "ENGRAM_FAULT_FULL"]:
        del env[k]
    env.update({f"ENGRAM_FAULT_{k.upper()}": str(v) for k, v in kw.items()})
    return env


def engram_run(args, **faults):
    p = subprocess.run([str(BUILD / "engram-run"), *map(str, args)], capture_output=True, text=True, timeout=120,
                       env=fault_env(**faults))
    assert p.returncode >= 0, f"signal {-p.returncode} with {faults}: {p.stderr[-3000:]}"
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, f"{faults}: {p.stderr[-6000:]}"
    return p


def sample(n):
    """1..n: all of them (FULL, or n up to FULL_UP_TO), else SAMPLES spread
    over the range, ends included."""
    if FULL or n <= FULL_UP_TO:
        return list(range(1, n + 1))
    return sorted({1 + round(i * (n - 1) / (SAMPLES - 1)) for i in range(SAMPLES)})


@pytest.fixture(scope="module")
def fault_build():
    p = engram_run(RUN, report=1)
    c = counts(p.stderr)
    if c is None:
        pytest.skip("not a fault-injection build (-DENGRAM_FAULT=ON)")
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()[-1]


def check_loop(args, kind, want_ids, must_fail=True, **extra):
    """Runs args once to count the operations of kind, then with the Nth
    failing for the sampled N: exit 0 with want_ids, or 1 with a message.
    must_fail: some N must fail (the hook is on the path)."""
    p = engram_run(args, report=1, **extra)
    assert p.returncode == 0, p.stderr
    n = counts(p.stderr)[kind]
    assert n > 0, f"no {kind} operations counted"
    failed = 0
    for i in sample(n):
        p = engram_run(args, **{kind: i}, **extra)
        if p.returncode == 0:
            assert p.stdout.splitlines()[-1] == want_ids, f"{kind}={i}: different tokens without an error"
        else:
            failed += 1
            assert p.returncode == 1, f"{kind}={i}: exit {p.returncode}: {p.stderr[-2000:]}"
            assert p.stderr.strip(), f"{kind}={i}: exit 1 without a message"
    assert failed or not must_fail, f"no {kind} failure reached the caller: the hook is not on the path"
    return n


def test_model_load_and_generation_allocations(fault_build):
    check_loop(RUN, "alloc", fault_build)


@pytest.fixture(scope="module")
def tables(tmp_path_factory, fault_build):
    out = tmp_path_factory.mktemp("tables")
    run_bin("engram-tables", "export", "--model", MODEL, "--out", out)
    return out


STORE = ["--engram-tier", "nvme", "--engram-dram-budget", "64K", "--prefill-chunk", "2"]


@pytest.mark.parametrize("io", ["uring", "pread"])
@pytest.mark.parametrize("short", [0, 1])
def test_store_reads_and_prefetch(fault_build, tables, io, short):
    """The NVMe tier behind a small row cache, so that the prefetch thread
    reads rows ahead (prompt chunks of 2 tokens): the Nth read of a gather
    or of the prefetch thread fails (EIO) or comes back short (which the
    store finishes with another read: the same tokens)."""
    args = [*RUN, "--engram-tables", tables, *STORE, "--engram-io", io]
    check_loop(args, "io", fault_build, must_fail=not short, io_short=short)


def test_store_allocations(fault_build, tables):
    check_loop([*RUN, "--engram-tables", tables, *STORE], "alloc", fault_build)


def test_server_request_path_allocations(fault_build):
    """One completion's path through the server (HTTP, parsing, the engine,
    the response), the Nth allocation after the model is loaded failing."""
    body = {"prompt": [5, 6, 7, 8], "max_tokens": 3, "temperature": 0}
    ref = Server(env=fault_env(phase="serving", report=1))
    want = requests.post(ref.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    n = counts(ref.stop())["alloc"]
    assert n > 0
    for i in sample(n):
        s = Server(env=fault_env(phase="serving", alloc=i))
        try:
            # one fault per run: it lands on one of these (or on a /health
            # poll, whose count varies), which gets an error or a closed
            # connection; the others are served exactly
            got = []
            for _ in range(3):
                try:
                    r = requests.post(s.url + "/v1/completions", json=body, timeout=30)
                    if r.status_code == 200:
                        assert r.json()["choices"][0]["text"] == want, (i, r.text)
                    else:
                        assert r.status_code in (500, 503) and json.loads(r.text)["error"]["message"], (i, r.text)
                    got.append(r.status_code)
                except requests.ConnectionError:
                    got.append("closed")  # no memory even for the reply
            assert got.count(200) >= 2 and got[-1] == 200, (i, got)
            health = [requests.get(s.url + "/health", timeout=10).status_code for _ in range(2)]
            assert health[-1] == 200 and (got.count(200) == 3 or health[0] == 200), (i, got, health)
        finally:
            s.stop()  # exit 0, no sanitizer report (leaks included)
