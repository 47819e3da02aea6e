#!/usr/bin/env python3
"""Trains the project's small byte-level BPE tokenizer used by the tokenizer
tests and fuzzers (tests/fixtures/tokenizers/trained/tokenizer.json).

Deterministic: the corpus is generated here from fixed text and a seeded RNG,
and training runs on one thread. Usage:
    RAYON_NUM_THREADS=1 .venv/bin/python tools/train_tokenizer.py [OUT_DIR]
"""
import json
import os
import random
import sys

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import (AddedToken, Tokenizer, decoders, models, normalizers,  # noqa: E402
                        pre_tokenizers, processors, trainers)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "An inference server batches requests and streams tokens back to clients.",
    "Engram layers look up n-gram embeddings in a large table kept in host memory.",
    "def forward(self, x):\n    return self.proj(torch.relu(x)) + x\n",
    "for (int i = 0; i < n; i++) { sum += a[i] * b[i]; }",
    "SELECT name, count(*) FROM users WHERE age >= 21 GROUP BY name;",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le vif renard brun saute par-dessus le chien paresseux, n'est-ce pas ?",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。我们今天讨论分词器。",
    "素早い茶色の狐がのろまな犬を飛び越えた。トークナイザー",
    "빠른 갈색 여우가 게으른 개를 뛰어넘었다.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "Emoji: 😀 👍🏽 🧑‍🌾 👨‍👩‍👧‍👦 🇫🇷 ❤️",
    "Numbers: 3.14159, 2,718, 1e-9, 0x1F, 42%, $1,000,000.00",
    "  indented   text\twith\ttabs\r\nand windows newlines\n\n\n",
    "Ｆｕｌｌｗｉｄｔｈ ｔｅｘｔ and ligatures ﬁ ﬂ and ① ② ③",
]

WORDS = ("the of and to in is that for it as with was on be by at this from or have an "
         "are not but what all were when we there can more if no out so said use each which "
         "do how their will up other about many then them these some would make like into "
         "time has look two write go see number way could people my than first water been "
         "call who oil its now find long down day did get come made may part token model "
         "server memory layer cache batch stream request response kernel tensor").split()


def corpus(seed=1234, n=4000):
    rng = random.Random(seed)
    out = list(SENTENCES) * 20
    for _ in range(n):
        k = rng.randint(3, 16)
        words = [rng.choice(WORDS) for _ in range(k)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 99999)))
        s = " ".join(words)
        if rng.random() < 0.5:
            s = s.capitalize() + rng.choice([".", "!", "?", ",", ":", ";"])
        out.append(s)
    return out


def build(out_dir):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<s>", "</s>", "<pad>"])
    tok.train_from_iterator(corpus(), trainer=trainer)
    # Added tokens exercising the matching options.
    tok.add_special_tokens([
        AddedToken("<|im_start|>", special=True, normalized=False),
        AddedToken("<|im_end|>", special=True, normalized=False, rstrip=True),
        AddedToken("<mask>", special=True, normalized=False, lstrip=True),
    ])
    tok.add_tokens([
        AddedToken("[word]", single_word=True, normalized=True),
        AddedToken("ＮＦＫＣ", normalized=True),
        AddedToken("<think>", normalized=False),
    ])
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", bos), ("</s>", eos)])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path, pretty=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "tokenizer_class": "PreTrainedTokenizerFast"},
                  f, indent=1)
        f.write("\n")
    return path


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "tests", "fixtures", "tokenizers", "trained")
    print(build(sys.argv[1] if len(sys.argv) > 1 else default))
