#!/usr/bin/env python3
"""Builds a tiny random Qwen2 model with Hugging Face `transformers`, LoRA
adapters for it with `peft`, and the logits both compute, so finmoe's LoRA
tests compare against the reference implementation without torch at test time.

    python tests/ref/make_peft_reference.py tests/data/lora

OUT/ holds
  base/             the model as saved by `save_pretrained` (config.json, model.safetensors)
  <adapter>/        each adapter as saved by PeftModel.save_pretrained
                    (adapter_config.json, adapter_model.safetensors)
  reference.safetensors
                    input_ids [B,T] int64, base_logits [B,T,V] float32, and per adapter
                    <adapter>.logits (the PEFT model's forward, adapter unmerged) and
                    <adapter>.merged_logits (after merge_and_unload), all float32

Adapters: `all_targets` (r=4, alpha=8, every projection q/k/v/o/gate/up/down)
and `rslora_qv` (r=2, alpha=6, use_rslora, q_proj and v_proj only). Their A and
B are drawn at random (PEFT starts B at zero, which would hide a wrong B or
scaling). Requires: torch, transformers, peft, safetensors.
"""
import os
import sys

import peft
import torch
import transformers
from safetensors.torch import save_file

VOCAB = 96
CONFIG = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
              rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2)

ADAPTERS = {
    "all_targets": dict(r=4, lora_alpha=8, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "rslora_qv": dict(r=2, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj"]),
}


def randomize(model, gen, scale):
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            p.copy_(1.0 + 0.2 * noise if "norm" in name else scale * noise)


def main(out):
    gen = torch.Generator().manual_seed(2024)
    cfg = transformers.Qwen2Config(**CONFIG)
    cfg.torch_dtype = torch.float32
    base = transformers.Qwen2ForCausalLM(cfg).float().eval()
    randomize(base, gen, 0.15)
    base.save_pretrained(os.path.join(out, "base"), safe_serialization=True)
    ids = torch.randint(0, VOCAB, (2, 12), generator=gen)
    ref = {"input_ids": ids.contiguous()}
    with torch.no_grad():
        ref["base_logits"] = base(input_ids=ids).logits.float().contiguous()

    for name, kw in ADAPTERS.items():
        model = transformers.Qwen2ForCausalLM(cfg).float().eval()
        model.load_state_dict(base.state_dict())
        lcfg = peft.LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **kw)
        pm = peft.get_peft_model(model, lcfg).eval()
        with torch.no_grad():
            for pname, p in pm.named_parameters():
                if "lora_" in pname:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        pm.save_pretrained(os.path.join(out, name))
        os.remove(os.path.join(out, name, "README.md"))  # a generated model card, not data
        with torch.no_grad():
            ref[name + ".logits"] = pm(input_ids=ids).logits.float().contiguous()
            merged = pm.merge_and_unload()
            ref[name + ".merged_logits"] = merged(input_ids=ids).logits.float().contiguous()
        d = (ref[name + ".logits"] - ref["base_logits"]).abs().max().item()
        print(f"{name}: logits {tuple(ref[name + '.logits'].shape)}, max |adapter effect| {d:.3f}")

    save_file(ref, os.path.join(out, "reference.safetensors"),
              metadata={"transformers": transformers.__version__, "peft": peft.__version__,
                        "torch": torch.__version__})
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("A tiny random Qwen2 model and LoRA adapters saved by Hugging Face transformers "
                f"{transformers.__version__} and peft {peft.__version__} (torch "
                f"{torch.__version__}), with their float32 logits, made by "
                "tests/ref/make_peft_reference.py. Not produced by finmoe.\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/lora")
