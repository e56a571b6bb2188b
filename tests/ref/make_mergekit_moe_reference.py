#!/usr/bin/env python3
"""Reference MoE merges for tests/merge: mergekit-moe on tiny random models.

Writes into tests/data/merge/moe/ (or the directory given as the first argument):
  models/{base,x,y}/   tiny float32 LlamaForCausalLM checkpoints of one base
                       (x, y: the base with seeded noise on the FFN), with the
                       byte-fallback test tokenizer (tests/data/tokenizer)
  cheap_embed.yaml     a mergekit-moe recipe (gate_mode cheap_embed, two
                       experts with positive and negative prompts), paths
                       relative to this directory
  expected/cheap_embed/model.safetensors  mergekit-moe's output tensors, as it
                       writes them (transformers 5 mixtral: mlp.gate,
                       mlp.experts.gate_up_proj [E, 2F, D], down_proj [E, D, F])
  MANIFEST.json        the mergekit, transformers and torch versions used

Needs torch, safetensors and mergekit (PyPI `mergekit`, its own venv works).
  python tests/ref/make_mergekit_moe_reference.py
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
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(HERE, "..", "data", "merge", "moe")
TOKENIZER = os.path.join(HERE, "..", "data", "tokenizer", "byte_fallback", "llama2_style")

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 700,
    "hidden_size": 16,
    "intermediate_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

RECIPE = """base_model: models/base
gate_mode: cheap_embed
dtype: float32
experts_per_token: 1
experts:
  - source_model: models/x
    positive_prompts: ["interest rates and bonds", "credit spreads"]
    negative_prompts: ["poetry"]
  - source_model: models/y
    positive_prompts: ["def main(): return 0"]
"""


def tensors(seed):
    g = torch.Generator().manual_seed(seed)
    D, F, V = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    kv = D // CONFIG["num_attention_heads"] * CONFIG["num_key_value_heads"]
    t = {"model.embed_tokens.weight": torch.randn(V, D, generator=g) * 0.2,
         "lm_head.weight": torch.randn(V, D, generator=g) * 0.2,
         "model.norm.weight": 1 + 0.1 * torch.randn(D, generator=g)}
    for l in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{l}."
        for n, shape in [("self_attn.q_proj", (D, D)), ("self_attn.k_proj", (kv, D)),
                         ("self_attn.v_proj", (kv, D)), ("self_attn.o_proj", (D, D)),
                         ("mlp.gate_proj", (F, D)), ("mlp.up_proj", (F, D)),
                         ("mlp.down_proj", (D, F))]:
            t[p + n + ".weight"] = torch.randn(*shape, generator=g) * 0.2
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"] = 1 + 0.1 * torch.randn(D, generator=g)
    return t


def save(name, t):
    d = os.path.join(OUT, "models", name)
    os.makedirs(d, exist_ok=True)
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, f), os.path.join(d, f))


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    base = tensors(1)
    save("base", base)
    for name, seed in (("x", 2), ("y", 3)):
        g = torch.Generator().manual_seed(seed)
        save(name, {k: v + (0.05 * torch.randn(v.shape, generator=g) if ".mlp." in k else 0)
                    for k, v in base.items()})
    with open(os.path.join(OUT, "cheap_embed.yaml"), "w") as f:
        f.write(RECIPE)
    exe = os.path.join(os.path.dirname(sys.executable), "mergekit-moe")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([exe, "cheap_embed.yaml", os.path.join(tmp, "out"), "--quiet"],
                       cwd=OUT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        out = {}
        for fn in sorted(os.listdir(os.path.join(tmp, "out"))):
            if fn.endswith(".safetensors"):
                out.update(load_file(os.path.join(tmp, "out", fn)))
    os.makedirs(os.path.join(OUT, "expected", "cheap_embed"), exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in out.items()},
              os.path.join(OUT, "expected", "cheap_embed", "model.safetensors"), metadata={"format": "pt"})
    import importlib.metadata as md
    with open(os.path.join(OUT, "MANIFEST.json"), "w") as f:
        json.dump({"mergekit": md.version("mergekit"), "transformers": md.version("transformers"),
                   "torch": torch.__version__, "recipes": ["cheap_embed"]}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
