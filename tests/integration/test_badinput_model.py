"""Bad checkpoints: every broken file gets a one-line error naming the file
and the tensor or key, a non-zero exit, and no crash (this file also runs
against the ASan/UBSan build, where a sanitizer report fails the test)."""
import json
import shutil
import struct

import numpy as np
import pytest

from conftest import MODELS, run_bin

SRC = MODELS / "llama3"  # single-file f32 checkpoint
PROMPT = "5,6,7"


def st_bytes(header: dict, data: bytes, pad_to=8) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % pad_to)
    return struct.pack("<Q", len(h)) + h + data


def read_st(path):
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def copy_model(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(SRC, d)
    return d


def run_model(d, *extra):
    p = run_bin("engram-run", "--model", d, "--prompt-ids", PROMPT, "--max-tokens", "2",
                *extra, check=False)
    return p


def expect_error(d, *needles):
    p = run_model(d)
    assert p.returncode == 1, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def rewrite(d, mutate):
    """Applies mutate(header, data) -> (header, data) to model.safetensors."""
    f = d / "model.safetensors"
    header, data = read_st(f)
    header, data = mutate(header, data)
    f.write_bytes(st_bytes(header, data) if isinstance(header, dict) else header + data)


def test_good_copy_runs(tmp_path):
    assert run_model(copy_model(tmp_path)).returncode == 0


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "config.json")


def test_missing_safetensors(tmp_path):
    d = copy_model(tmp_path)
    (d / "model.safetensors").unlink()
    expect_error(d, "no *.safetensors")


@pytest.mark.parametrize("size", [0, 5, 8, 100, 2000])
def test_truncated_file(tmp_path, size):
    d = copy_model(tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:size])
    expect_error(d, "model.safetensors")


def test_header_length_past_end(tmp_path):
    d = copy_model(tmp_path)
    f = d / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[:8] = struct.pack("<Q", len(raw) * 4)
    f.write_bytes(bytes(raw))
    expect_error(d, "model.safetensors", "header length")


def test_header_not_json(tmp_path):
    d = copy_model(tmp_path)
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 16) + b"{not json at all")
    expect_error(d, "model.safetensors", "JSON")


def test_offsets_past_end(tmp_path):
    d = copy_model(tmp_path)
    def m(h, data):
        h["model.norm.weight"]["data_offsets"] = [len(data) - 8, len(data) + 248]
        return h, data
    rewrite(d, m)
    expect_error(d, "model.safetensors", "model.norm.weight", "data_offsets")


def test_overlapping_tensors(tmp_path):
    d = copy_model(tmp_path)
    def m(h, data):
        a = h["model.layers.0.input_layernorm.weight"]["data_offsets"]
        h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"] = [a[0] + 4, a[1] + 4]
        return h, data
    rewrite(d, m)
    expect_error(d, "model.safetensors", "overlaps")


def test_unknown_dtype(tmp_path):
    d = copy_model(tmp_path)
    def m(h, data):
        h["model.norm.weight"]["dtype"] = "F12"
        return h, data
    rewrite(d, m)
    expect_error(d, "model.norm.weight", "unknown dtype F12")


def test_byte_count_disagrees_with_shape(tmp_path):
    d = copy_model(tmp_path)
    def m(h, data):
        h["model.norm.weight"]["shape"] = [65]
        return h, data
    rewrite(d, m)
    expect_error(d, "model.norm.weight", "bytes")


def test_wrong_shape(tmp_path):
    """A consistent file whose tensor has the wrong shape for the config."""
    d = copy_model(tmp_path)
    def m(h, data):
        h["model.layers.1.mlp.up_proj.weight"]["shape"] = [64, 160]  # transposed
        return h, data
    rewrite(d, m)
    expect_error(d, "model.layers.1.mlp.up_proj.weight", "[64, 160]", "expected [160, 64]")


def test_integer_dtype_tensor(tmp_path):
    d = copy_model(tmp_path)
    def m(h, data):
        h["model.norm.weight"]["dtype"] = "I32"
        return h, data
    rewrite(d, m)
    expect_error(d, "model.norm.weight", "I32")


def test_missing_tensor(tmp_path):
    d = copy_model(tmp_path)
    def m(h, data):
        del h["model.layers.1.self_attn.k_proj.weight"]
        return h, data
    rewrite(d, m)
    expect_error(d, "missing tensor model.layers.1.self_attn.k_proj.weight")


def test_misaligned_tensor(tmp_path):
    d = copy_model(tmp_path)
    def m(h, data):
        off = h["model.norm.weight"]["data_offsets"]
        h["model.norm.weight"]["data_offsets"] = [off[0] + 1, off[1] + 1]
        del h["lm_head.weight"]  # keep clear of its neighbour; fails earlier on alignment
        return h, data
    rewrite(d, m)
    expect_error(d, "model.norm.weight", "aligned")


def test_index_names_missing_file(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(MODELS / "qwen2", d)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    first = next(iter(idx["weight_map"]))
    idx["weight_map"][first] = "model-99999-of-99999.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    expect_error(d, "model-99999-of-99999.safetensors")


def test_index_with_path_escape(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(MODELS / "qwen2", d)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    first = next(iter(idx["weight_map"]))
    idx["weight_map"][first] = "../../etc/passwd"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    expect_error(d, "weight_map")


CONFIG_CASES = [
    ("hidden_size", None, "missing key hidden_size"),
    ("hidden_size", -64, "hidden_size"),
    ("hidden_size", 1e12, "hidden_size"),
    ("hidden_size", "64", "hidden_size"),
    ("num_hidden_layers", 0, "num_hidden_layers"),
    ("vocab_size", 3.5, "vocab_size"),
    ("num_key_value_heads", 3, "num_key_value_heads"),
    ("rms_norm_eps", -1, "rms_norm_eps"),
    ("hidden_act", "gelu", "hidden_act"),
    ("architectures", ["GPT2LMHeadModel"], "unsupported architecture GPT2LMHeadModel"),
    ("rope_parameters", {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}, "rope_type yarn"),
    ("rope_parameters", "fast", "rope_parameters"),
    ("head_dim", 15, "head_dim"),
    ("tie_word_embeddings", "yes", "tie_word_embeddings"),
]


@pytest.mark.parametrize("key,value,needle", CONFIG_CASES)
def test_bad_config(tmp_path, key, value, needle):
    d = copy_model(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    if value is None:
        del cfg[key]
    else:
        cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    line = expect_error(d, needle)
    assert "config.json" in line


@pytest.mark.parametrize("text", ["", "[]", "{", "null", '{"architectures": 5}', "\x00\xff"])
def test_config_not_an_object(tmp_path, text):
    d = copy_model(tmp_path)
    (d / "config.json").write_text(text)
    expect_error(d, "config.json")


def test_no_architecture_at_all(tmp_path):
    d = copy_model(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["architectures"], cfg["model_type"]
    (d / "config.json").write_text(json.dumps(cfg))
    expect_error(d, "unsupported architecture")


@pytest.mark.parametrize("args,needle", [
    (["--prompt-ids", "1,,2"], "--prompt-ids"),
    (["--prompt-ids", "-1"], "--prompt-ids"),
    (["--prompt-ids", "600"], "outside the vocabulary"),
    (["--prompt-ids", "1", "--max-tokens", "1000"], "exceed the context"),
    (["--prompt-ids", "1", "--temperature", "nan"], "--temperature"),
    (["--prompt-ids", "1", "--device", "tpu"], "device tpu"),
    (["--prompt-ids", "1", "--bogus"], "unknown option"),
])
def test_bad_arguments(args, needle):
    p = run_bin("engram-run", "--model", SRC, *args, check=False)
    assert p.returncode in (1, 2)
    assert needle in p.stderr


def test_nan_weights_do_not_crash(tmp_path):
    """Garbage numbers are the model's problem, not a crash: NaN logits still give a token."""
    d = copy_model(tmp_path)
    def m(h, data):
        off = h["model.norm.weight"]["data_offsets"]
        arr = bytearray(data)
        arr[off[0]:off[1]] = np.full(64, np.nan, dtype="<f4").tobytes()
        return h, bytes(arr)
    rewrite(d, m)
    p = run_model(d, "--temperature", "0.7")
    assert p.returncode == 0, p.stderr
