"""Hostile Engram table files (engram/store): truncated, wrong magic or
version, fields that disagree, rows past the end, a table of the wrong shape
for the model, a directory or a device in place of a file. engram-run and
engram-tables info refuse each with one line naming the file; never a crash
(also run under ASan/UBSan)."""
import os
import shutil
import struct

import pytest

from conftest import MODELS, run_bin

MODEL = MODELS / "qwen3_engram"
LAYER = "engram_layer_1.tbl"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    run_bin("engram-tables", "export", "--model", MODEL, "--out", out)
    return out


def tables_with(good, tmp_path, data):
    d = tmp_path / "t"
    shutil.copytree(good, d)
    f = d / LAYER
    f.unlink()
    if data is not None:
        f.write_bytes(data)
    return d, f


def patch(b, off, fmt, v):
    b = bytearray(b)
    struct.pack_into(fmt, b, off, v)
    return bytes(b)


def expect_error(d, f, *needles, tier="dram", info_bad=True):
    for args in (["--engram-tier", tier], ["--engram-tier", "nvme"], ["--engram-tier", "nvme", "--engram-io", "pread"]):
        p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", "5,6,7", "--max-tokens", "2",
                    "--engram-tables", d, *args, check=False)
        assert p.returncode == 1, p.stderr
        lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("engram_store:")]
        assert len(lines) == 1, p.stderr
        for n in (str(f), *needles):
            assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    if info_bad and f.is_file():
        p = run_bin("engram-tables", "info", f, check=False)
        assert p.returncode == 1 and str(f) in p.stderr


HEADER_CASES = {
    "empty": (lambda b: b"", "truncated header"),
    "short": (lambda b: b[:30], "truncated header"),
    "header-only": (lambda b: b[:4096], "truncated"),
    "half-rows": (lambda b: b[: 4096 + (len(b) - 4096) // 2], "truncated"),
    "magic": (lambda b: b"GGUF" + b[4:], "wrong magic"),
    "version": (lambda b: patch(b, 8, "<I", 99), "unsupported version 99"),
    "dtype": (lambda b: patch(b, 12, "<I", 0), "unknown dtype 0"),
    "rows-past-end": (lambda b: patch(b, 16, "<Q", 10**9), "truncated"),
    "rows-huge": (lambda b: patch(b, 16, "<Q", 2**64 - 1), "rows"),
    "rows-zero": (lambda b: patch(b, 16, "<Q", 0), "rows 0"),
    "cols-huge": (lambda b: patch(b, 24, "<I", 2**32 - 1), "cols"),
    "row-bytes": (lambda b: patch(b, 28, "<I", 1), "row_bytes 1"),
    "stride": (lambda b: patch(b, 32, "<I", 2**31), "row_stride"),
    "stride-zero": (lambda b: patch(b, 32, "<I", 0), "row_stride 0"),
    "offset-odd": (lambda b: patch(b, 40, "<Q", 4095), "data_offset 4095"),
    "offset-huge": (lambda b: patch(b, 40, "<Q", 2**63), "data_offset"),
    "garbage": (lambda b: os.urandom(8192), "wrong magic"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_bad_header(good, tmp_path, case):
    mutate, needle = HEADER_CASES[case]
    d, f = tables_with(good, tmp_path, mutate((good / LAYER).read_bytes()))
    expect_error(d, f, needle)


def test_wrong_shape_for_model(good, tmp_path):
    """A valid table file of another layer's row count."""
    d, f = tables_with(good, tmp_path, (good / "engram_layer_2.tbl").read_bytes())
    expect_error(d, f, "needs [10170, 8]", info_bad=False)


def test_missing_file(good, tmp_path):
    d, f = tables_with(good, tmp_path, None)
    expect_error(d, f, "cannot open")


def test_directory_instead_of_file(good, tmp_path):
    d, f = tables_with(good, tmp_path, None)
    f.mkdir()
    expect_error(d, f, "not a regular file")


def test_device_instead_of_file(good, tmp_path):
    d, f = tables_with(good, tmp_path, None)
    f.symlink_to("/dev/zero")
    expect_error(d, f, "not a regular file")


def test_bad_flags():
    for args, needle in [(["--engram-tier", "hbm"], "--engram-tier"), (["--engram-io", "aio"], "--engram-io"),
                         (["--engram-queue-depth", "0"], "--engram-queue-depth"),
                         (["--engram-queue-depth", "5000"], "--engram-queue-depth")]:
        p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", "5", "--engram-tables", "/nonexistent",
                    *args, check=False)
        assert p.returncode == 2 and needle in p.stderr, p.stderr


def test_tables_cli_usage(tmp_path):
    assert run_bin("engram-tables", check=False).returncode == 2
    assert run_bin("engram-tables", "export", "--model", check=False).returncode == 2
    p = run_bin("engram-tables", "export", "--model", MODELS / "qwen3", "--out", tmp_path / "o", check=False)
    assert p.returncode == 1 and "no Engram layers" in p.stderr
