#!/usr/bin/env python3
"""Builds the training corpus of the default model from Debian dictionary
packages (freely licensed, knowledge-dense): GCIDE (Webster 1913 + additions),
WordNet 3.0, FOLDOC, the Jargon File, V.E.R.A. acronyms, chemical elements.

Each dictd entry becomes one document. Half the WordNet and FOLDOC entries are
also rendered as ChatML conversations ("What does X mean?" -> the definition),
so the model answers in its domain when served through the chat template.

Usage: corpus.py OUT.txt [--debs DIR]   (downloads the .deb files with apt-get
       download unless DIR already holds them). Deterministic for given packages.
"""
import argparse
import base64
import glob
import gzip
import os
import random
import re
import subprocess
import tempfile

PACKAGES = ["dict-gcide", "dict-wn", "dict-foldoc", "dict-jargon", "dict-vera", "dict-elements"]
DOC_SEP = "<|endoftext|>"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64num(s):
    n = 0
    for ch in s:
        n = n * 64 + B64.index(ch)
    return n


def entries(index_path, dict_path):
    data = gzip.open(dict_path).read()
    for line in open(index_path, encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        off, size = b64num(parts[1]), b64num(parts[2])
        yield parts[0], off, data[off:off + size].decode("utf-8", errors="replace")


def clean(text):
    """Joins wrapped lines, keeps paragraph breaks, drops dictd cross-reference braces."""
    text = text.replace("{", "").replace("}", "")
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n".join(p for p in paras if p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--debs")
    a = ap.parse_args()
    debs = a.debs or tempfile.mkdtemp()
    if not glob.glob(os.path.join(debs, "*.deb")):
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
    root = os.path.join(debs, "x")
    for deb in sorted(glob.glob(os.path.join(debs, "*.deb"))):
        subprocess.run(["dpkg", "-x", deb, root], check=True)
    rng = random.Random(0)
    docs, seen = [], set()
    for idx in sorted(glob.glob(os.path.join(root, "usr/share/dictd/*.index"))):
        name = os.path.basename(idx)[:-6]
        dz = idx[:-6] + ".dict.dz"
        if not os.path.exists(dz):
            continue
        n = 0
        for head, off, body in entries(idx, dz):
            key = (name, off)
            if key in seen:  # indexes list an entry once per headword spelling
                continue
            seen.add(key)
            text = clean(body)
            if len(text) < 20:
                continue
            docs.append(text)
            if name in ("wn", "foldoc") and rng.random() < 0.5:
                definition = text.split("\n", 1)[1] if "\n" in text else text
                docs.append(f"<|im_start|>user\nWhat does \"{head}\" mean?<|im_end|>\n"
                            f"<|im_start|>assistant\n{head}: {definition}<|im_end|>")
            n += 1
        print(f"{name}: {n} entries")
    rng.shuffle(docs)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write(DOC_SEP.join(docs))
    print(f"{len(docs)} documents, {os.path.getsize(a.out) / 1e6:.1f} MB -> {a.out}")


if __name__ == "__main__":
    main()
