#!/usr/bin/env python3
"""Reference for `finmoe mla-convert`: HF transformers on a converted model.

    python make_mla_reference.py FINMOE_BINARY OUT_DIR

1. HF transformers makes a tiny random Qwen2 source (hidden 64, 4 heads, 2 kv
   heads of 16 dims, q/k/v biases, tied head) whose second kv head's key is
   the first's scaled per rotary pair, so a full-rank conversion is exact.
2. `finmoe mla-convert` converts it (rope 16 = every frequency, FreqFold 1,
   kv_lora_rank 49 = all of [K_nope; V] + the anchor) with token-id
   calibration.
3. HF transformers loads the deepseek_v3 output unchanged; its float32 logits
   and the source's go to OUT_DIR/reference.safetensors (`input_ids`,
   `logits`, `source_logits`) beside the converted config.json and
   model.safetensors. Exit 1 when the two HF logits differ by more than 1e-4
   of their scale.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import save_file


def main(finmoe, out_dir):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, 0.15)
        for layer in model.model.layers:
            k = layer.self_attn.k_proj  # rotate-half pairs (p, p + 8) of each 16-dim head
            lam = (torch.rand(8) * 4 - 2).repeat(2)
            k.weight[16:] = k.weight[:16] * lam[:, None]
            k.bias[16:] = k.bias[:16] * lam
    work = tempfile.mkdtemp()
    try:
        src, conv = os.path.join(work, "src"), os.path.join(work, "mla")
        model.save_pretrained(src)
        calib = os.path.join(work, "calib.jsonl")
        with open(calib, "w") as f:
            for _ in range(8):
                f.write(json.dumps({"ids": torch.randint(96, (32,)).tolist()}) + "\n")
        subprocess.run([finmoe, "mla-convert", src, conv, "--calib", calib, "--calib-samples", "8",
                        "--calib-seq-len", "32", "--eval-samples", "2", "--rope-dim", "16",
                        "--freqfold", "1", "--kv-lora-rank", "49"], check=True)
        converted = transformers.AutoModelForCausalLM.from_pretrained(conv, dtype=torch.float32).eval()
        ids = torch.randint(96, (2, 40), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            logits = converted(input_ids=ids).logits.float().contiguous()
            source_logits = model(input_ids=ids).logits.float().contiguous()
        diff = (logits - source_logits).abs().max().item()
        scale = source_logits.abs().max().item()
        print(f"{converted.config.model_type}: HF converted vs HF source max |diff| {diff:.3g} "
              f"(scale {scale:.3g}, transformers {transformers.__version__})")
        os.makedirs(out_dir, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(conv, name), os.path.join(out_dir, name))
        save_file({"input_ids": ids.contiguous(), "logits": logits, "source_logits": source_logits},
                  os.path.join(out_dir, "reference.safetensors"),
                  metadata={"transformers": transformers.__version__})
        return 0 if diff <= 1e-4 * scale else 1
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
