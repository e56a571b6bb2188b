#!/usr/bin/env python3
"""Reference merges for tests/merge: mergekit itself on three tiny random models.

Writes into tests/data/merge/ (or the directory given as the first argument):
  models/{base,a,b}/    three tiny float32 LlamaForCausalLM checkpoints of one
                        base: a and b are the base plus seeded noise (the
                        "fine-tuned" models), large enough that slerp takes
                        its spherical branch
  <name>.yaml           one mergekit recipe per deterministic method, the
                        model paths relative to this directory
  expected/<name>/model.safetensors   mergekit-yaml's output for that recipe
  MANIFEST.json         the mergekit and torch versions used

Needs: torch, safetensors and mergekit (PyPI `mergekit`; its own venv works:
`python3 -m venv V && V/bin/pip install mergekit`). Run from any directory:
  python tests/ref/make_mergekit_reference.py
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
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else os.path.join(HERE, "..", "data", "merge")

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def shapes():
    h, f, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
    kv = h // CONFIG["num_attention_heads"] * CONFIG["num_key_value_heads"]
    s = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h], "lm_head.weight": [v, h]}
    for i in range(CONFIG["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s.update({
            p + "input_layernorm.weight": [h],
            p + "post_attention_layernorm.weight": [h],
            p + "self_attn.q_proj.weight": [h, h],
            p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h],
            p + "self_attn.o_proj.weight": [h, h],
            p + "mlp.gate_proj.weight": [f, h],
            p + "mlp.up_proj.weight": [f, h],
            p + "mlp.down_proj.weight": [h, f],
        })
    return s


def write_model(path, tensors):
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)


RECIPES = {
    "linear": """
merge_method: linear
models:
  - model: models/base
    parameters: {weight: 0.2}
  - model: models/a
    parameters:
      weight: [0.5, 1.0]          # a gradient over the layers
  - model: models/b
    parameters:
      weight:
        - filter: mlp
          value: 0.1
        - value: 0.7
dtype: float32
""",
    "linear_nonorm": """
merge_method: linear
models:
  - model: models/a
    parameters: {weight: 0.6}
  - model: models/b
    parameters: {weight: 0.9}
parameters:
  normalize: false
dtype: float32
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 0.5}
  - model: models/b
    parameters: {weight: 0.8}
parameters:
  lambda: 0.9
dtype: float32
""",
    "task_arithmetic_normalize": """
merge_method: task_arithmetic
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 0.3}
  - model: models/b
    parameters: {weight: [0.2, 0.9]}
parameters:
  normalize: true
dtype: float32
""",
    "ties": """
merge_method: ties
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 1.0, density: 0.5}
  - model: models/b
    parameters: {weight: 0.6, density: 0.7}
dtype: float32
""",
    "ties_lambda": """
merge_method: ties
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 0.7, density: 0.3}
  - model: models/b
    parameters: {weight: 0.5, density: [0.9, 0.4]}
parameters:
  normalize: false
  lambda: 1.3
dtype: float32
""",
    "slerp": """
merge_method: slerp
base_model: models/base
models:
  - model: models/base
  - model: models/a
parameters:
  t:
    - filter: self_attn
      value: [0.0, 0.5, 1.0]
    - filter: mlp
      value: 0.3
    - value: 0.6
dtype: float32
""",
    "breadcrumbs": """
merge_method: breadcrumbs
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 0.7, density: 0.8, gamma: 0.05}
  - model: models/b
    parameters: {weight: 0.4, density: 0.6, gamma: 0.1}
dtype: float32
""",
    "sce": """
merge_method: sce
base_model: models/base
models:
  - model: models/a
  - model: models/b
parameters:
  select_topk: 0.5
dtype: float32
""",
    "nuslerp": """
merge_method: nuslerp
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 0.3}
  - model: models/b
    parameters: {weight: 0.7}
dtype: float32
""",
    "nuslerp_rows": """
merge_method: nuslerp
models:
  - model: models/a
    parameters: {weight: 1.0}
  - model: models/b
    parameters: {weight: [2.0, 0.5]}
parameters:
  nuslerp_flatten: false
  nuslerp_row_wise: true
dtype: float32
""",
    "model_stock": """
merge_method: model_stock
base_model: models/base
models:
  - model: models/a
  - model: models/b
dtype: float32
""",
}


def make_models(out, seed=20261204):
    """Writes models/{base,a,b} under `out`: a and b are the base plus noise."""
    g = torch.Generator().manual_seed(seed)
    base, a, b = {}, {}, {}
    for name, shape in shapes().items():
        w = torch.randn(shape, generator=g) * 0.5
        if name.endswith("layernorm.weight") or name == "model.norm.weight":
            w = 1.0 + 0.1 * torch.randn(shape, generator=g)
        base[name] = w
        a[name] = w + 0.3 * torch.randn(shape, generator=g)
        b[name] = w + 0.3 * torch.randn(shape, generator=g)
    for n, t in (("base", base), ("a", a), ("b", b)):
        write_model(os.path.join(out, "models", n), t)


def mergekit_yaml_path():
    p = os.path.join(os.path.dirname(sys.executable), "mergekit-yaml")
    return p if os.path.exists(p) else shutil.which("mergekit-yaml")


def run_mergekit(recipe, cwd, out, seed=None):
    """mergekit-yaml RECIPE OUT in `cwd` (the recipe's relative model paths)."""
    cmd = [mergekit_yaml_path(), recipe, out, "--no-copy-tokenizer", "--quiet",
           "--no-write-model-card"]
    if seed is not None:
        cmd += ["--random-seed", str(seed)]
    subprocess.run(cmd, cwd=cwd, check=True)


def main():
    import mergekit  # noqa: F401  (fail early with a clear ImportError)
    from importlib.metadata import version

    make_models(OUT)
    for name, text in RECIPES.items():
        recipe = os.path.join(OUT, name + ".yaml")
        with open(recipe, "w") as f:
            f.write(text.lstrip())
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "out")
            run_mergekit(recipe, OUT, out)
            merged = load_file(os.path.join(out, "model.safetensors"))
            dest = os.path.join(OUT, "expected", name)
            os.makedirs(dest, exist_ok=True)
            save_file(merged, os.path.join(dest, "model.safetensors"), metadata={"format": "pt"})
        print(f"{name}: {len(merged)} tensors")
    with open(os.path.join(OUT, "MANIFEST.json"), "w") as f:
        json.dump({"mergekit": version("mergekit"), "torch": torch.__version__,
                   "recipes": sorted(RECIPES)}, f, indent=2)


if __name__ == "__main__":
    main()
