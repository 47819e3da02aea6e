"""Shared helpers for the tokenizer tests: where the binaries and fixtures
are, unpacking the committed tokenizer.json.xz files into a temp directory,
driving engram-tokenize --jsonl, and the differential test corpus."""
import json
import lzma
import os
import random
import shutil
import subprocess
import unicodedata

SOURCE_DIR = os.environ.get("ENGRAM_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("ENGRAM_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")
TOKENIZE = os.path.join(BUILD_DIR, "engram-tokenize")
FIXTURES = os.path.join(SOURCE_DIR, "tests", "fixtures", "tokenizers")
NAMES = ["deepseek_v3", "qwen3", "trained"]


def unpack(name, dest):
    """Copies fixture `name` into dest/name (decompressing tokenizer.json.xz)
    and returns that directory."""
    src = os.path.join(FIXTURES, name)
    out = os.path.join(dest, name)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(src):
        if f.endswith(".xz"):
            with lzma.open(os.path.join(src, f)) as fin, open(os.path.join(out, f[:-3]), "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            shutil.copy(os.path.join(src, f), os.path.join(out, f))
    return out


def run_jsonl(tok_path, lines, *flags, timeout=300):
    """Feeds JSON lines to engram-tokenize --jsonl; returns the parsed results."""
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    p = subprocess.run([TOKENIZE, "--tokenizer", tok_path, "--jsonl", *flags], input=data,
                       capture_output=True, timeout=timeout)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    out = p.stdout.decode("utf-8").split("\n")
    assert out[-1] == ""
    res = [json.loads(x) for x in out[:-1]]
    assert len(res) == len(lines)
    return res


# ---------------------------------------------------------------------------
# Corpus

MULTILINGUAL = [
    "Hello, world! How are you doing today?",
    "I'm sure they'll say it's fine; we've done what we'd planned. DON'T SHOUT, it's RUDE.",
    "Der Straßenbahnfahrer über­querte die Kreuzung — schnell!",
    "L'été dernier, j'ai visité Montréal et Québec. Ça m'a plu énormément.",
    "¿Dónde está la biblioteca? ¡Está allí, señor!",
    "Быстрая коричневая лиса прыгает через ленивую собаку. Ёжик в тумане.",
    "Γεια σου κόσμε! Η γρήγορη καφέ αλεπού.",
    "敏捷的棕色狐狸跳过了懒狗。自然语言处理（NLP）是人工智能的一个分支。",
    "東京は日本の首都です。ひらがな、カタカナ、漢字を混ぜて書きます。ｶﾀｶﾅ",
    "안녕하세요, 세계! 한국어 형태소 분석은 어렵습니다.",
    "مرحبا بالعالم! اللغة العربية تكتب من اليمين إلى اليسار.",
    "שלום עולם! עברית נכתבת מימין לשמאל.",
    "नमस्ते दुनिया! हिन्दी देवनागरी लिपि में लिखी जाती है।",
    "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Xin chào thế giới! Tiếng Việt có nhiều dấu thanh.",
    "Merhaba dünya! İstanbul'da ılık bir gün. IĞDIR ŞİŞLİ",
    "ሰላም ልዑል! ትግርኛ ኣማርኛ",
    "გამარჯობა მსოფლიო!",
    "Բարեւ աշխարհ!",
    "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Ḁ ḁ ẞ ß ǅ ǈ ǋ Ω ω µ K Å ﬁ ﬀ ﬃ",
    "e\u0301 vs \u00e9, A\u030a vs \u00c5, \u1100\u1161\u11a8 vs \uac01",
    "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ　１２３",
    "①②③ ⑴⑵⑶ ¼ ½ ¾ ² ³ ⁴ ₁ ₂",
    "math: ∀x∈ℝ, ∃y: x² + y² ≤ 1; ∑ᵢ aᵢ·bᵢ ≠ ∏",
]

CODE = [
    "def main(argv):\n    if len(argv) < 2:\n        return 1\n    print(f\"{argv[1]!r}\")\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (size_t i = 0; i < n; ++i) { y[i] += alpha * x[i]; }  // axpy",
    "{\"model\": \"qwen3\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"stream\": true}",
    "<html><body><div class=\"x\">Hello &amp; bye</div></body></html>",
    "SELECT a.id, COUNT(*) AS n FROM a JOIN b ON a.id=b.a_id WHERE b.x>=10 GROUP BY a.id;",
    "fn main() -> Result<(), Box<dyn Error>> { let v: Vec<u32> = (0..10).collect(); Ok(()) }",
    "$ git log --oneline | head -n 20 && echo \"done\" > /dev/null 2>&1",
    "x = [i**2 for i in range(10) if i % 3 == 0]  # squares\n\n\n",
    "    \t  mixed_indent = True\r\n\tsecond_line()\r\n",
    "a=b+c-d*e/f%g^h&i|j~k!l?m:n;o,p.q'r\"s`t@u#v$w(x)y[z]{}<>\\",
    "https://example.com/path/to/page?query=1&lang=en#anchor",
    "user@example.org, +1 (555) 010-9999, 2024-01-31T23:59:59Z",
]

EMOJI = [
    "😀😃😄😁😆😅🤣😂", "👍👍🏻👍🏼👍🏽👍🏾👍🏿", "🧑‍🌾 👨‍👩‍👧‍👦 👩‍❤️‍💋‍👨 🏳️‍🌈 🏴‍☠️",
    "🇫🇷🇩🇪🇯🇵🇺🇸 🇺🇳", "❤️ ❤ ♥️ ☺️ ✌🏽 #️⃣ 1️⃣ ©️ ®️ ™️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿 flag of Scotland",
    "text🙂text🙃text", "🫠🫶🪿🛝 new emoji", "👁️‍🗨️ 🧔🏻‍♂️ 🧑🏿‍🦰",
]

SPECIAL = [
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start|", "<|im_start|>>", "<<|im_end|>", "<|im_start|>  <|im_end|>  x",
    "<think>\nreasoning\n</think>\n\nanswer", "<｜begin▁of▁sentence｜>Hi<｜end▁of▁sentence｜>",
    "<｜User｜>question<｜Assistant｜>", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>",
    "<s>text</s>", "a <mask> b", "a<mask>b", "   <mask>   x", "<|im_end|>   \n next",
    "[word] x[word] [word]y [word]", "word [word].", "ＮＦＫＣ NFKC ＮＦＫＣx",
    "<pad><s></s>", "<|endoftext|>" * 5,
]

WHITESPACE = [
    " ", "  ", "\n", "\n\n", "\r\n", "\t", " \t \n", "a  b", "a   b   ", "   leading",
    "trailing   ", "x\n\n\n\ny", "x \n y", "\u00a0nbsp\u00a0\u00a0x", "ideo\u3000space",
    "line\u2028sep\u2029para", "nel\u0085x", "zw\u200bsp\u200cnj\u200dj", "\u2003em\u2002en",
    "\x0b\x0c vt ff", "a\r\rb", " " * 50, "\n" * 30, "\t \t " * 10, "\u3000" * 5,
]

DIGITS = [
    "1", "12", "123", "1234", "12345", "1234567890123", "3.14159", "1,000,000", "v1.2.3",
    "abc123def", "0x1F2E3D", "1e-10", "١٢٣٤٥", "０１２３", "٣٫١٤", "²³", "Ⅻ Ⅳ", "2024年1月31日",
]

ALPHABET = (
    "abcxyzABCXYZ0123456789 .,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`\n\t"
    "éèêëçàüößñøåæœ" "αβγδεΩ" "абвгдЖЯ" "中文字词语漢字" "ひらがなカタカナ" "한국어" "عربي" "हिन्दी"
    "😀👍🏽🧑\u200d🌾❤️" "\u0301\u0308\u200d\u00a0\u3000" "ǅﬁ①²" "ſ" "İ"
)


def random_unicode(rng, n):
    """n random code points of every plane. Code points unassigned in
    Python's Unicode database (14.0, the version of the system PCRE2 and
    utf8proc) are redrawn: HF's regex engine knows a newer Unicode, where
    some of them became letters, so they may split differently (a documented
    difference)."""
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.4:
            cp = rng.randint(0x20, 0x7E)
        elif r < 0.6:
            cp = rng.randint(0x80, 0x7FF)
        elif r < 0.85:
            cp = rng.randint(0x800, 0xFFFD)
        else:
            cp = rng.randint(0x10000, 0x10FFFF)
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(chr(cp)) == "Cn":
            cp = 0xFFFD
        out.append(chr(cp))
    return "".join(out)


def corpus(seed=20261124, n_random=2500):
    rng = random.Random(seed)
    base = MULTILINGUAL + CODE + EMOJI + SPECIAL + WHITESPACE + DIGITS
    out = list(base)
    out += ["", "a", "\x00", "a\x00b", "\x00\x00 \x00", "'s", "'S", "'ll've", "I'M", "can't"]
    # pairs and triples of base strings
    for _ in range(800):
        k = rng.randint(2, 3)
        sep = rng.choice(["", " ", "\n", "  ", "\t"])
        out.append(sep.join(rng.choice(base) for _ in range(k)))
    # random draws from a mixed alphabet
    for _ in range(n_random):
        n = rng.randint(1, 40)
        out.append("".join(rng.choice(ALPHABET) for _ in range(n)))
    # random code points of all planes
    for _ in range(1500):
        out.append(random_unicode(rng, rng.randint(1, 24)))
    # long strings
    for i in range(6):
        out.append("".join(rng.choice(base) + rng.choice(" \n") for _ in range(200 * (i + 1))))
    out.append("a" * 5000)
    out.append(" " * 3000 + "x")
    out.append("1234567890" * 500)
    out.append("😀" * 1000)
    return out
