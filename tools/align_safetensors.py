#!/usr/bin/env python3
"""Rewrites a .safetensors file so that its tensors start on 64-byte
boundaries, tensors and metadata unchanged: the JSON header is padded with
trailing spaces (which the format allows) until the data starts at a multiple
of 64. A tensor's address in the engine's mmap is then the data start plus its
offset, so every tensor whose offset is a multiple of 64 (all of them when
their sizes are) is cache-line aligned. The CPU's matrix products read rows in
64-byte vectors; 8 bytes past a line, as save_file left models/engram-lexicon,
every load is split across two lines: the tile 19-26% slower, the default
model's decode 13-19% (bench/RESULTS.md, "The default model's shape on the CPU").

    tools/align_safetensors.py FILE [FILE ...]

Each file is written through FILE.tmp and renamed; with the safetensors
package installed the new file is loaded and compared with the old tensor by
tensor first. Prints what it did; exit status 1 on a malformed file."""
import json
import os
import struct
import sys

ALIGN = 64


def align(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        sys.exit(f"{path}: not a safetensors file")
    n = struct.unpack("<Q", raw[:8])[0]
    if 8 + n > len(raw):
        sys.exit(f"{path}: header length {n} past the end of the file")
    header = raw[8:8 + n]
    tensors = {k: v for k, v in json.loads(header).items() if k != "__metadata__"}
    odd = sorted(k for k, v in tensors.items() if v["data_offsets"][0] % ALIGN)
    pad = (ALIGN - (8 + n) % ALIGN) % ALIGN
    if pad == 0:
        print(f"{path}: data already starts at a multiple of {ALIGN}")
    else:
        tmp = path + ".tmp"
        padded = header.rstrip(b" ")  # a header padded before: pad from its JSON's end again
        pad = (ALIGN - (8 + len(padded)) % ALIGN) % ALIGN
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(padded) + pad) + padded + b" " * pad + raw[8 + n:])
            f.flush()
            os.fsync(f.fileno())
        check(path, tmp)
        os.replace(tmp, path)
        print(f"{path}: header padded to {len(padded) + pad} bytes, data at {8 + len(padded) + pad}")
    if odd:
        print(f"{path}: {len(odd)} tensors have offsets that are not multiples of {ALIGN} "
              f"(their predecessors' sizes are not) and stay unaligned, e.g. {odd[0]}")


def check(old, new):
    """The two files hold the same tensors and metadata, by the safetensors package itself
    (with torch, which reads bf16; skipped without them)."""
    try:
        import torch
        from safetensors import safe_open
    except ImportError:
        return
    with safe_open(old, "pt") as a, safe_open(new, "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            x, y = a.get_tensor(k), b.get_tensor(k)
            assert x.dtype == y.dtype and x.shape == y.shape, k
            assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), k


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        align(p)
