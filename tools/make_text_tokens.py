#!/usr/bin/env python3
"""Makes the token file of real English text that bench-throughput reads with
--prompts-from (and --force-output): the Engram tiers' hit ratios depend on
which N-grams come, so the benchmark wants token streams of real text.

    tools/make_text_tokens.py OUT.tok [--tokenizer ../shared/tokenizers/qwen3]
        [--tokenize-bin build/engram-tokenize] [--text-out FILE] [--hf]

Text (offline, deterministic for a given Python and system): in this order,
  1. the Python language reference topics that pydoc ships
     (pydoc_data/topics.py of the running interpreter's standard library),
  2. the docstrings of the standard library's modules, classes and functions
     (files in sorted path order, test folders skipped, source order inside),
  3. /usr/share/common-licenses/* and /usr/share/perl*/**/*.pod when present
     (sorted; files of identical content once),
documents separated by a blank line. About 3.8 MB with Python 3.11 on Debian
12. The script prints each part's size and the text's SHA-256: two machines
with other Pythons or system files make other texts.

Tokens: the project's tokenizer (engram-tokenize --no-special, no BOS; equal
to Hugging Face tokenizers on the whole vocab by the tokenizer tests), or with
--hf the `tokenizers` package. Qwen3's vocab is 151,669 ids, under the 151,936
of the synthetic qwen3 shapes.

Output, little-endian (bench/throughput.c's header documents the same):
  offset 0  8 bytes  magic b"ENGRTOK\\0"
         8  uint32   version (1)
        12  uint32   vocab size of the tokenizer (0: unknown)
        16  uint64   n, the token count
        24  int32    n token ids
"""
import argparse
import ast
import glob
import hashlib
import inspect
import json
import os
import struct
import subprocess
import sys
import sysconfig
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def pydoc_topics():
    path = os.path.join(sysconfig.get_paths()["stdlib"], "pydoc_data", "topics.py")
    if not os.path.exists(path):
        return []
    tree = ast.parse(open(path, "rb").read())
    for node in tree.body:  # topics = {'name': 'text', ...}
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            return [ast.literal_eval(v) for k, v in sorted(zip(node.value.keys, node.value.values),
                                                           key=lambda kv: ast.literal_eval(kv[0]))]
    return []


def stdlib_docstrings():
    root = sysconfig.get_paths()["stdlib"]
    docs = []
    for dp, dns, fns in os.walk(root):
        dns[:] = sorted(d for d in dns if d not in SKIP_DIRS)
        for fn in sorted(fns):
            if not fn.endswith(".py"):
                continue
            try:
                tree = ast.parse(open(os.path.join(dp, fn), "rb").read())
            except (SyntaxError, ValueError):
                continue
            nodes = [tree] + [n for n in ast.walk(tree)
                              if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
            nodes[1:] = sorted(nodes[1:], key=lambda n: (n.lineno, n.col_offset))
            for n in nodes:
                d = ast.get_docstring(n)  # inspect.cleandoc'ed
                if d and len(d) > 40:
                    docs.append(d)
    return docs


def system_prose():
    files = sorted(glob.glob("/usr/share/common-licenses/*")) + \
        sorted(glob.glob("/usr/share/perl*/**/*.pod", recursive=True))
    seen, docs = set(), []
    for f in files:
        if not os.path.isfile(f):
            continue
        b = open(f, "rb").read()
        h = hashlib.sha256(b).digest()
        if h in seen:
            continue
        seen.add(h)
        docs.append(b.decode("utf-8", "replace"))
    return docs


def tokenize(text, a):
    if a.hf:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.path.join(a.tokenizer, "tokenizer.json"))
        return tok.encode(text, add_special_tokens=False).ids, tok.get_vocab_size(with_added_tokens=True)
    with tempfile.NamedTemporaryFile("wb", suffix=".txt") as f:
        f.write(text.encode())
        f.flush()
        out = subprocess.run([a.tokenize_bin, "--tokenizer", a.tokenizer, "--text-file", f.name, "--no-special"],
                             check=True, capture_output=True).stdout
    ids = json.loads(out)
    cfg = os.path.join(a.tokenizer, "tokenizer.json")
    j = json.load(open(cfg, encoding="utf-8"))
    vocab = max([max(j["model"]["vocab"].values())] + [t["id"] for t in j.get("added_tokens", [])]) + 1
    return ids, vocab


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(ROOT), "shared", "tokenizers", "qwen3"))
    ap.add_argument("--tokenize-bin", default=os.path.join(os.environ.get("ENGRAM_BUILD_DIR", os.path.join(ROOT, "build")),
                                                           "engram-tokenize"))
    ap.add_argument("--text-out", help="also write the text itself here")
    ap.add_argument("--hf", action="store_true", help="tokenize with the tokenizers package instead")
    a = ap.parse_args()

    parts = [("pydoc topics", pydoc_topics()), ("stdlib docstrings", stdlib_docstrings()),
             ("licenses and perl pod", system_prose())]
    for name, docs in parts:
        print(f"make_text_tokens: {name}: {len(docs)} documents, {sum(len(d.encode()) for d in docs)} bytes")
    text = "\n\n".join(d.strip() for _, docs in parts for d in docs) + "\n"
    data = text.encode()
    print(f"make_text_tokens: text {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()} "
          f"(Python {sys.version.split()[0]})")
    if a.text_out:
        open(a.text_out, "wb").write(data)
    ids, vocab = tokenize(text, a)
    if not ids or min(ids) < 0 or max(ids) >= vocab:
        sys.exit(f"make_text_tokens: ids outside [0, {vocab})")
    body = struct.pack(f"<{len(ids)}i", *ids)
    with open(a.out + ".tmp", "wb") as f:
        f.write(b"ENGRTOK\0" + struct.pack("<IIQ", 1, vocab, len(ids)) + body)
    os.replace(a.out + ".tmp", a.out)
    print(f"make_text_tokens: {a.out}: {len(ids)} tokens (vocab {vocab}, max id {max(ids)}), "
          f"sha256 of the ids {hashlib.sha256(body).hexdigest()}")


if __name__ == "__main__":
    main()
