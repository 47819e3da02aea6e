#!/usr/bin/env python3
"""Golden values for engram/ngram_hash, computed with NumPy (ENGRAM.md sections 4-5).

Writes tests/fixtures/engram_hash_golden.json: raw PCG64 outputs and
default_rng(seed).integers(low, high, size, dtype=int64) draws over small
(32-bit Lemire path) and large ranges, and for several Engram configurations
(the demo layout, the DeepSeek-V4.1 production layout, odd ones) the multipliers,
head primes, offsets, table rows and the row ids of a few compressed-id
sequences (pad history, negative ids). Values above 2^53 are written as decimal
strings so that any JSON reader keeps them exact.

  .venv/bin/python tools/make_hash_golden.py            # rewrite the fixture
  .venv/bin/python tools/make_hash_golden.py --check    # exit 1 if it is stale
"""
import json
import pathlib
import sys

import numpy as np

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "engram_hash_golden.json"
EXACT = 1 << 53


def is_prime(n):
    """Deterministic Miller-Rabin for n < 3.3e24."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in bases:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def multipliers(cfg, layer_id):
    vc = cfg["compressed_vocab_size"]
    m_max = (2**63 - 1) // vc
    half = max(1, m_max // 2)
    rng = np.random.default_rng(cfg["seed"] + 10007 * layer_id)
    r = rng.integers(0, half, size=cfg["max_ngram_size"], dtype=np.int64)
    return r * 2 + 1


def head_primes(cfg):
    """Per layer, order-major head sizes; one `seen` set over all layers."""
    seen, out = set(), []
    for _ in cfg["layer_ids"]:
        layer = []
        for n in range(2, cfg["max_ngram_size"] + 1):
            start = cfg["engram_vocab_size"][n - 2] - 1
            for _ in range(cfg["n_head_per_ngram"]):
                c = start + 1
                while not is_prime(c) or c in seen:
                    c += 1
                seen.add(c)
                layer.append(c)
                start = c
        out.append(layer)
    return out


def hash_rows(cfg, mult, primes, ids):
    """Rows (T, H) of one layer for compressed ids (1-D), pad history before t=0."""
    x = np.asarray(ids, dtype=np.int64)
    T = len(x)
    N = cfg["max_ngram_size"]
    pad = cfg["compressed_pad_id"]
    shifted = [np.concatenate([np.full(k, pad, dtype=np.int64), x])[:T] for k in range(N)]
    offsets = np.concatenate([[0], np.cumsum(primes)[:-1]]).astype(np.int64)
    cols = []
    for n in range(2, N + 1):
        mix = shifted[0] * mult[0]
        for k in range(1, n):
            mix = np.bitwise_xor(mix, shifted[k] * mult[k])
        for j in range(cfg["n_head_per_ngram"]):
            h = (n - 2) * cfg["n_head_per_ngram"] + j
            cols.append(offsets[h] + mix % np.int64(primes[h]))
    return np.stack(cols, axis=1) if cols else np.zeros((T, 0), dtype=np.int64)


def big(values):
    """Ints as JSON numbers when exact in a double, else as strings."""
    return [int(v) if -EXACT < int(v) < EXACT else str(int(v)) for v in values]


CONFIGS = [
    # The demo layout (ENGRAM.md section 2) with the DeepSeek-V3 compressed vocab.
    dict(name="demo", engram_vocab_size=[129280 * 5, 129280 * 5], max_ngram_size=3,
         n_embed_per_ngram=512, n_head_per_ngram=8, layer_ids=[1, 15], pad_id=2, seed=0,
         kernel_size=4, hc_mult=4, compressed_vocab_size=98627, compressed_pad_id=2),
    # DeepSeek-V4.1-Flash (section 7): rows per layer must be 384006168, 384016682.
    dict(name="deepseek_v4_1", engram_vocab_size=[16000000] * 3, max_ngram_size=4,
         n_embed_per_ngram=8 * 256, n_head_per_ngram=8, layer_ids=[1, 14], pad_id=2, seed=0,
         kernel_size=4, hc_mult=4, compressed_vocab_size=99092, compressed_pad_id=2),
    dict(name="qwen3_small", engram_vocab_size=[1000, 3000], max_ngram_size=3,
         n_embed_per_ngram=64, n_head_per_ngram=4, layer_ids=[2, 0, 5], pad_id=151643, seed=7,
         kernel_size=4, hc_mult=1, compressed_vocab_size=107457, compressed_pad_id=107000),
    # Huge Vc: half < 2^32, the 32-bit buffered Lemire path.
    dict(name="small_range", engram_vocab_size=[50, 50, 50, 50], max_ngram_size=5,
         n_embed_per_ngram=6, n_head_per_ngram=3, layer_ids=[3, 9], pad_id=0, seed=123456789,
         kernel_size=2, hc_mult=2, compressed_vocab_size=4000000000, compressed_pad_id=0),
    # Vc so large that half = 1: every multiplier is 1.
    dict(name="half_one", engram_vocab_size=[2], max_ngram_size=2, n_embed_per_ngram=2,
         n_head_per_ngram=2, layer_ids=[0], pad_id=0, seed=0, kernel_size=1, hc_mult=1,
         compressed_vocab_size=2**62, compressed_pad_id=1),
    # Tiny Vc: multipliers near 2^61, products near the int64 limit.
    dict(name="tiny_vocab", engram_vocab_size=[10, 20, 30], max_ngram_size=4,
         n_embed_per_ngram=16, n_head_per_ngram=2, layer_ids=[40000], pad_id=1, seed=2**40,
         kernel_size=4, hc_mult=1, compressed_vocab_size=5, compressed_pad_id=4),
]


def sequences(cfg, rs):
    vc = cfg["compressed_vocab_size"]
    hi = min(vc, 2**62)
    seqs = [[int(v) for v in rs.integers(0, hi, size=n)] for n in (1, 2, 5, 23)]
    seqs.append([cfg["compressed_pad_id"]] * 3 + [0, hi - 1, 1])
    seqs.append([-1, 3 % hi, -100, 0, -1])  # negative ids pass through the compressor
    return seqs


def make():
    out = {"generator": "tools/make_hash_golden.py", "numpy": np.__version__,
           "raw": [], "integers": [], "cases": []}
    for seed in (0, 1, 10007, 150112, 2**32 - 1, 2**32, 2**64 - 1):
        raw = np.random.PCG64(seed).random_raw(8)
        out["raw"].append({"seed": str(seed), "values": [str(int(v)) for v in raw]})
    rs = np.random.default_rng(2026)
    highs = [1, 2, 3, 10, 1000, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40, 46540126963253,
             2**62, 2**63 - 1]
    for seed in (0, 5, 10007 * 15, 2**33 + 7, 2**64 - 2):
        for high in highs:
            for low in (0, -3, -(2**62)):
                n = 7
                vals = np.random.default_rng(seed).integers(low, high, size=n, dtype=np.int64)
                out["integers"].append({"seed": str(seed), "low": str(low), "high": str(high),
                                        "values": [str(int(v)) for v in vals]})
    for cfg in CONFIGS:
        primes = head_primes(cfg)
        mults = [multipliers(cfg, lid) for lid in cfg["layer_ids"]]
        seqs = sequences(cfg, rs)
        case = {"config": cfg,
                "multipliers": [big(m) for m in mults],
                "primes": primes,
                "offsets": [[int(v) for v in np.concatenate([[0], np.cumsum(p)[:-1]])]
                            for p in primes],
                "table_rows": [int(sum(p)) for p in primes],
                "sequences": [big(s) for s in seqs],
                "rows": [[hash_rows(cfg, m, p, s).tolist() for m, p in zip(mults, primes)]
                         for s in seqs]}
        out["cases"].append(case)
    return out


def dumps(obj):
    return json.dumps(obj, separators=(",", ":")) + "\n"


def main():
    text = dumps(make())
    if "--check" in sys.argv:
        if not FIXTURE.exists() or FIXTURE.read_text() != text:
            print(f"{FIXTURE} is stale; rerun tools/make_hash_golden.py", file=sys.stderr)
            return 1
        return 0
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(text)
    print(f"wrote {FIXTURE} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
