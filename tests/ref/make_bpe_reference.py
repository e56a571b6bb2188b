"""Reference merges for finmoe's BPE trainer, learned by Hugging Face
`tokenizers`' own BpeTrainer with the setup finmoe's trainer reproduces:
no normalizer, Qwen2's split regex (Isolated) + ByteLevel(use_regex=False),
ByteLevel.alphabet() as initial alphabet, no special tokens.

  python tests/ref/make_bpe_reference.py   # writes tests/data/tokenizer/bpe_trainer/hf_reference.json

Corpus: the texts of tests/data/tokenizer/cases.jsonl (English and Chinese
edge cases and real paragraphs), one sequence per record. Cases whose id is a
multiple of 5 are held out; the file records HF's ids for them too.
The expectations come from HF tokenizers, never from finmoe.
"""
import json
import os

import tokenizers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "tokenizer")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# (name, which cases train, vocab_size, min_frequency)
CONFIGS = [
    ("all_v1000_f2", "train", 1000, 2),
    ("chinese_v700_f1", "chinese", 700, 1),  # min_frequency 1: many ties among count-1 pairs
]


def cases():
    with open(os.path.join(DATA, "cases.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def select(rows, which):
    if which == "train":
        return [r["text"] for r in rows if r["id"] % 5 != 0]
    if which == "chinese":
        return [r["text"] for r in rows if any("\u4e00" <= c <= "\u9fff" for c in r["text"])]
    raise ValueError(which)


def train(texts, vocab_size, min_frequency):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def main():
    rows = cases()
    held_out = [r["text"] for r in rows if r["id"] % 5 == 0]
    out = {"tokenizers_version": tokenizers.__version__, "configs": []}
    for name, which, vocab_size, min_frequency in CONFIGS:
        tok = train(select(rows, which), vocab_size, min_frequency)
        model = json.loads(tok.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        out["configs"].append({
            "name": name, "cases": which, "vocab_size": vocab_size, "min_frequency": min_frequency,
            "merges": merges,
            "vocab_size_learned": len(model["vocab"]),
            "held_out_ids": [tok.encode(t).ids for t in held_out],
        })
    os.makedirs(os.path.join(DATA, "bpe_trainer"), exist_ok=True)
    with open(os.path.join(DATA, "bpe_trainer", "hf_reference.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
