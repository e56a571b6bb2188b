#!/usr/bin/env python3
"""Loads a checkpoint finmoe wrote with HF transformers and compares logits.

    python check_hf_live.py MODEL_DIR EXPECTED.safetensors

EXPECTED holds `input_ids` [B,T] int64 and finmoe's `logits` [B,T,V] float32.
Exit 0 when transformers' logits agree within 1e-4, 1 otherwise, 77 when
torch/transformers are not installed (the caller skips).
"""
import sys

try:
    import torch
    import transformers
    from safetensors.torch import load_file
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)


def main(model_dir, expected_file):
    exp = load_file(expected_file)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=exp["input_ids"]).logits.float()
    diff = (logits - exp["logits"]).abs().max().item()
    print(f"{model.config.model_type}: max |diff| {diff:.3g} (transformers {transformers.__version__})")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
