"""Builds two small Llama-2/Mistral-style tokenizers (BPE + byte fallback +
"▁" spaces) with the Hugging Face `tokenizers` package and records its
encodings of a few strings as the expectation for finmoe's tests.

  python make_byte_fallback.py    # writes llama2_style/, metaspace_style/, expected.jsonl

The expectations come from HF tokenizers, never from finmoe.
"""
import json
import os

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
TEXTS = [
    "Hello world",
    " leading space and  double  spaces",
    "trailing   ",
    "The balance sheet lists assets, liabilities and equity.",
    "资产负债表 and 现金流量表",
    "emoji 📈 and é vs é",
    "<s>special</s> inside text <unk>",
    "line one\nline two\ttab",
    "",
    "    ",
]


def corpus():
    with open(os.path.join(HERE, "..", "cases.jsonl"), encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if text.isascii():
                yield text


def train():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=400, limit_alphabet=70, show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    m = json.loads(tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = len(vocab)
    for t, _ in sorted(m["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    return vocab, m["merges"]


def added():
    return [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]


def model(vocab, merges):
    return {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
            "ignore_merges": False, "vocab": vocab, "merges": merges}


DECODER = {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def variants(vocab, merges):
    # Llama-2: the normalizer prepends "▁" and replaces spaces; no pre-tokenizer.
    llama2 = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added(),
              "normalizer": {"type": "Sequence", "normalizers": [
                  {"type": "Prepend", "prepend": "▁"},
                  {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
              "pre_tokenizer": None,
              "post_processor": {"type": "TemplateProcessing",
                                 "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                            {"Sequence": {"id": "A", "type_id": 0}}],
                                 "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                                 "special_tokens": {"<s>": {"id": "<s>", "ids": [1],
                                                            "tokens": ["<s>"]}}},
              "decoder": DECODER, "model": model(vocab, merges)}
    # Mistral v0.3 / newer Llama-2 exports: a Metaspace pre-tokenizer instead.
    meta = dict(llama2)
    meta["normalizer"] = None
    meta["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁",
                             "prepend_scheme": "first", "split": False}
    meta["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                       "split": False}
    meta["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    return {"llama2_style": llama2, "metaspace_style": meta}


def main():
    vocab, merges = train()
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False,
              "clean_up_tokenization_spaces": False}
    with open(os.path.join(HERE, "expected.jsonl"), "w", encoding="utf-8") as out:
        for name, tj in variants(vocab, merges).items():
            d = os.path.join(HERE, name)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
                json.dump(tj, f, ensure_ascii=False, indent=1)
            with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
                json.dump(config, f, ensure_ascii=False, indent=1)
            tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
            for text in TEXTS:
                ids = tok.encode(text, add_special_tokens=False).ids
                rec = {"tokenizer": name, "text": text, "ids": ids, "decoded": tok.decode(ids)}
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
