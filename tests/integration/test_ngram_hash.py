"""engram/ngram_hash against NumPy (ENGRAM.md sections 4-5).

The committed goldens (tests/fixtures/engram_hash_golden.json) are regenerated
here with NumPy by tools/make_hash_golden.py and must be identical; then the C
code (through the test driver build/engram-hashdump) must reproduce them: PCG64
raw outputs, default_rng().integers() draws, multipliers, head primes, offsets
and row ids, the latter also when hashed in chunks with the carried history.
More multipliers are drawn fresh from NumPy for random seeds, layers and
compressed vocab sizes.
"""
import importlib.util
import json
import os
import pathlib
import random
import subprocess

import numpy as np
import pytest

BUILD = pathlib.Path(os.environ.get("ENGRAM_BUILD_DIR", "build"))
SOURCE = pathlib.Path(os.environ.get("ENGRAM_SOURCE_DIR", pathlib.Path(__file__).parents[2]))
DUMP = BUILD / "engram-hashdump"


def load_generator():
    spec = importlib.util.spec_from_file_location("make_hash_golden",
                                                  SOURCE / "tools" / "make_hash_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = load_generator()


@pytest.fixture(scope="module")
def golden():
    return json.loads(GEN.FIXTURE.read_text())


def dump(*args, stdin=None):
    if not DUMP.exists():
        pytest.skip(f"{DUMP} not built")
    res = subprocess.run([str(DUMP), *map(str, args)], input=stdin, capture_output=True,
                         text=True)
    return res


def ints(values):
    return [int(v) for v in values]


def test_fixture_is_numpy_made():
    """Regenerating with NumPy gives the committed file byte for byte."""
    assert GEN.FIXTURE.read_text() == GEN.dumps(GEN.make())


def test_pcg64_raw(golden):
    for g in golden["raw"]:
        res = dump("raw", g["seed"], len(g["values"]))
        assert res.returncode == 0, res.stderr
        assert ints(res.stdout.split()) == ints(g["values"]), g["seed"]


def test_integers(golden):
    for g in golden["integers"]:
        res = dump("rng", g["seed"], g["low"], g["high"], len(g["values"]))
        assert res.returncode == 0, res.stderr
        assert ints(res.stdout.split()) == ints(g["values"]), g


def test_integers_fresh_from_numpy():
    rs = random.Random(4)
    for _ in range(300):
        seed = rs.choice([rs.randrange(2**16), rs.randrange(2**64)])
        high = rs.randrange(1, 2**rs.randint(1, 63))
        low = rs.choice([0, -rs.randrange(2**rs.randint(1, 62))])
        n = rs.randint(1, 12)
        ref = np.random.default_rng(seed).integers(low, high, size=n, dtype=np.int64)
        res = dump("rng", seed, low, high, n)
        assert ints(res.stdout.split()) == ref.tolist(), (seed, low, high)


def as_strings(v):
    """Every int as a decimal string: the driver reads them exactly."""
    if isinstance(v, list):
        return [as_strings(x) for x in v]
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


def derive(cfg, sequences=(), chunk=0):
    body = {k: as_strings(v) for k, v in cfg.items()}
    body.pop("name", None)
    body["sequences"] = [as_strings(ints(s)) for s in sequences]
    body["chunk"] = chunk
    res = dump("derive", stdin=json.dumps(body))
    return res


@pytest.mark.parametrize("chunk", [0, 1, 2, 5])
def test_cases(golden, chunk):
    for case in golden["cases"]:
        cfg = case["config"]
        res = derive(cfg, case["sequences"], chunk)
        assert res.returncode == 0, (cfg["name"], res.stdout, res.stderr)
        got = json.loads(res.stdout)
        name = cfg["name"]
        heads = (cfg["max_ngram_size"] - 1) * cfg["n_head_per_ngram"]
        assert got["H"] == heads
        assert got["D"] == cfg["n_embed_per_ngram"] // cfg["n_head_per_ngram"]
        assert got["E"] == heads * got["D"]
        assert got["multipliers"] == [ints(m) for m in case["multipliers"]], name
        assert got["primes"] == case["primes"], name
        assert got["offsets"] == case["offsets"], name
        assert got["table_rows"] == case["table_rows"], name
        assert got["rows"] == case["rows"], (name, chunk)


def test_deepseek_v4_1_rows_per_layer(golden):
    """The prime search reproduces the production table sizes (ENGRAM.md section 7)."""
    case = next(c for c in golden["cases"] if c["config"]["name"] == "deepseek_v4_1")
    assert case["table_rows"] == [384006168, 384016682]


def test_multipliers_fresh_from_numpy():
    rs = random.Random(11)
    for _ in range(150):
        vc = rs.choice([rs.randrange(1, 2**20), rs.randrange(1, 2**62), rs.randrange(2**31, 2**34)])
        n = rs.randint(2, 6)
        cfg = dict(engram_vocab_size=[rs.randint(1, 5000)] * (n - 1), max_ngram_size=n,
                   n_embed_per_ngram=8, n_head_per_ngram=2,
                   layer_ids=rs.sample(range(200), rs.randint(1, 3)), pad_id=0,
                   seed=rs.randrange(2**40), kernel_size=4, hc_mult=1,
                   compressed_vocab_size=vc, compressed_pad_id=0)
        res = derive(cfg)
        assert res.returncode == 0, res.stdout
        got = json.loads(res.stdout)
        ref = [GEN.multipliers(cfg, lid).tolist() for lid in cfg["layer_ids"]]
        assert got["multipliers"] == ref, cfg
        assert got["primes"] == GEN.head_primes(cfg), cfg


@pytest.mark.parametrize("field,value", [
    ("max_ngram_size", 1), ("max_ngram_size", 17), ("n_head_per_ngram", 0),
    ("n_embed_per_ngram", 7), ("layer_ids", []), ("layer_ids", [1, 1]), ("layer_ids", [-1]),
    ("seed", -1), ("compressed_vocab_size", 0), ("compressed_pad_id", 98627),
    ("engram_vocab_size", [0, 10]), ("engram_vocab_size", [2**60, 10]), ("kernel_size", 0),
    ("hc_mult", 0), ("pad_id", -2),
])
def test_bad_config_names_field(golden, field, value):
    cfg = dict(golden["cases"][0]["config"])
    cfg[field] = value
    res = derive(cfg)
    assert res.returncode == 3
    assert field in json.loads(res.stdout)["error"]
