"""Compressed tokenizer (ENGRAM.md section 3): our C table against the reference
procedure run in Python with Hugging Face `tokenizers`, over the whole vocab of
both test tokenizers.

The reference (deepseek-ai/Engram, engram_demo_v1.py) normalizes with a
`tokenizers` normalizer sequence, so that sequence is the oracle here. The C side
(engram/ngram_hash_compress.c through build/engram-hashdump compress) gets the
same decoded texts and raw token strings, so this proves normalization and
first-appearance indexing; our own tokenizer's decode is wired in later.
"""
import lzma
import os
import pathlib
import subprocess

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, Tokenizer, normalizers  # noqa: E402

BUILD = pathlib.Path(os.environ.get("ENGRAM_BUILD_DIR", "build"))
SOURCE = pathlib.Path(os.environ.get("ENGRAM_SOURCE_DIR", pathlib.Path(__file__).parents[2]))
DUMP = BUILD / "engram-hashdump"

SENTINEL = "\uE000"


def reference_normalizer():
    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.NFD(),
        normalizers.StripAccents(),
        normalizers.Lowercase(),
        normalizers.Replace(Regex(r"[ \t\r\n]+"), " "),
        normalizers.Replace(Regex(r"^ $"), SENTINEL),
        normalizers.Strip(),
        normalizers.Replace(SENTINEL, " "),
    ])


def load_tokenizer(name):
    xz = SOURCE / "tests" / "fixtures" / "tokenizers" / name / "tokenizer.json.xz"
    if xz.exists():
        return Tokenizer.from_str(lzma.decompress(xz.read_bytes()).decode("utf-8"))
    shared = pathlib.Path("/work/shared/tokenizers") / name / "tokenizer.json"
    if shared.exists():
        return Tokenizer.from_file(str(shared))
    pytest.skip(f"tokenizer {name}: neither {xz} nor {shared} exists")


def vocab_texts(tok):
    """(decoded text of [id], raw token string) for every id, added tokens included.
    decode() of the `tokenizers` library never cleans up spaces (the reference's
    transformers call has clean_up_tokenization_spaces false for both)."""
    n = tok.get_vocab_size(with_added_tokens=True)
    out = []
    for i in range(n):
        text = tok.decode([i], skip_special_tokens=False)
        raw = tok.id_to_token(i)
        out.append((text, raw if raw is not None else ""))
    return out


def reference_table(texts):
    norm = reference_normalizer()
    key2new, lookup = {}, []
    for text, raw in texts:
        if "\ufffd" in text:
            key = raw
        else:
            n = norm.normalize_str(text)
            key = n if n else text
        lookup.append(key2new.setdefault(key, len(key2new)))
    return lookup, len(key2new)


def hexline(text, raw):
    a = text.encode("utf-8").hex() or "-"
    b = raw.encode("utf-8").hex() or "-"
    return f"{a} {b}\n"


def c_table(texts):
    if not DUMP.exists():
        pytest.skip(f"{DUMP} not built")
    inp = "".join(hexline(t, r) for t, r in texts)
    res = subprocess.run([str(DUMP), "compress"], input=inp, capture_output=True, text=True,
                         check=True)
    import json
    return json.loads(res.stdout)


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen3"])
def test_whole_vocab_matches_reference(name):
    tok = load_tokenizer(name)
    texts = vocab_texts(tok)
    ref_lookup, ref_vc = reference_table(texts)
    got = c_table(texts)
    assert got["vocab"] == len(texts)
    mismatches = [i for i, (a, b) in enumerate(zip(ref_lookup, got["lookup"])) if a != b]
    detail = [(i, texts[i]) for i in mismatches[:10]]
    assert not mismatches, f"{len(mismatches)} ids differ, first: {detail}"
    assert got["compressed"] == ref_vc


def test_normalize_cases():
    """Hand-picked strings through both normalizers: accents, marks of all three
    categories, U+0130, final sigma (no context rule), whitespace runs, a lone
    space, the sentinel character itself, compatibility forms."""
    cases = [" ", "  ", "\t", " \n ", "Hello", "  Hello  World \r\n", "Café", "ÉCOLE",
             "İstanbul", "ΟΔΟΣ", "ﬁ", "①", "Ａｂｃ", "\u0915\u093e", "\u20dd", "a\u0301",
             "\ue000", " \ue000 ", "x\u00a0", "\u3000y\u3000", "\u200b", "ß", "Σ", "ǅ",
             "\x00", "ℌ", "Ⅻ", "é\t\té"]
    if not DUMP.exists():
        pytest.skip(f"{DUMP} not built")
    norm = reference_normalizer()
    inp = "".join(hexline(c, "") for c in cases)
    res = subprocess.run([str(DUMP), "normalize"], input=inp, capture_output=True, text=True,
                         check=True)
    lines = res.stdout.split("\n")
    for c, line in zip(cases, lines):
        got = "" if line == "-" else bytes.fromhex(line).decode("utf-8")
        assert got == norm.normalize_str(c), repr(c)


def run_normalize(strings):
    if not DUMP.exists():
        pytest.skip(f"{DUMP} not built")
    inp = "".join(hexline(s, "") for s in strings)
    res = subprocess.run([str(DUMP), "normalize"], input=inp, capture_output=True, text=True,
                         check=True)
    lines = res.stdout.split("\n")
    return ["" if line == "-" else bytes.fromhex(line).decode("utf-8") for line in lines[:len(strings)]]


def check_strings(strings):
    norm = reference_normalizer()
    got = run_normalize(strings)
    bad = [(s, norm.normalize_str(s), g) for s, g in zip(strings, got) if g != norm.normalize_str(s)]
    assert not bad, f"{len(bad)} of {len(strings)} differ, first: {bad[:5]}"


def test_every_code_point():
    """Each code point alone (the Unicode versions of the reference's parts differ
    from utf8proc's; engram/ngram_hash_unicode.c corrects that)."""
    check_strings([chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000])


def test_compositions_and_mixtures():
    """Canonical pairs (composition), and random strings of marks, letters,
    compatibility characters and whitespace (reordering, stripping)."""
    import random
    import unicodedata
    pairs = []
    pool = []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        d = unicodedata.decomposition(c)
        if d:
            pool.append(c)
            if not d.startswith("<"):
                parts = "".join(chr(int(x, 16)) for x in d.split())
                pairs.append(parts)
                pairs.append(parts + "\u0301")
                pairs.append(parts[0] + "\u0316" + parts[1:])
        if unicodedata.category(c) in ("Mn", "Mc", "Me") or unicodedata.combining(c):
            pool.append(c)
    pool += list("aAzZ \t\r\n\u00a0\u3000\u2028\ue000İΣσΟ한글漢字") + [chr(0x1100), chr(0x1161), chr(0x11a8)]
    rs = random.Random(5)
    mixtures = ["".join(rs.choice(pool) for _ in range(rs.randint(1, 8))) for _ in range(30000)]
    check_strings(pairs + mixtures)


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen3", "trained"])
def test_engram_tokenize_full_pipeline_matches_reference(name, tmp_path):
    """Our whole path, tokenizer.json -> our C decode of every id -> our
    compressed table (build/engram-tokenize --engram-compress, what the model
    loader uses), against the reference procedure run with HF tokenizers."""
    import json
    import shutil
    src = SOURCE / "tests" / "fixtures" / "tokenizers" / name
    d = tmp_path / name
    d.mkdir()
    if (src / "tokenizer.json.xz").exists():
        (d / "tokenizer.json").write_bytes(lzma.decompress((src / "tokenizer.json.xz").read_bytes()))
    else:
        shutil.copy(src / "tokenizer.json", d / "tokenizer.json")
    shutil.copy(src / "tokenizer_config.json", d / "tokenizer_config.json")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    ref_lookup, ref_vc = reference_table(vocab_texts(tok))
    res = subprocess.run([str(BUILD / "engram-tokenize"), "--tokenizer", str(d), "--engram-compress"],
                         capture_output=True, text=True, check=True)
    got = json.loads(res.stdout)
    assert got["vocab"] == len(ref_lookup)
    assert got["compressed"] == ref_vc
    mismatches = [i for i, (a, b) in enumerate(zip(ref_lookup, got["lookup"])) if a != b]
    assert not mismatches, f"{len(mismatches)} ids differ, first {mismatches[:10]}"
