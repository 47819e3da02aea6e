"""Hostile Engram table files (engram/store): truncated, wrong magic or
version, fields that disagree, rows past the end, a table of the wrong shape
for the model, a directory or a device in place of a file. engram-run and
engram-tables info refuse each with one line naming the file; never a crash
(also run under ASan/UBSan). Also bad store flags (sizes, combinations) and a
table directory that cannot be written, for engram-run and engram-server."""
import os
import shutil
import struct
import subprocess

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


def test_missing_file_is_written(good, tmp_path):
    d, f = tables_with(good, tmp_path, None)
    p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", "5,6,7", "--max-tokens", "2", "--engram-tables", d)
    assert str(f) in p.stderr and f.read_bytes() == (good / LAYER).read_bytes()


def test_dangling_symlink(good, tmp_path):
    """A name that exists but cannot be opened is not replaced."""
    d, f = tables_with(good, tmp_path, None)
    f.symlink_to(tmp_path / "nowhere")
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


BAD_SIZES = ["12Q", "-1", "0", "", "1.5G", "1 K", "K", "+4K", "99999999999999999999", "20000000000T", "4Kb"]


@pytest.mark.parametrize("flag", ["--engram-dram-budget", "--engram-hbm-cache"])
def test_bad_sizes(tmp_path, flag):
    for v in BAD_SIZES:
        p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", "5", "--engram-table-dir", tmp_path, flag, v,
                    check=False)
        assert p.returncode == 2 and flag in p.stderr and "1K = 1024" in p.stderr, (v, p.stderr)
        if v == "":  # for the server: unset, as in the config file
            continue
        p = run_server("--model", MODEL, "--engram-table-dir", tmp_path, flag, v)
        assert p.returncode == 2 and flag in p.stderr and "1K = 1024" in p.stderr, (v, p.stderr)
    assert not list(tmp_path.iterdir())  # nothing written before the flags were checked


def run_server(*args):
    from conftest import BUILD
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_") or k in ("ENGRAM_BUILD_DIR",
                                                                                       "ENGRAM_SOURCE_DIR")}
    from serverutil import free_port
    p = subprocess.run([str(BUILD / "engram-server"), "--port", str(free_port()), *map(str, args)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode >= 0 and "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p


def test_good_sizes(good):
    for v in ("4096", "64K", "64k", "1M", "1MiB", "1MB", "2G", "1T"):
        p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", "5", "--max-tokens", "1", "--engram-table-dir", good,
                    "--engram-dram-budget", v, "--engram-hbm-cache", v)
        assert "--engram-hbm-cache on the CPU backend keeps the hot rows in host memory" in p.stderr


def test_bad_store_flag_combinations(good):
    p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", "5", "--engram-table-dir", good, "--engram-tier", "dram",
                "--engram-dram-budget", "1M", check=False)
    assert p.returncode == 2 and "--engram-tier dram" in p.stderr
    p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", "5", "--engram-table-dir", good, "--engram-tables",
                good / "other", check=False)
    assert p.returncode == 2 and "contradicts" in p.stderr
    p = run_server("--model", MODEL, "--engram-table-dir", good, "--engram-tier", "dram", "--engram-dram-budget", "1M")
    assert p.returncode == 2 and "--engram-tier dram" in p.stderr
    p = run_server("--model", MODEL, "--engram-dram-budget", "1M")
    assert p.returncode == 2 and "--engram-table-dir" in p.stderr
    p = run_server("--model", MODEL, "--engram-table-dir", good, "--engram-tables", good / "other")
    assert p.returncode == 2 and "disagree" in p.stderr
    p = run_server("--model", MODEL, "--engram-tier", "hbm")
    assert p.returncode == 2 and "--engram-tier" in p.stderr


def test_unwritable_table_dir(tmp_path):
    """A table directory that cannot be created or written: one line, exit 1."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for d, needle in ((blocker, "not a directory"), (blocker / "sub", "cannot create")):
        p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", "5", "--engram-table-dir", d, check=False)
        assert p.returncode == 1 and str(d) in p.stderr and needle in p.stderr, p.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        p = run_bin("engram-run", "--model", MODEL, "--prompt-ids", "5", "--engram-table-dir", ro, check=False)
        if os.geteuid() != 0:  # root writes anyway
            assert p.returncode == 1 and "cannot create" in p.stderr and ".tmp" in p.stderr, p.stderr
    finally:
        os.chmod(ro, 0o755)
    p = run_server("--model", MODEL, "--engram-table-dir", blocker / "sub")
    assert p.returncode == 1 and "cannot create" in p.stderr, p.stderr


def test_tables_cli_usage(tmp_path):
    assert run_bin("engram-tables", check=False).returncode == 2
    assert run_bin("engram-tables", "export", "--model", check=False).returncode == 2
    p = run_bin("engram-tables", "export", "--model", MODELS / "qwen3", "--out", tmp_path / "o", check=False)
    assert p.returncode == 1 and "no Engram layers" in p.stderr
