#!/usr/bin/env python3
"""Encode throughput (MB/s, one thread) of engram's tokenizer (build/bench-tokenize)
against Hugging Face `tokenizers` on the same text and machine.

    .venv/bin/python bench/tokenize_vs_hf.py [--tokenizer DIR ...] [--text-file F] [--doc-bytes N]

Without --text-file the text is built deterministically (about 4 MB): the GPL-3
text from /usr/share/common-licenses (English prose), the generated sentences of
tools/train_tokenizer.py, and the code / multilingual / emoji strings of the
tokenizer tests, repeated. Documents of about --doc-bytes (default 4096; 0 = one document) are
encoded one at a time, without special tokens, for at least --seconds each.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import tokfixtures as tf  # noqa: E402


def build_text():
    parts = []
    lic = "/usr/share/common-licenses/GPL-3"
    if os.path.exists(lic):
        parts.append(open(lic, encoding="utf-8").read())
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import train_tokenizer
    parts.append("\n".join(train_tokenizer.corpus(seed=99, n=3000)))
    parts.append("\n".join(tf.CODE * 20))
    parts.append("\n".join(tf.MULTILINGUAL + tf.EMOJI) + "\n")
    text = "\n".join(parts)
    reps = max(1, (4 << 20) // len(text.encode()))
    return text * reps


def docs_of(data, doc_bytes):
    if not doc_bytes:
        return [data.decode("utf-8")]
    out, pos = [], 0
    while pos < len(data):
        end = len(data)
        if pos + doc_bytes < len(data):
            nl = data.find(b"\n", pos + doc_bytes)
            end = nl + 1 if nl >= 0 else len(data)
        out.append(data[pos:end])
        pos = end
    return [d.decode("utf-8") for d in out]


def bench_hf(path, data, doc_bytes, seconds):
    tok = Tokenizer.from_file(path)
    docs = docs_of(data, doc_bytes)
    nbytes = tokens = rounds = 0
    start = time.perf_counter()
    while True:
        for d in docs:
            tokens += len(tok.encode(d, add_special_tokens=False).ids)
        nbytes += len(data)
        rounds += 1
        el = time.perf_counter() - start
        if el >= seconds:
            break
    return {"impl": "hf", "bytes": nbytes, "docs": len(docs), "rounds": rounds, "tokens": tokens,
            "seconds": round(el, 3), "mb_per_s": round(nbytes / el / 1e6, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", action="append",
                    help="tokenizer dir (default: tests/fixtures deepseek_v3 and qwen3, unpacked)")
    ap.add_argument("--text-file")
    ap.add_argument("--doc-bytes", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--build-dir", default=os.environ.get("ENGRAM_BUILD_DIR", os.path.join(ROOT, "build")))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    dirs = a.tokenizer or [tf.unpack(n, tmp) for n in ("deepseek_v3", "qwen3")]
    if a.text_file:
        data = open(a.text_file, "rb").read()
        text_file = a.text_file
    else:
        data = build_text().encode()
        text_file = os.path.join(tmp, "bench.txt")
        open(text_file, "wb").write(data)
    print(f"# text: {len(data)} bytes, doc_bytes {a.doc_bytes}, one thread", flush=True)
    for d in dirs:
        path = os.path.join(d, "tokenizer.json") if os.path.isdir(d) else d
        ours = json.loads(subprocess.check_output(
            [os.path.join(a.build_dir, "bench-tokenize"), "--tokenizer", path, "--text-file", text_file,
             "--doc-bytes", str(a.doc_bytes), "--seconds", str(a.seconds)]))
        hf = bench_hf(path, data, a.doc_bytes, a.seconds)
        name = os.path.basename(os.path.dirname(path))
        print(json.dumps({"tokenizer": name, **ours}))
        print(json.dumps({"tokenizer": name, **hf}))
        print(f"# {name}: engram {ours['mb_per_s']} MB/s, HF {hf['mb_per_s']} MB/s, "
              f"tokens equal per round: {ours['tokens'] // ours['rounds'] == hf['tokens'] // hf['rounds']}",
              flush=True)


if __name__ == "__main__":
    main()
