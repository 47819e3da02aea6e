"""Golden tests of DeepSeek-V4.1's Engram on a DeepSeek-V4 backbone, on the CPU, against the
composition of transformers 5.25's DeepseekV4ForCausalLM and SGLang 0.5.23's Engram (fixture
tests/fixtures/models/deepseek_v41, made by tools/make_deepseek_v41_fixture.py: Engram at layers 1
and 2, FP8 e4m3 rows with ue8m0 scales, FP8 wkv, a 512-id BPE tokenizer that compresses to 355),
and the same with V4.1's backbone differences hc_pre_from_prev_sublayer and q_head_norm false as
SGLang's code runs them (fixture deepseek_v41_backbone, same tool).
Logits within 1e-4 (max |logit| about 7.5), greedy tokens identical, the hashed table rows
identical, gates within 1e-5, every prefill chunking bit-identical, and the same bits whatever
tier the tables come from (checkpoint tensors, DRAM table file, NVMe behind a 4 KiB DRAM budget,
the hot-row cache). A config or checkpoint that disagrees fails with one line naming what."""
import json
import shutil
import struct

import numpy as np
import pytest

from conftest import MODELS, greedy_logits, run_bin

NAME = "deepseek_v41"
BACKBONE = "deepseek_v41_backbone"  # hc_pre_from_prev_sublayer true, q_head_norm false
SRC = MODELS / NAME
G = json.loads((SRC / "golden.json").read_text())
GOLDEN = {n: json.loads((MODELS / n / "golden.json").read_text()) for n in (NAME, BACKBONE)}
LAYERS = ["1", "2"]


def run(model_dir, tmp_path, chunk, *extra, prompt=None, max_tokens=24, check=True):
    g = GOLDEN.get(model_dir.name, G)  # a fixture's own prompt; copies (tmp dirs) take deepseek_v41's
    return greedy_logits(model_dir, tmp_path, chunk, prompt or g["prompt_ids"], *extra, max_tokens=max_tokens,
                         check=check)


@pytest.mark.parametrize("name", [NAME, BACKBONE])
@pytest.mark.parametrize("chunk", [256, 5, 1])
def test_logits_greedy_rows_and_gates_match_reference(name, chunk, tmp_path):
    src, g = MODELS / name, GOLDEN[name]
    ref = np.fromfile(src / "logits.f32", dtype="<f4")
    lines, logits = run(src, tmp_path, chunk, "--print-gates", "--print-rows")
    assert logits.shape == ref.shape and np.isfinite(logits).all()
    diff = float(np.abs(logits - ref).max())
    assert diff < 1e-4, f"max |logit diff| {diff}"
    assert json.loads(lines[-1]) == g["greedy_ids"]
    rows = json.loads(lines[-2])
    assert rows["layers"] == [1, 2]
    ours = np.array(rows["rows"])  # (tokens, layers, columns)
    for li, lid in enumerate(LAYERS):
        assert (ours[:, li, :] == np.array(g["rows"][lid])).all(), f"layer {lid}: rows differ"
    gates = np.array(json.loads(lines[-3])["gates"])
    ref_g = np.array([g["gates"][l] for l in LAYERS]).T
    assert gates.shape == ref_g.shape
    assert float(np.abs(gates - ref_g).max()) < 1e-5
    assert gates.std() > 0.05  # the gates really vary


@pytest.mark.parametrize("name", [NAME, BACKBONE])
def test_logits_at_every_prompt_position(name, tmp_path):
    """Each prefix of the prompt, its last position against logits_all.f32 (prompt_len, vocab)."""
    src = MODELS / name
    prompt = GOLDEN[name]["prompt_ids"]
    ref = np.fromfile(src / "logits_all.f32", dtype="<f4").reshape(len(prompt), -1)
    worst = 0.0
    for n in range(1, len(prompt) + 1):
        _, logits = run(src, tmp_path, 7, prompt=prompt[:n], max_tokens=1)
        worst = max(worst, float(np.abs(logits - ref[n - 1]).max()))
    assert worst < 1e-4, f"max |logit diff| over all positions {worst}"


@pytest.mark.parametrize("name", [NAME, BACKBONE])
def test_chunkings_are_bit_identical(name, tmp_path):
    """The hash history and the backbone's decode state make every chunking equal full prefill."""
    src = MODELS / name
    _, base = run(src, tmp_path, 256)
    for chunk in [1, 2, 3, 5, 9]:
        assert np.array_equal(run(src, tmp_path, chunk)[1], base), chunk


def test_v41_backbone_keys_change_the_model(tmp_path):
    """The backbone fixture's keys are read, not ignored: without q_head_norm false the logits move
    (by about the golden q_head_norm_effect), and without hc_pre_from_prev_sublayer the model wants
    the hc_head tensors that a V4.1 checkpoint does not have."""
    src = MODELS / BACKBONE
    d = tmp_path / "m"
    shutil.copytree(src, d)
    edit_config(d, q_head_norm=True)
    _, logits = run(d, tmp_path, 256, prompt=GOLDEN[BACKBONE]["prompt_ids"], max_tokens=1)
    ref = np.fromfile(src / "logits.f32", dtype="<f4")
    moved = float(np.abs(logits - ref).max())
    assert abs(moved - GOLDEN[BACKBONE]["v41_backbone"]["q_head_norm_effect"]) < 1e-3, moved
    edit_config(d, q_head_norm=False, hc_pre_from_prev_sublayer=False)
    expect_error(d, tmp_path, "hc_head")
    edit_config(d, hc_pre_from_prev_sublayer="yes")
    expect_error(d, tmp_path, "hc_pre_from_prev_sublayer")


@pytest.mark.parametrize("tier", [["--engram-tier", "dram"],
                                  ["--engram-tier", "nvme", "--engram-dram-budget", "4K"],
                                  ["--engram-tier", "nvme", "--engram-dram-budget", "4K", "--engram-hbm-cache", "16K"]])
def test_store_tiers_are_bit_identical(tier, tmp_path):
    """Rows exported to table files (FP8 + scales, 66 bytes a row) and read back through the
    store give the checkpoint tensors' bits; the exported file is the one engram-tables writes."""
    _, base = run(SRC, tmp_path, 5)
    tables = tmp_path / "tables"
    run_bin("engram-tables", "export", "--model", SRC, "--out", tables)
    info = run_bin("engram-tables", "info", tables / "engram_layer_1.tbl").stdout
    assert "fp8_ue8m0" in info and str(G["sglang_checks"]["table_rows"][0]) in info, info
    for chunk in [256, 5, 1]:
        lines, logits = run(SRC, tmp_path, chunk, "--engram-table-dir", tables, *tier)
        assert np.array_equal(logits, base), chunk
        assert json.loads(lines[-1]) == G["greedy_ids"]


def checkpoint_tensors(path):
    """The raw bytes of every tensor of a safetensors file, by name (F8 dtypes as uint8, read by the
    format's own layout: an 8-byte header length, the JSON header, the data)."""
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    head = json.loads(b[8:8 + n])
    return {k: (v["shape"], np.frombuffer(b, np.uint8, v["data_offsets"][1] - v["data_offsets"][0],
                                          8 + n + v["data_offsets"][0]))
            for k, v in head.items() if k != "__metadata__"}


def test_exported_table_layout(tmp_path):
    """engram-tables export writes V4.1's rows (64 e4m3 bytes, then 2 ue8m0 scale bytes: 66) at the
    dense stride, 72 bytes apart (66 rounded up to 8; a power of two, 128, before issue 17), so that
    rows straddle 4 KiB blocks: read here by store.h's documented layout, every row is the
    checkpoint's bytes, the padding zero, the file no longer than its rows need, and the per-block
    checksums hold (engram-tables verify)."""
    tables = tmp_path / "tables"
    run_bin("engram-tables", "export", "--model", SRC, "--out", tables)
    ckpt = checkpoint_tensors(SRC / "model.safetensors")
    for lid in LAYERS:
        f = tables / f"engram_layer_{lid}.tbl"
        b = f.read_bytes()
        assert b[:8] == b"ENGRTBL\0"
        version, dtype, rows, cols, row_bytes, stride, reserved, data_offset = struct.unpack("<IIQIIIIQ", b[8:48])
        (rows_w, cols_w), weight = ckpt[f"model.layers.{lid}.engram.embed.weight"]
        (rows_s, groups), scale = ckpt[f"model.layers.{lid}.engram.embed.scale"]
        assert (version, dtype, rows, cols, reserved, data_offset) == (1, 4, rows_w, cols_w, 0, 4096)
        assert rows_s == rows and groups * 32 == cols and row_bytes == cols + groups
        assert stride == (row_bytes + 7) // 8 * 8 == 72
        assert any(r * stride % 4096 + row_bytes > 4096 for r in range(rows))  # some rows straddle two blocks
        data_end = data_offset + (rows * stride + 4095) // 4096 * 4096
        n_sums = (data_end - data_offset + 65535) // 65536
        assert len(b) == data_end + (n_sums * 4 + 4095) // 4096 * 4096
        t = np.frombuffer(b, np.uint8, rows * stride, data_offset).reshape(rows, stride)
        assert (t[:, :cols] == weight.reshape(rows, cols)).all()
        assert (t[:, cols:row_bytes] == scale.reshape(rows, groups)).all()
        tail = np.frombuffer(b, np.uint8, data_end - data_offset - rows * stride, data_offset + rows * stride)
        assert (t[:, row_bytes:] == 0).all() and not tail.any()
        v = json.loads(run_bin("engram-tables", "verify", f).stdout)
        assert v["blocks"] == n_sums and v["verified"] is True, v


# ---- refusals: one line naming what is wrong ----


def copy_fixture(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(SRC, d)
    return d


def expect_error(d, tmp_path, *words):
    p = run(d, tmp_path, 256, prompt=G["prompt_ids"][:4], check=False)
    assert p.returncode != 0
    lines = [l for l in p.stderr.strip().splitlines() if l]
    assert len(lines) == 1, p.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def edit_config(d, **kv):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in kv.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def test_compressed_vocab_disagreement_is_refused(tmp_path):
    """As SGLang's EngramHasher asserts: every multiplier depends on Vc, so a config whose
    engram_compressed_vocab_size differs from the rebuilt compressed tokenizer does not start."""
    d = copy_fixture(tmp_path)
    edit_config(d, engram_compressed_vocab_size=99092)
    expect_error(d, tmp_path, "engram_compressed_vocab_size", "99092", "355")


def test_table_rows_disagreement_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    rows = G["sglang_checks"]["table_rows"]
    edit_config(d, engram_num_embeddings=[rows[0], rows[1] + 1])
    expect_error(d, tmp_path, "engram_num_embeddings[1]", str(rows[1] + 1), str(rows[1]))


@pytest.mark.parametrize("key,value,words", [
    ("candidate_source_layer_id", 1, ["candidate_source_layer_id 1", "no index source"]),
    ("vision_n_layers", 2, ["vision_n_layers"]),
    ("model_type", "deepseek_v41", ["deepseek_v41"]),
    ("text_config", {"engram_layer_ids": [1]}, ["text_config"]),
    ("engram_layer_ids", [1, 9], ["engram_layer_ids[1]", "num_hidden_layers"]),
    ("engram_head_dim", 48, ["engram_head_dim", "32"]),
])
def test_v41_keys_not_implemented_are_refused(key, value, words, tmp_path):
    """A V4.1 key the reference reads and this engine does not implement is refused, not ignored."""
    d = copy_fixture(tmp_path)
    edit_config(d, **{key: value})
    expect_error(d, tmp_path, *words)


def test_v4_values_of_the_v41_keys_are_accepted(tmp_path):
    d = copy_fixture(tmp_path)
    edit_config(d, hc_pre_from_prev_sublayer=False, q_head_norm=True, kv_source_layer_ids=[],
                index_source_layer_ids=[], candidate_source_layer_id=-1, candidate_topk_blocks=4,
                candidate_block_size=16)  # SGLang reads the block keys only through a candidate source
    _, logits = run(d, tmp_path, 256, max_tokens=1)
    assert np.array_equal(logits, run(SRC, tmp_path, 256, max_tokens=1)[1])


# safetensors read and written by hand: the test environment has no FP8 dtypes in numpy.
def st_read(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    meta = hdr.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in hdr.items()}, meta


def st_write(path, tensors, meta=None):
    hdr, off, blobs = ({"__metadata__": meta} if meta else {}), 0, []
    for k, (dt, shape, data) in tensors.items():
        hdr[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def edit_tensors(d, fn):
    t, meta = st_read(d / "model.safetensors")
    fn(t)
    st_write(d / "model.safetensors", t, meta)


E1 = "model.layers.1.engram."


def test_release_naming_loads(tmp_path):
    """DeepSeek's release names (no "model." prefix) load to the same bits."""
    d = copy_fixture(tmp_path)
    edit_tensors(d, lambda t: [t.__setitem__(k.removeprefix("model."), t.pop(k))
                               for k in list(t) if ".engram." in k])
    assert np.array_equal(run(d, tmp_path, 256, max_tokens=1)[1], run(SRC, tmp_path, 256, max_tokens=1)[1])


def drop_rows(t, name, n_cols):
    dt, shape, data = t[name]
    t[name] = (dt, [shape[0] - 1, *shape[1:]], data[:-n_cols])


@pytest.mark.parametrize("edit,words", [
    (lambda t: drop_rows(t, E1 + "embed.weight", 64), [E1 + "embed.weight", "F8_E4M3", "[4062, 64]"]),
    (lambda t: drop_rows(t, E1 + "embed.scale", 2), [E1 + "embed.scale", "F8_E8M0", "[4062, 2]"]),
    (lambda t: t.__setitem__(E1 + "embed.scale", ("U8", *t[E1 + "embed.scale"][1:])), [E1 + "embed.scale", "F8_E8M0"]),
    (lambda t: t.__setitem__(E1 + "embed.weight", ("U8", *t[E1 + "embed.weight"][1:])), [E1 + "embed.weight", "F8_E4M3"]),
    (lambda t: t.pop(E1 + "embed.scale"), ["missing tensor", "engram.embed.scale"]),
    (lambda t: t.pop(E1 + "q_weight"), ["missing tensor", "engram.q_weight"]),
    (lambda t: drop_rows(t, E1 + "k_weight", 64 * 4), [E1 + "k_weight"]),
    (lambda t: t.pop(E1 + "wkv.scale"), [E1 + "wkv.weight", "no scale"]),
    (lambda t: drop_rows(t, E1 + "wkv.weight", 256), [E1 + "wkv.weight", "[320, 256]"]),
    (lambda t: t.__setitem__(E1 + "wkv.scale", ("F8_E8M0", [3, 1], t[E1 + "wkv.scale"][2][:3])), [E1 + "wkv.scale", "[3, 2]"]),
], ids=["table-rows", "scale-rows", "scale-dtype", "table-dtype", "no-scale", "no-q_weight", "k_weight-shape",
        "wkv-no-scale", "wkv-shape", "wkv-scale-shape"])
def test_bad_engram_tensors_are_refused(edit, words, tmp_path):
    d = copy_fixture(tmp_path)
    edit_tensors(d, edit)
    expect_error(d, tmp_path, *words)


def test_truncated_checkpoint_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    expect_error(d, tmp_path, "model.safetensors")


def test_missing_tokenizer_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    (d / "tokenizer.json").unlink()
    expect_error(d, tmp_path, "tokenizer")
