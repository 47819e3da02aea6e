#!/usr/bin/env python3
"""Trains the default model's byte-level BPE tokenizer with HF `tokenizers` on
the corpus and writes tokenizer.json and tokenizer_config.json (ChatML chat
template, <|endoftext|> as eos/pad) into OUT_DIR.

Usage: tokenizer.py CORPUS.txt OUT_DIR [--vocab 8192]
"""
import argparse
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("out")
    ap.add_argument("--vocab", type=int, default=8192)
    a = ap.parse_args()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=a.vocab, special_tokens=SPECIAL, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # Documents are separated by <|endoftext|>; train on them one by one.
    docs = open(a.corpus, encoding="utf-8").read().split("<|endoftext|>")
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    os.makedirs(a.out, exist_ok=True)
    tok.save(os.path.join(a.out, "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
           "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
           "clean_up_tokenization_spaces": False, "model_max_length": 1024,
           "chat_template": CHATML}
    json.dump(cfg, open(os.path.join(a.out, "tokenizer_config.json"), "w"), indent=1)
    print(f"vocab {tok.get_vocab_size()} -> {a.out}")


if __name__ == "__main__":
    main()
