"""Engram tables served from aligned table files (engram/store): exported
from the checkpoint, read from DRAM (mmap), from NVMe through io_uring with
O_DIRECT, through pread, and buffered. Greedy generation must be bitwise the
same wherever the table lives: logits of the prompt, every gate, every id."""
import json

import pytest

from conftest import BUILD, MODELS, SOURCE, run_bin

FIXTURES = [MODELS / "qwen3_engram", SOURCE / "models" / "engram-lexicon"]
PROMPT = "5,6,7,8,9,10,11,12,13,14,15,16,17"

TIERS = {
    "dram": ["--engram-tier", "dram"],
    "dram-hugepages": ["--engram-tier", "dram", "--engram-hugepages"],
    "nvme-uring": ["--engram-tier", "nvme", "--engram-io", "uring", "--engram-queue-depth", "8"],
    "nvme-uring-qd1": ["--engram-tier", "nvme", "--engram-io", "uring", "--engram-queue-depth", "1"],
    "nvme-pread": ["--engram-tier", "nvme", "--engram-io", "pread"],
    "nvme-buffered": ["--engram-tier", "nvme", "--engram-buffered"],
}


def generate(model, tmp_path, tag, extra, chunk):
    logits = tmp_path / f"logits-{tag}.bin"
    p = run_bin("engram-run", "--model", model, "--prompt-ids", PROMPT, "--max-tokens", "12",
                "--temperature", "0", "--ignore-eos", "--prefill-chunk", chunk, "--print-ids",
                "--print-gates", "--dump-logits", logits, *extra)
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    gates = ids = None
    for l in lines:
        if l.startswith("{") and "gates" in l:
            gates = l
        elif l.startswith("["):
            ids = json.loads(l)
    assert gates is not None and ids is not None, p.stdout
    return logits.read_bytes(), gates, ids


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.name)
def exported(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    run_bin("engram-tables", "export", "--model", request.param, "--out", out)
    return request.param, out


def test_export_info(exported):
    model, out = exported
    files = sorted(out.glob("engram_layer_*.tbl"))
    cfg = json.loads((model / "config.json").read_text())
    assert [f.name for f in files] == sorted(f"engram_layer_{i}.tbl" for i in cfg["engram"]["layer_ids"])
    for f in files:
        info = json.loads(run_bin("engram-tables", "info", f).stdout)
        assert info["data_offset"] % 4096 == 0
        stride = info["row_stride"]
        assert stride >= info["row_bytes"] and (stride & (stride - 1)) == 0 and 4096 % stride == 0
        assert f.stat().st_size % 4096 == 0
        assert f.stat().st_size >= info["data_offset"] + info["rows"] * stride


@pytest.mark.parametrize("chunk", ["256", "1"])
@pytest.mark.parametrize("tier", sorted(TIERS))
def test_bitwise_identical(exported, tmp_path, tier, chunk):
    model, out = exported
    ref = generate(model, tmp_path, "ckpt", [], chunk)
    got = generate(model, tmp_path, tier, ["--engram-tables", out, *TIERS[tier]], chunk)
    assert got[0] == ref[0], "logits differ"
    assert got[1] == ref[1], "gates differ"
    assert got[2] == ref[2], "generated ids differ"


def test_odirect_and_uring_used(exported):
    """No fallback note on a filesystem that takes O_DIRECT and io_uring (else the note names it)."""
    model, out = exported
    p = run_bin("engram-run", "--model", model, "--prompt-ids", PROMPT, "--max-tokens", "1",
                "--engram-tables", out, "--engram-tier", "nvme")
    notes = [l for l in p.stderr.splitlines() if l.startswith("engram_store:")]
    for n in notes:
        assert "O_DIRECT" in n or "io_uring" in n, n


def test_missing_tables_dir(tmp_path):
    p = run_bin("engram-run", "--model", FIXTURES[0], "--prompt-ids", "5,6", "--max-tokens", "1",
                "--engram-tables", tmp_path / "nope", check=False)
    assert p.returncode == 1
    assert "engram_layer_1.tbl" in p.stderr and "cannot open" in p.stderr


def test_store_flag_needs_tables():
    p = run_bin("engram-run", "--model", FIXTURES[0], "--prompt-ids", "5,6", "--engram-tier", "nvme",
                check=False)
    assert p.returncode == 2 and "--engram-tables" in p.stderr


@pytest.mark.parametrize("tier", [["--engram-tier", "dram"], ["--engram-tier", "nvme", "--engram-io", "uring"]],
                         ids=["dram", "nvme"])
def test_server_same_completion_and_gates(tmp_path, tier):
    """engram-server --engram-tables: the same text and gates as from the checkpoint."""
    import requests
    from serverutil import Server

    model = FIXTURES[1]
    out = tmp_path / "tables"
    run_bin("engram-tables", "export", "--model", model, "--out", out)
    body = dict(model="engram-lexicon", prompt="The capital of France is", max_tokens=8, temperature=0,
                engram_gates=True)
    got = []
    for extra in ([], ["--engram-tables", out, *tier]):
        s = Server(*extra, model=model)
        try:
            r = requests.post(s.url + "/v1/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
            j = r.json()
            got.append((j["choices"][0]["text"], j["engram_gates"]))
        finally:
            s.stop()
    assert got[0] == got[1]
