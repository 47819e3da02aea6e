"""Bad DeepSeek-V4.1 Engram configs and tables through build/engram-v41dump:
table rows that contradict engram_num_embeddings, a stated compressed vocab
that differs from the tokenizer's, values out of range, missing keys,
malformed JSON, truncated tables and row ids outside the table. Each is
refused with exit status 1 and one line naming the key; never a crash (also
run under ASan/UBSan)."""
import json

import pytest

from conftest import SOURCE, run_bin
import tokfixtures

FIXTURE = SOURCE / "tests" / "fixtures" / "deepseek_v41" / "config.json"


def refused(*args):
    p = run_bin("engram-v41dump", *args, check=False)
    assert p.returncode == 1, (p.returncode, p.stdout[-500:], p.stderr)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


def write(tmp_path, text_config=None, top=None, raw=None):
    cfg = json.loads(FIXTURE.read_text())
    for k, v in (text_config or {}).items():
        if v is None:
            cfg["text_config"].pop(k, None)
        else:
            cfg["text_config"][k] = v
    cfg.update(top or {})
    path = tmp_path / "config.json"
    path.write_text(raw if raw is not None else json.dumps(cfg))
    return path


def test_good_fixture_runs():
    run_bin("engram-v41dump", "config", FIXTURE)


@pytest.mark.parametrize("rows,needles", [
    ([384006168, 384016683], ["engram_num_embeddings[1] is 384016683", "384016682"]),
    ([384016682, 384006168], ["engram_num_embeddings[0] is 384016682", "384006168"]),
    ([384006168], ["engram_num_embeddings has 1 entries", "engram_layer_ids has 2"]),
])
def test_wrong_table_rows(tmp_path, rows, needles):
    line = refused("config", write(tmp_path, {"engram_num_embeddings": rows}))
    for n in needles:
        assert n in line, line


@pytest.mark.parametrize("key,value", [
    ("engram_vocab_size", 16000100),   # other primes
    ("engram_n_heads", 4),             # 12 heads
    ("engram_max_ngram_size", 3),      # orders 2, 3 only
])
def test_contradicting_hash_keys(tmp_path, key, value):
    line = refused("config", write(tmp_path, {key: value}))
    assert "engram_num_embeddings[0] is 384006168" in line and key in line, line


def test_compressed_vocab_contradicts_tokenizer(tmp_path):
    tok = tokfixtures.unpack("deepseek_v3", tmp_path)
    line = refused("config", FIXTURE, "--tokenizer", tok)
    assert "engram_compressed_vocab_size is 99092" in line and "98627" in line, line


def test_pad_outside_tokenizer(tmp_path):
    tok = tokfixtures.unpack("deepseek_v3", tmp_path)
    path = write(tmp_path, {"engram_compressed_vocab_size": 98627, "engram_pad_token_id": 10**9})
    assert "engram_pad_token_id 1000000000" in refused("config", path, "--tokenizer", tok)


@pytest.mark.parametrize("key,value", [
    ("engram_head_dim", 100),
    ("engram_head_dim", 0),
    ("engram_head_dim", "256"),
    ("engram_n_heads", 0),
    ("engram_n_heads", 2.5),
    ("engram_max_ngram_size", 1),
    ("engram_max_ngram_size", 99),
    ("engram_vocab_size", 0),
    ("engram_vocab_size", [16000000, 16000000, 16000000]),
    ("engram_vocab_size", 1e300),
    ("engram_pad_token_id", -1),
    ("engram_pad_token_id", 99092),    # no tokenizer: must be a compressed id too
    ("engram_compressed_vocab_size", 0),
    ("engram_compressed_vocab_size", None),
    ("engram_layer_ids", [1, 1]),
    ("engram_layer_ids", []),
    ("engram_layer_ids", [-1, 14]),
    ("engram_layer_ids", list(range(65))),
    ("engram_num_embeddings", [0, 384016682]),
    ("engram_num_embeddings", "384006168"),
    ("engram_num_embeddings", None),
    ("hc_mult", 0),
    ("hc_mult", None),
])
def test_bad_values(tmp_path, key, value):
    line = refused("config", write(tmp_path, {key: value}))
    assert key in line, line


def test_pad_alias_disagrees(tmp_path):
    line = refused("config", write(tmp_path, {"engram_pad_id": 3}))
    assert "engram_pad_token_id 2 and engram_pad_id 3" in line, line


def test_too_many_heads(tmp_path):
    line = refused("config", write(tmp_path, {"engram_n_heads": 1024, "engram_max_ngram_size": 16,
                                              "engram_layer_ids": list(range(5)),
                                              "engram_num_embeddings": [1] * 5}))
    assert "engram_n_heads" in line and "hash heads" in line, line


@pytest.mark.parametrize("raw", ["", "{", "[1, 2]", "null", "{\"text_config\": {}}",
                                 "{\"text_config\": 5}", "\xff\xfe"])
def test_not_a_v41_config(tmp_path, raw):
    line = refused("config", write(tmp_path, raw=raw))
    assert "config.json" in line, line


def test_missing_file(tmp_path):
    assert "cannot read" in refused("config", tmp_path / "nope.json")


# ---- tables ----

def test_truncated_packed_table(tmp_path):
    (tmp_path / "t.bin").write_bytes(bytes(264 * 3 + 5))
    line = refused("decode", "--head-dim", 256, "--packed", tmp_path / "t.bin", "--out", tmp_path / "o")
    assert "264-byte rows" in line, line


def test_split_tables_disagree(tmp_path):
    (tmp_path / "v.bin").write_bytes(bytes(256 * 4))
    (tmp_path / "s.bin").write_bytes(bytes(8 * 3))
    line = refused("decode", "--head-dim", 256, "--values", tmp_path / "v.bin", "--scales",
                   tmp_path / "s.bin", "--out", tmp_path / "o")
    assert "same whole number of rows" in line, line


@pytest.mark.parametrize("rows", ["3", "-1", "0,1,9223372036854775807"])
def test_row_outside_table(tmp_path, rows):
    (tmp_path / "t.bin").write_bytes(bytes(264 * 3))
    line = refused("decode", "--head-dim", 256, "--packed", tmp_path / "t.bin", "--rows", rows,
                   "--out", tmp_path / "o")
    assert "outside the table's 3 rows" in line, line


@pytest.mark.parametrize("d", [0, 48, 100000, -32])
def test_bad_head_dim(tmp_path, d):
    (tmp_path / "t.bin").write_bytes(bytes(264))
    assert "--head-dim" in refused("decode", "--head-dim", d, "--packed", tmp_path / "t.bin",
                                   "--out", tmp_path / "o")


def test_missing_tokenizer(tmp_path):
    assert "tokenizer" in refused("config", FIXTURE, "--tokenizer", tmp_path / "none")
