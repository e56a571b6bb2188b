#!/usr/bin/env python3
"""Reference merges with vocabulary remapping for tests/merge: mergekit itself
on three tiny llama models whose tokenizers add different tokens.

Writes into tests/data/merge/tokenizer/ (or the directory given as the first
argument):
  models/{base,a,b}/   tiny float32 LlamaForCausalLM checkpoints (one layer)
                       with the byte-fallback test tokenizer
                       (tests/data/tokenizer/byte_fallback/llama2_style); the
                       base adds <|base|>, a adds it too and <|im_start|>,
                       <|im_end|>, <ticker>; b adds <|im_end|>, <eps>, <|tool|>,
                       so a shared added token has another id in each; b's
                       model.vocab also has "▁revenue" (id 659), and they
                       carry one chat template (base has none)
  <name>.yaml          one mergekit recipe per case (paths relative to here)
  expected/<name>/     mergekit-yaml's output: model.safetensors,
                       tokenizer.json, tokenizer_config.json, config.json,
                       chat_template.jinja when transformers writes one, and
                       tokens.json: for each of TEXTS the token ids
                       transformers' tokenizer of the output gives, and for
                       each chat template case the rendering of CONVERSATION
  templates.json       mergekit's built-in chat templates rendered (by
                       transformers' apply_chat_template) on CONVERSATION
  MANIFEST.json        versions

mergekit orders the added tokens of the models other than the base in the
iteration order of a Python set (it varies with PYTHONHASHSEED), so the tests
compare rows and tokenizations by token string, not by id.

mergekit runs with PYTHONHASHSEED=0 (FINMOE_REF_HASHSEED overrides it; the
live test, tests/merge/merge_tokenizer_test.cpp, runs this script with 1).

Needs: torch, safetensors, transformers and mergekit (PyPI `mergekit`):
  V/bin/python tests/ref/make_mergekit_tokenizer_reference.py
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = (os.path.abspath(sys.argv[1]) if len(sys.argv) > 1
       else os.path.join(HERE, "..", "data", "merge", "tokenizer"))
TOKENIZER = os.path.join(HERE, "..", "data", "tokenizer", "byte_fallback", "llama2_style")

BASE_VOCAB = 659  # tokens of the test tokenizer
ADDED = {
    "base": [("<|base|>", True)],  # a has it too, b not: b takes the base's row
    "a": [("<|base|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<ticker>", False)],
    "b": [("<|im_end|>", True), ("<eps>", False), ("<|tool|>", True)],
}
VOCAB_EXTRA = {"b": ["▁revenue"]}  # b's model.vocab also has a token the base lacks
MODEL_TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}[assistant] {% endif %}")

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
    "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
    "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
}

TEXTS = [
    "<|im_start|>user\nEPS of <ticker> rose<|im_end|>",
    "call <|tool|> for <eps> now<|im_end|>",
    "plain text with no added tokens <|base|>",
    "revenue rose",
]
CONVERSATION = [
    {"role": "system", "content": "You are a financial analyst."},
    {"role": "user", "content": "What was Q3 revenue?"},
    {"role": "assistant", "content": "It rose 4%."},
    {"role": "user", "content": "And margins?"},
]
CONVERSATION_NO_SYSTEM = CONVERSATION[1:]

RECIPES = {
    # linear over all three: tokens only a or b has come from it, <|im_end|>
    # (a and b, not the base) is the mean of their rows
    "union_linear": """
merge_method: linear
base_model: models/base
models:
  - model: models/base
    parameters: {weight: 0.2}
  - model: models/a
    parameters: {weight: 0.5}
  - model: models/b
    parameters: {weight: 0.3}
dtype: float32
tokenizer_source: union
chat_template: chatml
""",
    # the tokenizer: block: per-token sources, a new token, padding
    "union_ties_tokens": """
merge_method: ties
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 0.6, density: 0.5}
  - model: models/b
    parameters: {weight: 0.4, density: 0.7}
dtype: float32
tokenizer:
  source: union
  pad_to_multiple_of: 8
  tokens:
    "<ticker>":
      source: {kind: zero}
    "<|im_end|>":
      source: {kind: model_token, model: models/base, token: "</s>"}
      force: true
    "<new>":
      source: {kind: model_token, model: models/a, token_id: 5}
    "<|tool|>":
      source: models/b
chat_template: "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}"
""",
    # another model's vocabulary: rows remapped to b's ids by token string
    "source_b": """
merge_method: task_arithmetic
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 0.7}
  - model: models/b
    parameters: {weight: 0.5}
dtype: float32
tokenizer_source: models/b
chat_template: auto
""",
}

BUILTIN_TEMPLATES = ["chatml", "llama3", "alpaca", "mistral"]


def shapes(vocab):
    h, f = CONFIG["hidden_size"], CONFIG["intermediate_size"]
    kv = h // CONFIG["num_attention_heads"] * CONFIG["num_key_value_heads"]
    s = {"model.embed_tokens.weight": [vocab, h], "model.norm.weight": [h], "lm_head.weight": [vocab, h]}
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s.update({
            p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [h, h], p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, h],
            p + "mlp.gate_proj.weight": [f, h], p + "mlp.up_proj.weight": [f, h],
            p + "mlp.down_proj.weight": [h, f],
        })
    return s


def write_tokenizer(path, extra, added, with_template):
    with open(os.path.join(TOKENIZER, "tokenizer.json")) as f:
        tj = json.load(f)
    with open(os.path.join(TOKENIZER, "tokenizer_config.json")) as f:
        tc = json.load(f)
    for i, tok in enumerate(extra):
        tj["model"]["vocab"][tok] = BASE_VOCAB + i
    for i, (content, special) in enumerate(added):
        tj["added_tokens"].append({"id": BASE_VOCAB + len(extra) + i, "content": content, "single_word": False,
                                   "lstrip": False, "rstrip": False, "normalized": not special,
                                   "special": special})
    if with_template:
        tc["chat_template"] = MODEL_TEMPLATE
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, ensure_ascii=False, indent=1)


def make_models(out, seed=20261205):
    """base: the test tokenizer plus <|base|>; a: base's 660 tokens plus three
    added; b: the test tokenizer's 659, ▁revenue and three added. A model's
    rows for the base's tokens are the base's plus noise, its other rows random."""
    g = torch.Generator().manual_seed(seed)
    base_rows = BASE_VOCAB + len(ADDED["base"])
    base = {}
    for name, shape in shapes(base_rows).items():
        w = torch.randn(shape, generator=g) * 0.5
        if name.endswith("norm.weight"):
            w = 1.0 + 0.1 * torch.randn(shape, generator=g)
        base[name] = w
    for n in ("base", "a", "b"):
        added, extra = ADDED.get(n, []), VOCAB_EXTRA.get(n, [])
        vocab = BASE_VOCAB + len(extra) + len(added)
        shared = base_rows if n == "a" else BASE_VOCAB  # leading rows of the base's tokens
        t = {}
        for name, shape in shapes(vocab).items():
            w = base[name]
            if n != "base":
                if shape[0] == vocab and name != "model.norm.weight":
                    w = w[:shared]
                w = w + 0.3 * torch.randn(w.shape, generator=g)
                if shape[0] == vocab and name != "model.norm.weight":
                    w = torch.cat([w, torch.randn([vocab - shared] + shape[1:], generator=g)])
            t[name] = w
        path = os.path.join(out, "models", n)
        os.makedirs(path, exist_ok=True)
        save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(path, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(dict(CONFIG, vocab_size=vocab), f, indent=2)
        write_tokenizer(path, extra, added, with_template=n != "base")


def mergekit_yaml_path():
    p = os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")
    return p if os.path.exists(p) else shutil.which("mergekit-yaml")


def render(tok, conversation):
    return tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def main():
    import mergekit  # noqa: F401
    import transformers
    from importlib.metadata import version

    make_models(OUT)
    for name, text in RECIPES.items():
        recipe = os.path.join(OUT, name + ".yaml")
        with open(recipe, "w") as f:
            f.write(text.lstrip())
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out")
            env = dict(os.environ, PYTHONHASHSEED=os.environ.get("FINMOE_REF_HASHSEED", "0"))
            subprocess.run([mergekit_yaml_path(), recipe, out, "--quiet", "--no-write-model-card"],
                           cwd=OUT, check=True, env=env)
            dest = os.path.join(OUT, "expected", name)
            os.makedirs(dest, exist_ok=True)
            merged = load_file(os.path.join(out, "model.safetensors"))
            save_file(merged, os.path.join(dest, "model.safetensors"), metadata={"format": "pt"})
            for f in ("tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.jinja"):
                if os.path.exists(os.path.join(out, f)):
                    shutil.copy(os.path.join(out, f), os.path.join(dest, f))
            tok = transformers.AutoTokenizer.from_pretrained(out)
            tokens = {"texts": {t: tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS},
                      "chat": render(tok, CONVERSATION) if tok.chat_template else None}
            with open(os.path.join(dest, "tokens.json"), "w") as f:
                json.dump(tokens, f, ensure_ascii=False, indent=1)
        print(f"{name}: {len(merged)} tensors, vocabulary {len(tok)}")

    # mergekit's built-in chat templates, rendered
    from importlib.resources import files
    from mergekit._data import chat_templates
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(OUT, "models", "base"))
    rendered = {}
    for name in BUILTIN_TEMPLATES:
        tok.chat_template = files(chat_templates).joinpath(name + ".jinja").read_text()
        conv = CONVERSATION_NO_SYSTEM if name == "mistral" else CONVERSATION
        rendered[name] = {"messages": conv, "text": render(tok, conv)}
    with open(os.path.join(OUT, "templates.json"), "w") as f:
        json.dump(rendered, f, ensure_ascii=False, indent=1)
    with open(os.path.join(OUT, "MANIFEST.json"), "w") as f:
        json.dump({"mergekit": version("mergekit"), "torch": torch.__version__,
                   "transformers": transformers.__version__, "recipes": sorted(RECIPES),
                   "texts": TEXTS, "conversation": CONVERSATION}, f, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    main()
