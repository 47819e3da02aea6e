"""Bad Engram checkpoints: a config that contradicts the tensors, a stated
compressed vocab that differs from the tokenizer's, missing tensors or
tokenizer, absurd hash parameters. Each refuses to load with one line that
names the field or tensor; never a crash (also run under ASan/UBSan)."""
import json
import shutil
import struct

import pytest

from conftest import MODELS, run_bin

SRC = MODELS / "qwen3_engram"


def copy(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(SRC, d)
    return d


def set_engram(d, **kw):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in kw.items():
        if v is None:
            cfg["engram"].pop(k, None)
        else:
            cfg["engram"][k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def expect_error(d, *needles):
    p = run_bin("engram-run", "--model", d, "--prompt-ids", "5,6,7", "--max-tokens", "2", check=False)
    assert p.returncode == 1, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def test_good_copy_runs(tmp_path):
    p = run_bin("engram-run", "--model", copy(tmp_path), "--prompt-ids", "5,6,7", "--max-tokens", "2")
    assert p.returncode == 0


def test_wrong_table_rows(tmp_path):
    d = copy(tmp_path)
    set_engram(d, engram_vocab_size=[1000, 1600])  # other primes: the table has the wrong row count
    expect_error(d, "model.layers.1.engram.multi_head_embedding.embedding.weight", "expected [")


def test_wrong_head_count(tmp_path):
    d = copy(tmp_path)
    set_engram(d, n_head_per_ngram=8)  # D = 32/8 = 4: the table width no longer matches
    expect_error(d, "multi_head_embedding.embedding.weight", "expected [")


def test_wrong_width(tmp_path):
    d = copy(tmp_path)
    set_engram(d, n_embed_per_ngram=64)
    expect_error(d, "engram.", "expected [")


def test_wrong_kernel_size(tmp_path):
    d = copy(tmp_path)
    set_engram(d, kernel_size=3)
    expect_error(d, "short_conv.conv.weight", "[64, 1, 3]")


def test_compressed_vocab_disagrees(tmp_path):
    d = copy(tmp_path)
    set_engram(d, compressed_vocab_size=99092)
    expect_error(d, "engram.compressed_vocab_size is 99092", "compresses to 1340")


def test_compressed_vocab_agrees(tmp_path):
    d = copy(tmp_path)
    set_engram(d, compressed_vocab_size=1340)
    run_bin("engram-run", "--model", d, "--prompt-ids", "5,6,7", "--max-tokens", "2")


def test_missing_engram_tensor(tmp_path):
    d = copy(tmp_path)
    f = d / "model.safetensors"
    raw = f.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    del hdr["model.layers.2.engram.norm2.0.weight"]
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    f.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    expect_error(d, "missing tensor model.layers.2.engram.norm2.0.weight")


def test_missing_tokenizer(tmp_path):
    d = copy(tmp_path)
    (d / "tokenizer.json").unlink()
    expect_error(d, "tokenizer")


@pytest.mark.parametrize("kw,needle", [
    (dict(layer_ids=[1, 7]), "engram.layer_ids[1]"),
    (dict(layer_ids=[1, 1]), "twice"),
    (dict(layer_ids=[]), "engram.layer_ids"),
    (dict(engram_vocab_size=[1000]), "engram.engram_vocab_size"),
    (dict(engram_vocab_size=[1000, -5]), "engram.engram_vocab_size[1]"),
    (dict(engram_vocab_size=[1000, 9007199254740992]), "engram"),
    (dict(max_ngram_size=40), "max_ngram_size"),
    (dict(pad_id=100000), "engram.pad_id"),
    (dict(pad_id=-1), "engram.pad_id"),
    (dict(seed="zero"), "engram.seed"),
    (dict(hc_mult=4), "hc_mult"),
    (dict(n_head_per_ngram=None), "n_head_per_ngram"),
    (dict(n_embed_per_ngram=30), "n_embed_per_ngram"),
])
def test_bad_engram_config(tmp_path, kw, needle):
    d = copy(tmp_path)
    set_engram(d, **kw)
    expect_error(d, needle)


def test_engram_not_an_object(tmp_path):
    d = copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["engram"] = [1, 2]
    (d / "config.json").write_text(json.dumps(cfg))
    expect_error(d, "key engram must be an object")
