"""Per-block CRC-32C checksums of Engram table files (issue 23): written by
engram-tables export (engram/table_file.c), checked by engram-tables verify.
The checksums are compared with the crc32c package (ICRAR's, an outside
implementation); a flipped byte is named by block, bytes and rows; a file
without checksums (as written before them) still loads and verify says it has
none. Both for 32-byte f32 rows (qwen3_engram) and for V4.1's 66-byte FP8
rows at the dense stride of 72 (deepseek_v41), whose rows straddle blocks."""
import shutil
import struct

import crc32c
import pytest

from conftest import MODELS, run_bin

@pytest.fixture(scope="module", params=[MODELS / "qwen3_engram", MODELS / "deepseek_v41"], ids=lambda p: p.name)
def model(request):
    return request.param


@pytest.fixture(scope="module")
def tables(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    run_bin("engram-tables", "export", "--model", model, "--out", out)
    return out


def layout(b):
    """The header fields (store.h's layout) of a table file's bytes."""
    rows, cols, rb, stride, _, data_off = struct.unpack_from("<QIIIIQ", b, 16)
    magic, kind, block, sums_off, n_blocks, sums_crc, hdr_crc = struct.unpack_from("<8sIIQQII", b, 48)
    return dict(rows=rows, row_bytes=rb, stride=stride, data_off=data_off, magic=magic, kind=kind, block=block, sums_off=sums_off,
                n_blocks=n_blocks, sums_crc=sums_crc, hdr_crc=hdr_crc)


def test_checksums_match_reference(tables):
    files = sorted(tables.glob("*.tbl"))
    assert len(files) == 2
    for f in files:
        b = f.read_bytes()
        h = layout(b)
        assert (h["magic"], h["kind"], h["block"]) == (b"ENGRSUM\0", 1, 65536)
        data_end = h["data_off"] + -(-h["rows"] * h["stride"] // 4096) * 4096
        assert h["sums_off"] == data_end and h["n_blocks"] == -(-(data_end - h["data_off"]) // 65536) > 1
        sums = struct.unpack_from("<%dI" % h["n_blocks"], b, h["sums_off"])
        for i, s in enumerate(sums):
            off = h["data_off"] + i * 65536
            assert s == crc32c.crc32c(b[off:min(off + 65536, data_end)]), (f, i)
        assert h["sums_crc"] == crc32c.crc32c(b[h["sums_off"]:h["sums_off"] + 4 * h["n_blocks"]])
        assert h["hdr_crc"] == crc32c.crc32c(b[:84])
        assert len(b) % 4096 == 0 and len(b) >= h["sums_off"] + 4 * h["n_blocks"]
        p = run_bin("engram-tables", "verify", f)
        assert '"verified": true' in p.stdout and '"blocks": %d' % h["n_blocks"] in p.stdout


def flipped(tables, tmp_path, name, off):
    d = tmp_path / "t"
    shutil.copytree(tables, d)
    f = d / name
    b = bytearray(f.read_bytes())
    b[off] ^= 0x20
    f.write_bytes(bytes(b))
    return f


@pytest.mark.parametrize("block", [0, 2, "last"])
def test_flipped_byte_names_its_block(tables, tmp_path, block):
    b = (tables / "engram_layer_1.tbl").read_bytes()
    h = layout(b)
    i = h["n_blocks"] - 1 if block == "last" else block
    off = h["data_off"] + i * 65536 + 1000
    f = flipped(tables, tmp_path, "engram_layer_1.tbl", off)
    p = run_bin("engram-tables", "verify", f, check=False)
    assert p.returncode == 1 and p.stdout == ""
    # every row with a byte in the block: the first may start in the block before and straddle in
    lo, rb, stride = i * 65536, h["row_bytes"], h["stride"]
    first = 0 if lo < rb else (lo - rb) // stride + 1
    last = min(h["rows"] - 1, (lo + 65535) // stride)
    assert first * stride < lo + 65536 and first * stride + rb > lo and (first == 0 or (first - 1) * stride + rb <= lo)
    assert f"block {i} (bytes {h['data_off'] + i * 65536}.." in p.stderr, p.stderr
    assert f"rows {first}..{last})" in p.stderr and str(f) in p.stderr, p.stderr
    assert (p.stderr.count("\n"), "does not match its checksum" in p.stderr) == (1, True)
    run_bin("engram-tables", "verify", tables / "engram_layer_2.tbl")  # the other file is untouched


@pytest.mark.parametrize("off,needle", [(20, "header is damaged"), (60, "header is damaged"),
                                        ("sums", "checksum table is damaged")])
def test_damaged_header_or_table(tables, tmp_path, off, needle):
    if off == "sums":
        off = layout((tables / "engram_layer_1.tbl").read_bytes())["sums_off"] + 2
    f = flipped(tables, tmp_path, "engram_layer_1.tbl", off)
    p = run_bin("engram-tables", "verify", f, check=False)
    assert p.returncode == 1 and needle in p.stderr and str(f) in p.stderr, p.stderr


def test_file_without_checksums_loads_and_verify_says_so(model, tables, tmp_path):
    """A file as written before checksums: zeros after byte 48, no checksum
    table. The store reads it as before (same generated ids), verify says
    there is nothing to check."""
    d = tmp_path / "old"
    shutil.copytree(tables, d)
    for f in d.glob("*.tbl"):
        b = bytearray(f.read_bytes())
        h = layout(b)
        b[48:88] = bytes(40)
        f.write_bytes(bytes(b[:h["sums_off"]]))
        p = run_bin("engram-tables", "verify", f)
        assert '"checksums": null' in p.stdout and "has no checksums" in p.stderr, p.stderr
    args = ["--model", model, "--prompt-ids", "5,6,7,8", "--max-tokens", "6", "--temperature", "0", "--print-ids"]
    for tier in ("dram", "nvme"):
        old = run_bin("engram-run", *args, "--engram-tables", d, "--engram-tier", tier).stdout.splitlines()[-1]
        new = run_bin("engram-run", *args, "--engram-tables", tables, "--engram-tier", tier).stdout.splitlines()[-1]
        assert old == new and old.startswith("[")


def test_verify_usage_and_missing_file(tmp_path):
    p = run_bin("engram-tables", "verify", tmp_path / "nope.tbl", check=False)
    assert p.returncode == 1 and "cannot open" in p.stderr
    p = run_bin("engram-tables", "verify", check=False)
    assert p.returncode == 2 and "verify FILE" in p.stderr
