"""Incremental decoding (tokenizer_stream via engram-tokenize --stream): the
pieces emitted one id at a time are each whole UTF-8 (the raw output decodes
strictly), and their concatenation plus the flush equals HF decode of all
ids, on real tokenizers, on random id sequences that cut characters, and on
a decoder chain that takes the generic (re-decoding) path."""
import json
import os
import random
import subprocess

import pytest

os.environ.setdefault("RAYON_NUM_THREADS", "1")

from tokenizers import Tokenizer  # noqa: E402

import tokfixtures as tf  # noqa: E402


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    return {n: tf.unpack(n, str(d)) for n in tf.NAMES}


def stream(path, seqs, skip):
    data = "".join(json.dumps(s) + "\n" for s in seqs).encode()
    flags = ["--skip-special"] if skip else []
    p = subprocess.run([tf.TOKENIZE, "--tokenizer", path, "--jsonl", "--stream", *flags],
                       input=data, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    # Strict decoding: a partial UTF-8 character in any piece would fail here,
    # since pieces are written as raw bytes inside the JSON strings.
    lines = p.stdout.decode("utf-8", errors="strict").split("\n")[:-1]
    assert len(lines) == len(seqs)
    return [json.loads(x) for x in lines]


def check(path, hf, seqs):
    for skip in (False, True):
        got = stream(path, seqs, skip)
        want = hf.decode_batch(seqs, skip_special_tokens=skip)
        for ids, pieces, w in zip(seqs, got, want):
            assert len(pieces) == len(ids) + 1
            assert "".join(pieces) == w, (ids, pieces, w)
            for p in pieces[:-1]:
                # a held-back incomplete character is never emitted as U+FFFD
                # early unless decode itself has U+FFFD there
                assert "\ufffd" not in p or "\ufffd" in w


@pytest.mark.parametrize("name", tf.NAMES)
def test_stream_equals_decode(unpacked, name):
    path = os.path.join(unpacked[name], "tokenizer.json")
    hf = Tokenizer.from_file(path)
    texts = [t for t in tf.corpus(n_random=300) if len(t) < 2000]
    seqs = [e.ids for e in hf.encode_batch(texts)]
    rng = random.Random(3)
    n = hf.get_vocab_size(with_added_tokens=True)
    seqs += [[rng.randrange(n) for _ in range(rng.randint(1, 10))] for _ in range(500)]
    check(path, hf, seqs)


def test_stream_generic_decoder(tmp_path):
    """A decoder chain other than plain ByteLevel uses the re-decoding path."""
    base = json.load(open(os.path.join(tf.FIXTURES, "trained", "tokenizer.json"), encoding="utf-8"))
    base["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(base), encoding="utf-8")
    hf = Tokenizer.from_file(str(path))
    texts = [t for t in tf.corpus(n_random=200) if len(t) < 500][:800] + ["\u2581\u2581a b", "😀 x"]
    seqs = [e.ids for e in hf.encode_batch(texts)]
    check(str(path), hf, seqs)
