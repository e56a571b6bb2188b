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

# DeepSeek-V2/V3 (MLA attention + DeepSeekMoE): 4 heads of q/k 16 NoPE + 8 RoPE
# dims and 12-dim values, latent KV of 32, 8 routed experts (2-3 per token)
# plus shared ones, layer 0 dense (first_k_dense_replace). `DeepseekV2Config`
# and `DeepseekV3Config` exist from transformers 4.51; the yarn variants carry
# DeepSeek's mscale / mscale_all_dim.
MLA = dict(kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
           num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8,
           moe_intermediate_size=24, tie_word_embeddings=False)
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32,
            beta_fast=32.0, beta_slow=1.0, mscale=0.707, mscale_all_dim=0.707)
if hasattr(transformers, "DeepseekV3Config"):
    VARIANTS.update({
        # V2-Lite-like: q_proj (no q LoRA), softmax scores, greedy top-2, 2 shared experts
        "deepseek_v2_greedy": ("DeepseekV2ForCausalLM", transformers.DeepseekV2Config, dict(
            MLA, num_key_value_heads=4, q_lora_rank=None, n_shared_experts=2, num_experts_per_tok=2,
            topk_method="greedy", routed_scaling_factor=1.0, norm_topk_prob=False,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
        # V2: q LoRA, group-limited greedy (4 groups, best 2), scaled weights, yarn
        "deepseek_v2_group_yarn": ("DeepseekV2ForCausalLM", transformers.DeepseekV2Config, dict(
            MLA, num_key_value_heads=4, q_lora_rank=24, n_shared_experts=1, num_experts_per_tok=3,
            topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.5,
            norm_topk_prob=False, rope_parameters=YARN)),
        # V3: q LoRA, sigmoid + e_score_correction_bias (noaux_tc), 4 groups / best 2,
        # renormalised top-3 x 2.5, interleaved rope pairs, yarn
        "deepseek_v3_noaux_yarn": ("DeepseekV3ForCausalLM", transformers.DeepseekV3Config, dict(
            MLA, num_key_value_heads=4, q_lora_rank=24, n_shared_experts=1, num_experts_per_tok=3,
            n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True,
            rope_interleave=True, rope_parameters=YARN)),
        # V3 without q LoRA, one group, no renormalisation, rotate-half rope
        "deepseek_v3_plain": ("DeepseekV3ForCausalLM", transformers.DeepseekV3Config, dict(
            MLA, num_key_value_heads=4, q_lora_rank=None, n_shared_experts=2, num_experts_per_tok=2,
            n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=False,
            rope_interleave=False, rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
    })


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
        for name, b in model.named_buffers():  # DeepSeek-V3's noaux_tc routing bias
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.3 * torch.randn(b.shape, generator=gen, dtype=torch.float32))


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
    write_readme(out)


def write_readme(out):
    """README.md: each variant with the versions its reference file records."""
    from safetensors import safe_open
    lines = ["Tiny random models saved by Hugging Face transformers and their float32 logits,",
             "made by tests/ref/make_hf_reference.py. Not produced by finmoe.", ""]
    for name in sorted(os.listdir(out)):
        ref = os.path.join(out, name, "reference.safetensors")
        if os.path.exists(ref):
            with safe_open(ref, "pt") as f:
                meta = f.metadata() or {}
            lines.append(f"- {name}: transformers {meta.get('transformers', '?')}, "
                         f"torch {meta.get('torch', '?')}")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/hf", set(sys.argv[2:]))
