"""engram-tables profile: the offline hot-row profile of a token file.

The counts it writes are checked against NumPy: the same tokens compressed by
the model's compressed tokenizer (engram-tokenize --engram-compress, itself
checked against HF tokenizers by test_engram_compress) and hashed by the NumPy
reference of tools/make_hash_golden.py (the one the hash goldens come from),
each layer's rows counted with np.unique. The file is parsed here from its
documented layout (engram/store.h), checksum included. Then a server started
on it with --engram-warm-start wait and a DRAM budget smaller than the rows
loads exactly the most frequent ones (ties by row id), as the hot-row file it
writes when it stops (its DRAM cache, nothing served in between) shows."""
import json
import struct

import numpy as np
import pytest

from conftest import SOURCE, run_bin
from test_ngram_hash import GEN

MODEL = SOURCE / "models" / "engram-lexicon"
TEXT = SOURCE / "models" / "engram-lexicon" / "README.md"  # a few thousand tokens of English


def fnv1a64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def read_hot(path):
    """The hot-row file: [(row, count, tier)] in file order, after checking magic, size and checksum."""
    b = path.read_bytes()
    assert b[:8] == b"ENGRHOT\0" and struct.unpack_from("<I", b, 8)[0] == 1
    n = struct.unpack_from("<Q", b, 40)[0]
    assert len(b) == 64 + 16 * n + 8
    assert struct.unpack_from("<Q", b, len(b) - 8)[0] == fnv1a64(b[:-8])
    return [struct.unpack_from("<qII", b, 64 + 16 * i) for i in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The token file (make_text_tokens.py's format) and NumPy's per-layer
    counts, in the order the warm start takes rows: most counted first, then
    by row id."""
    d = tmp_path_factory.mktemp("profile")
    ids = json.loads(run_bin("engram-tokenize", "--tokenizer", MODEL, "--text-file", TEXT, "--no-special").stdout)
    comp = json.loads(run_bin("engram-tokenize", "--tokenizer", MODEL, "--engram-compress").stdout)
    tok = d / "text.tok"
    tok.write_bytes(b"ENGRTOK\0" + struct.pack("<IIQ", 1, comp["vocab"], len(ids)) +
                    np.asarray(ids, dtype="<i4").tobytes())
    lookup = np.asarray(comp["lookup"], dtype=np.int64)
    cfg = dict(json.loads((MODEL / "config.json").read_text())["engram"])
    cfg["compressed_vocab_size"] = comp["compressed"]
    cfg["compressed_pad_id"] = int(lookup[cfg["pad_id"]])
    primes = GEN.head_primes(cfg)
    want = {}
    for li, lid in enumerate(cfg["layer_ids"]):
        rows = GEN.hash_rows(cfg, GEN.multipliers(cfg, lid), primes[li], lookup[np.asarray(ids)])
        u, c = np.unique(rows.ravel(), return_counts=True)
        order = np.lexsort((u, -c))
        want[lid] = [(int(u[i]), int(c[i])) for i in order]
    return d, tok, len(ids), want


def test_counts_equal_numpy(corpus):
    d, tok, n, want = corpus
    tables = d / "tables"
    p = run_bin("engram-tables", "profile", "--model", MODEL, "--tokens", tok, "--tables", tables)
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    assert [l["layer"] for l in lines] == list(want)
    for l in lines:
        w = want[l["layer"]]
        assert l["tokens"] == n and l["distinct"] == l["written"] == len(w) and l["lookups"] == sum(c for _, c in w)
        got = read_hot(tables / f"engram_layer_{l['layer']}.tbl.hot")
        assert all(t == 0 for _, _, t in got)  # all for the DRAM row cache
        assert [(r, c) for r, c, _ in got] == w  # every row and count, most counted first
        assert w[0][1] > w[-1][1] >= 1  # a real spread: some rows far hotter than others
    # --top: the most counted only
    p = run_bin("engram-tables", "profile", "--model", MODEL, "--tokens", tok, "--tables", tables, "--top", "50")
    for l in map(json.loads, p.stdout.splitlines()):
        assert l["written"] == 50
        got = read_hot(tables / f"engram_layer_{l['layer']}.tbl.hot")
        assert [(r, c) for r, c, _ in got] == want[l["layer"]][:50]


def test_bad_input(corpus, tmp_path):
    d, tok, n, want = corpus
    bad = tmp_path / "bad.tok"
    bad.write_bytes(b"ENGRTOK\0" + struct.pack("<IIQ", 1, 151669, 3) + struct.pack("<3i", 1, 2, 3))
    p = run_bin("engram-tables", "profile", "--model", MODEL, "--tokens", bad, "--tables", tmp_path / "t", check=False)
    assert p.returncode == 1 and "tokenizer of 151669 ids" in p.stderr, p.stderr
    bad.write_bytes(b"ENGRTOK\0" + struct.pack("<IIQ", 1, 0, 3) + struct.pack("<3i", 1, 2, 9000))
    p = run_bin("engram-tables", "profile", "--model", MODEL, "--tokens", bad, "--tables", tmp_path / "t", check=False)
    assert p.returncode == 1 and "outside the model's 8192 ids" in p.stderr, p.stderr
    bad.write_bytes(b"not a token file")
    p = run_bin("engram-tables", "profile", "--model", MODEL, "--tokens", bad, "--tables", tmp_path / "t", check=False)
    assert p.returncode == 1 and "not a token file" in p.stderr, p.stderr
    p = run_bin("engram-tables", "profile", "--model", MODEL, "--tokens", tok, "--top", "0", check=False)
    assert p.returncode == 2, p.stderr


def test_server_warms_from_the_profile(corpus):
    """A fresh server reads the profile's rows back, most frequent first, up
    to its DRAM cache's size: its own hot-row file at shutdown (its cache,
    nothing served) holds exactly the top rows of NumPy's order."""
    import requests
    from serverutil import Server, metric

    d, tok, n, want = corpus
    tables = d / "warm"
    run_bin("engram-tables", "profile", "--model", MODEL, "--tokens", tok, "--tables", tables)
    # --warmup 0: the warm-up's own Engram rows would count in the store's counters and hot rows
    s = Server("--engram-tables", tables, "--engram-tier", "nvme", "--engram-dram-budget", "256K",
               "--engram-warm-start", "wait", "--engram-lookahead", "0", "--warmup", "0", model=MODEL)
    try:
        m = requests.get(s.url + "/metrics").text
        cap = metric(m, "engram_store_cache_capacity_rows")
        assert 0 < cap < sum(len(w) for w in want.values())  # the cache cannot take every profiled row
        assert metric(m, "engram_store_warm_ignored_total") == 0
        assert metric(m, "engram_store_cache_rows") == cap  # filled
    finally:
        s.stop()
    for lid, w in want.items():
        got = read_hot(tables / f"engram_layer_{lid}.tbl.hot")
        k = len(got)
        assert 0 < k < len(w), (lid, k, len(w))
        assert sorted(r for r, _, _ in got) == sorted(r for r, _ in w[:k]), lid


def test_synthetic_profile_warms_a_run(corpus, tmp_path):
    """--synthetic: the profile of a synthetic model's table (made in the
    table dir as the engine makes it) is the one bench-throughput's warm start
    reads back on that table, every row of it; a run over slices of the same
    token file then reads from disk only the rows of N-grams that reach
    before a prompt's first token (the padded history: at most 2 tokens x 8
    heads x orders 2..3 = 24 rows a request), which one stream never has."""
    import re

    d, tok, n, want = corpus
    spec, tables = "qwen3-0.6b+layers:2+engram:20k", tmp_path / "syn"
    p = run_bin("engram-tables", "profile", "--synthetic", spec, "--tokens", tok, "--tables", tables)
    line = json.loads(p.stdout.splitlines()[-1])
    assert line["tokens"] == n and line["written"] == line["distinct"] > 1000
    hot = read_hot(tables / f"engram_layer_{line['layer']}.tbl.hot")
    counts = [c for _, c, _ in hot]
    assert len(hot) == line["written"] and sum(counts) == line["lookups"] == 16 * n
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    r = run_bin("bench-throughput", "--synthetic", spec, "--synthetic-table-dir", tables, "-n", "4", "--len", "16:32",
                "--prompts-from", tok, "--force-output", "--engram-tier", "nvme", "--engram-dram-budget", "64M",
                "--engram-warm-start", "wait", "--engram-lookahead", "0", "--threads", "2")
    warm = re.search(r"engram warm start: (\d+) of (\d+) rows read back", r.stdout)
    assert warm and int(warm[1]) == int(warm[2]) == line["written"], r.stdout
    store = re.search(r"engram store: (\d+) lookups, DRAM hits (\d+) .*NVMe rows (\d+)", r.stdout)
    assert store and int(store[1]) > 500 and int(store[3]) <= 24 * 4, r.stdout
    assert int(store[2]) + int(store[3]) == int(store[1])
