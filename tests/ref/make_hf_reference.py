#!/usr/bin/env python3
"""Builds tiny random models with Hugging Face `transformers` and records their
logits, so finmoe's tests compare against the reference implementation
without needing torch at test time.

    python tests/ref/make_hf_reference.py tests/data/hf [NAME...]

With NAMEs only those variants are (re)written.

Each OUT/<name>/ holds the model as saved by `save_pretrained` (config.json,
model.safetensors) and reference.safetensors with `input_ids` [B,T] (int64)
and `logits` [B,T,V] (float32) from the HF forward in float32.
Requires: torch, transformers, safetensors.
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file

VOCAB = 320
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
              bos_token_id=1, eos_token_id=2)

VARIANTS = {
    # GQA 4q/2kv, llama3 rope scaling, separate lm_head
    "llama_gqa_llama3rope": ("LlamaForCausalLM", transformers.LlamaConfig, dict(
        num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=32))),
    # linear rope scaling, MHA, attention + mlp bias, tied head
    "llama_linear_bias_tied": ("LlamaForCausalLM", transformers.LlamaConfig, dict(
        num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=True,
        attention_bias=True, mlp_bias=True,
        rope_scaling=dict(rope_type="linear", factor=2.0))),
    # yarn
    "llama_yarn": ("LlamaForCausalLM", transformers.LlamaConfig, dict(
        num_key_value_heads=1, rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64))),
    # qwen2: qkv bias, tied embeddings, big rope theta
    "qwen2_tied": ("Qwen2ForCausalLM", transformers.Qwen2Config, dict(
        num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True)),
    # mistral: explicit head_dim different from hidden/heads
    "mistral_headdim": ("MistralForCausalLM", transformers.MistralConfig, dict(
        num_key_value_heads=2, head_dim=24, rope_theta=10000.0, tie_word_embeddings=False,
        sliding_window=None)),
    # mistral with a 16-token sliding window on every layer (inputs are 80 long)
    "mistral_sliding": ("MistralForCausalLM", transformers.MistralConfig, dict(
        num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=False,
        sliding_window=16)),
    # qwen2 with use_sliding_window: layer 0 full (max_window_layers=1), layer 1 a 12-token window
    "qwen2_sliding": ("Qwen2ForCausalLM", transformers.Qwen2Config, dict(
        num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True,
        use_sliding_window=True, sliding_window=12, max_window_layers=1)),
    # Mixtral: 4 experts, top-2 (softmax over the selected logits)
    "mixtral_top2": ("MixtralForCausalLM", transformers.MixtralConfig, dict(
        num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=False,
        num_local_experts=4, num_experts_per_tok=2, sliding_window=None)),
    # Qwen2-MoE: 6 experts top-2 without renormalisation, gated shared expert,
    # one dense layer (mlp_only_layers)
    "qwen2_moe_shared": ("Qwen2MoeForCausalLM", transformers.Qwen2MoeConfig, dict(
        num_hidden_layers=3, num_key_value_heads=2, rope_theta=1000000.0,
        tie_word_embeddings=False, num_experts=6, num_experts_per_tok=2,
        moe_intermediate_size=40, shared_expert_intermediate_size=96, norm_topk_prob=False,
        decoder_sparse_step=1, mlp_only_layers=[1])),
    # Qwen2-MoE: renormalised top-3 of 5, MoE on every second layer, tied head
    "qwen2_moe_norm": ("Qwen2MoeForCausalLM", transformers.Qwen2MoeConfig, dict(
        num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=True,
        num_experts=5, num_experts_per_tok=3, moe_intermediate_size=48,
        shared_expert_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=2,
        mlp_only_layers=[])),
}


def randomize(model, gen):
    # HF's init leaves norms at 1 and biases at 0, which would hide a missing
    # bias or norm weight: draw everything.
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.15 * noise)


def main(out, only):
    torch.manual_seed(0)
    for i, (name, (arch, cfg_cls, extra)) in enumerate(VARIANTS.items()):
        if only and name not in only:
            continue
        gen = torch.Generator().manual_seed(1000 + i)
        cfg = cfg_cls(**{**COMMON, **extra})
        cfg.torch_dtype = torch.float32
        model = getattr(transformers, arch)(cfg).float().eval()
        randomize(model, gen)
        if cfg.tie_word_embeddings:
            model.tie_weights()
        d = os.path.join(out, name)
        model.save_pretrained(d, safe_serialization=True)
        # positions beyond original_max_position_embeddings exercise the scaling
        ids = torch.randint(0, VOCAB, (2, 80), generator=gen)
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float().contiguous()
        save_file({"input_ids": ids.contiguous(), "logits": logits},
                  os.path.join(d, "reference.safetensors"),
                  metadata={"transformers": transformers.__version__, "torch": torch.__version__})
        print(f"{name}: logits {tuple(logits.shape)} |max| {logits.abs().max():.3f}")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("Tiny random models saved by Hugging Face transformers "
                f"{transformers.__version__} (torch {torch.__version__}) and their float32 "
                "logits, made by tests/ref/make_hf_reference.py. Not produced by finmoe.\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/hf", set(sys.argv[2:]))
