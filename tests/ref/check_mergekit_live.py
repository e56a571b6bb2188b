#!/usr/bin/env python3
"""finmoe merge against a live mergekit, and its output in HF transformers.

    python check_mergekit_live.py FINMOE_BINARY WORKDIR

In WORKDIR: fresh tiny random models (another seed than the committed ones),
then for every recipe of make_mergekit_reference.py both `mergekit-yaml` and
`finmoe merge`: every tensor must agree within 2e-6 relative, and finmoe's
output must load in transformers with the logits of mergekit's output. For
dare_linear / dare_ties (random draws, different generators) the kept
fraction, the rescaling and the mean update must agree statistically.
Exit 0 on agreement, 1 otherwise, 77 when mergekit/transformers are missing.
"""
import os
import subprocess
import sys

try:
    import mergekit  # noqa: F401
    import torch
    import transformers
    from safetensors.torch import load_file
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_mergekit_reference as ref  # noqa: E402

DARE = {
    "dare_linear": """
merge_method: dare_linear
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 1.0, density: 0.4}
dtype: float32
""",
    "dare_ties": """
merge_method: dare_ties
base_model: models/base
models:
  - model: models/a
    parameters: {weight: 0.6, density: 0.5}
  - model: models/b
    parameters: {weight: 0.4, density: 0.5}
parameters: {normalize: true}
dtype: float32
""",
}


def tensors(d):
    return load_file(os.path.join(d, "model.safetensors"))


def logits(d):
    m = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(input_ids=torch.tensor([[1, 5, 9, 33, 2, 60, 7]])).logits


def main(finmoe, work):
    ref.make_models(work, seed=777)
    failed = 0
    for name, text in list(ref.RECIPES.items()) + list(DARE.items()):
        recipe = os.path.join(work, name + ".yaml")
        with open(recipe, "w") as f:
            f.write(text.lstrip())
        mk, fm = os.path.join(work, "mk-" + name), os.path.join(work, "fm-" + name)
        ref.run_mergekit(recipe, work, mk, seed=1)
        subprocess.run([finmoe, "merge", recipe, fm, "--seed", "1", "--json"], cwd=work, check=True,
                       stdout=subprocess.DEVNULL)
        a, b = tensors(mk), tensors(fm)
        if name in DARE:
            base = tensors(os.path.join(work, "models", "base"))
            # kept fraction and mean |update| over all tensors, in both tools
            def stats(t):
                n = kept = mass = 0.0
                for k, v in t.items():
                    d = v - base[k]
                    n += d.numel()
                    kept += (d.abs() > 1e-9).sum().item()
                    mass += d.abs().sum().item()
                return kept / n, mass / n
            (ka, ma), (kb, mb) = stats(a), stats(b)
            ok = abs(ka - kb) < 0.03 and abs(ma - mb) / ma < 0.08
            print(f"{name}: kept {ka:.3f} (mergekit) vs {kb:.3f} (finmoe), "
                  f"mean |update| {ma:.4f} vs {mb:.4f}: {'ok' if ok else 'DIFFERENT'}")
            failed += not ok
            continue
        worst = max(((a[k] - b[k]).abs() / (1 + a[k].abs())).max().item() for k in a)
        same_names = sorted(a) == sorted(b)
        dl = (logits(mk) - logits(fm)).abs().max().item()
        ok = same_names and worst < 2e-6 and dl < 1e-4
        print(f"{name}: max rel diff {worst:.2e}, transformers logits diff {dl:.2e}: "
              f"{'ok' if ok else 'DIFFERENT'}")
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])))
