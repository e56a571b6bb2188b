#!/usr/bin/env python3
"""Records what /v1/embeddings must return for tiny random models made by
make_hf_reference.py: Hugging Face transformers' final hidden states (the
base model's last_hidden_state, after the final norm), pooled and
normalised here with torch, independently of finmoe.

    python tests/ref/make_embedding_reference.py tests/data/hf tests/data/serve/embeddings

Writes OUT/<model>.json: {"model", "inputs": [[ids]], "last", "mean" (L2-
normalised, one row per input), "last_raw", "mean_raw" (not normalised)},
float32 values as float64 JSON numbers.
Requires: torch, transformers.
"""
import json
import os
import sys

import torch
import transformers

MODELS = ["llama_gqa_llama3rope", "qwen2_moe_shared"]
INPUTS = [[5, 17, 42, 3, 99, 250, 7, 8, 1, 64, 12, 300],  # 12 tokens
          [11],                                           # one token: last == mean
          list(range(20, 60))]                            # 40 tokens


def main(hf_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name in MODELS:
        model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(hf_dir, name),
                                                                  dtype=torch.float32)
        model.eval()
        rec = {"model": name, "inputs": INPUTS, "last": [], "mean": [], "last_raw": [], "mean_raw": []}
        with torch.no_grad():
            for ids in INPUTS:
                h = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]  # [T, D]
                last, mean = h[-1], h.mean(0)
                rec["last_raw"].append(last.tolist())
                rec["mean_raw"].append(mean.tolist())
                rec["last"].append(torch.nn.functional.normalize(last, dim=0).tolist())
                rec["mean"].append(torch.nn.functional.normalize(mean, dim=0).tolist())
        path = os.path.join(out_dir, name + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump(rec, f)
        os.replace(path + ".tmp", path)
        print("wrote", path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
