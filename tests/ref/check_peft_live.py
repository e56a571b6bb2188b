#!/usr/bin/env python3
"""Loads a LoRA adapter finmoe wrote with `peft` and compares logits.

    python check_peft_live.py BASE_DIR ADAPTER_DIR EXPECTED.safetensors

EXPECTED holds `input_ids` [B,T] int64 and finmoe's `logits` [B,T,V] float32
for base + adapter. Exit 0 when peft's logits agree within 1e-4, 1 otherwise,
77 when torch/transformers/peft are not installed (the caller skips).
"""
import sys

try:
    import peft
    import torch
    import transformers
    from safetensors.torch import load_file
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)


def main(base_dir, adapter_dir, expected_file):
    exp = load_file(expected_file)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        logits = model(input_ids=exp["input_ids"]).logits.float()
    diff = (logits - exp["logits"]).abs().max().item()
    print(f"peft {peft.__version__}: max |diff| {diff:.3g}")
    return 0 if diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3]))
