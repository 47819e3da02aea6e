"""DeepSeek-V4.1 Engram format against outside references, through the hidden
driver build/engram-v41dump:
- FP8 rows: every e4m3fn code with every ue8m0 scale byte, in the packed
  layout (head_dim values then head_dim/32 scale bytes) and the checkpoint's
  split layout, bit-exact against ml_dtypes float8_e4m3fn / float8_e8m0fnu and
  NumPy ldexp with one float32 multiply.
- Hashing: the production config (tests/fixtures/deepseek_v41/config.json)
  gives table rows [384006168, 384016682]; multipliers equal NumPy's
  default_rng(10007*layer).integers(0, half, 4, int64)*2+1 with Vc 99092;
  primes, offsets and rows equal a plain Python reading of ENGRAM.md 4-5."""
import json

import numpy as np
import pytest

from conftest import SOURCE, run_bin
import tokfixtures

ml_dtypes = pytest.importorskip(
    "ml_dtypes", reason="ml_dtypes (pip install ml_dtypes==0.5.4) is the FP8 reference")

FIXTURE = SOURCE / "tests" / "fixtures" / "deepseek_v41" / "config.json"
D = 256


def ref_scales():
    """ue8m0 byte -> float32 by NumPy ldexp (255: NaN per the OCP MX spec)."""
    b = np.arange(255)
    s = np.ldexp(np.float32(1.0), (b - 127).astype(np.int32)).astype(np.float32)
    s = np.append(s, np.float32(np.nan))
    return s


def ref_decode(values, scales):
    """values (rows, D) uint8, scales (rows, D/32) uint8 -> (rows, D) float32."""
    v = values.view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    s = np.repeat(ref_scales()[scales], 32, axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        return v * s


def same_bits(got, want):
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    g, w = got[~nan].view(np.uint32), want[~nan].view(np.uint32)
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, f"{bad.size} values differ, first at {bad[0]}: {g[bad[0]]:#x} != {w[bad[0]]:#x}"


def table():
    """512 rows covering every (code, scale) pair, block scales that differ."""
    codes = np.arange(256, dtype=np.uint8)
    r = np.arange(256)
    values = np.concatenate([np.tile(codes, (256, 1)),
                             (codes[None, :] + r[:, None]).astype(np.uint8)])
    scales = np.concatenate([np.repeat(r[:, None], D // 32, axis=1),
                             (r[:, None] + 37 * np.arange(D // 32)[None, :]) % 256]).astype(np.uint8)
    return values, scales


def test_scale_reference_agrees_with_ml_dtypes():
    e8 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    same_bits(e8, ref_scales())
    e4 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    assert np.isnan(e4[0x7F]) and np.isnan(e4[0xFF]) and e4[0x7E] == 448 and e4[0x01] == 2.0**-9


def test_packed_rows_bit_exact(tmp_path):
    values, scales = table()
    (tmp_path / "t.bin").write_bytes(np.concatenate([values, scales], axis=1).tobytes())
    run_bin("engram-v41dump", "decode", "--head-dim", D, "--packed", tmp_path / "t.bin",
            "--out", tmp_path / "o.bin")
    got = np.fromfile(tmp_path / "o.bin", dtype="<f4").reshape(-1, D)
    assert got.shape == values.shape
    same_bits(got, ref_decode(values, scales))
    # every (code, scale) pair is covered by the first 256 rows
    assert got[0, 1] == 2.0**-136 and np.isinf(got[254, 0x7E])


def test_split_layout_gather(tmp_path):
    values, scales = table()
    (tmp_path / "v.bin").write_bytes(values.tobytes())
    (tmp_path / "s.bin").write_bytes(scales.tobytes())
    rows = np.random.default_rng(7).integers(0, len(values), 300)
    rows[:3] = [511, 0, 511]
    run_bin("engram-v41dump", "decode", "--head-dim", D, "--values", tmp_path / "v.bin",
            "--scales", tmp_path / "s.bin", "--rows", ",".join(map(str, rows)),
            "--out", tmp_path / "o.bin")
    got = np.fromfile(tmp_path / "o.bin", dtype="<f4").reshape(-1, D)
    same_bits(got, ref_decode(values[rows], scales[rows]))


def test_other_head_dims(tmp_path):
    rng = np.random.default_rng(3)
    for d in (32, 128, 512):
        values = rng.integers(0, 256, (40, d), dtype=np.uint8)
        scales = rng.integers(0, 256, (40, d // 32), dtype=np.uint8)
        (tmp_path / "t.bin").write_bytes(np.concatenate([values, scales], axis=1).tobytes())
        run_bin("engram-v41dump", "decode", "--head-dim", d, "--packed", tmp_path / "t.bin",
                "--out", tmp_path / "o.bin")
        same_bits(np.fromfile(tmp_path / "o.bin", dtype="<f4").reshape(-1, d), ref_decode(values, scales))


# ---- hashing ----

def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def reference_tables(cfg, vc):
    """Multipliers, primes and offsets per ENGRAM.md section 4 (V4.1 keys)."""
    n_max, nh = cfg["engram_max_ngram_size"], cfg["engram_n_heads"]
    half = max(1, (2**63 - 1) // vc // 2)
    seen, mult, primes = set(), [], []
    for layer in cfg["engram_layer_ids"]:
        r = np.random.default_rng(10007 * layer).integers(0, half, size=n_max, dtype=np.int64)
        mult.append([int(x) * 2 + 1 for x in r])
        ps = []
        for _ in range(2, n_max + 1):
            start = cfg["engram_vocab_size"] - 1
            for _ in range(nh):
                p = start + 1
                while not is_prime(p) or p in seen:
                    p += 1
                seen.add(p)
                ps.append(p)
                start = p
        primes.append(ps)
    offsets = [[sum(ps[:h]) for h in range(len(ps))] for ps in primes]
    return mult, primes, offsets


def reference_rows(cfg, mult, primes, offsets, cids, cpad):
    n_max, nh = cfg["engram_max_ngram_size"], cfg["engram_n_heads"]
    out = []
    for li in range(len(mult)):
        for t in range(len(cids)):
            ctx = [cids[t - k] if t - k >= 0 else cpad for k in range(n_max)]
            for n in range(2, n_max + 1):
                mix = 0
                for k in range(n):
                    mix ^= ctx[k] * mult[li][k]
                for j in range(nh):
                    h = (n - 2) * nh + j
                    out.append(offsets[li][h] + mix % primes[li][h])
    return out


def dump(path, *args):
    return json.loads(run_bin("engram-v41dump", "config", path, *args).stdout)


def test_production_config():
    cfg = json.loads(FIXTURE.read_text())["text_config"]
    cids = [0, 5, 99091, 17, 17, 4242, 2, 60000, 1, 98000]
    got = dump(FIXTURE, "--cids", ",".join(map(str, cids)))
    assert got["table_rows"] == [384006168, 384016682]
    assert got["heads"] == 24 and got["head_dim"] == 256 and got["row_bytes"] == 264
    mult, primes, offsets = reference_tables(cfg, 99092)
    assert got["multipliers"] == mult
    assert got["primes"] == primes
    assert got["offsets"] == offsets
    assert [sum(p) for p in primes] == cfg["engram_num_embeddings"]
    assert got["rows"] == reference_rows(cfg, mult, primes, offsets, cids, 2)


def test_top_level_keys(tmp_path):
    cfg = json.loads(FIXTURE.read_text())
    flat = dict(cfg["text_config"], model_type=cfg["model_type"])
    (tmp_path / "config.json").write_text(json.dumps(flat))
    assert dump(tmp_path / "config.json") == dump(FIXTURE)


def test_with_tokenizer(tmp_path):
    """A stated Vc that equals the tokenizer's: the pad goes through the lookup."""
    tok = tokfixtures.unpack("deepseek_v3", tmp_path)
    cfg = json.loads(FIXTURE.read_text())
    cfg["text_config"]["engram_compressed_vocab_size"] = 98627
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    got = dump(tmp_path / "config.json", "--tokenizer", tok, "--cids", "7,8,9")
    assert got["compressed_vocab_size"] == 98627 and got["table_rows"] == [384006168, 384016682]
    mult, primes, offsets = reference_tables(cfg["text_config"], 98627)
    assert got["multipliers"] == mult
    assert got["rows"] == reference_rows(cfg["text_config"], mult, primes, offsets, [7, 8, 9],
                                         got["compressed_pad_id"])
