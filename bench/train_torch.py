#!/usr/bin/env python3
"""Training tokens/s of an HF checkpoint in PyTorch, for bench_train.

Mirrors finmoe's training step: float32 weights, random tokens with
next-token labels, mean cross-entropy (+ the load-balancing loss for MoE
models), backward, clip_grad_norm_(1.0), AdamW(betas=(0.9, 0.95), eps=1e-8,
weight_decay=0.1 on tensors of 2+ dims), zero_grad(set_to_none=True).
Prints one JSON object: {"tokens_per_second": ..., "torch": version, ...}.
Needs torch and transformers.
"""
import argparse
import json
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF checkpoint directory")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = transformers.AutoConfig.from_pretrained(args.model)
    moe = config.model_type in ("mixtral", "qwen2_moe")
    if moe:
        config.output_router_logits = True  # adds the load-balancing loss to .loss
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.model, config=config, dtype=torch.float32)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.model, config=config, torch_dtype=torch.float32)
    model.train()

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8)

    vocab = config.vocab_size

    def step():
        t = torch.randint(vocab, (args.batch, args.seq + 1))
        tokens, labels = t[:, :-1], t[:, 1:]
        out = model(input_ids=tokens)
        logits = out.logits  # [B,T,V]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab).float(),
                                                 labels.reshape(-1))
        if moe:  # HF returns the unscaled load-balancing loss
            loss = loss + config.router_aux_loss_coef * out.aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    secs = time.perf_counter() - t0
    print(json.dumps({
        "tokens_per_second": args.steps * args.batch * args.seq / secs,
        "seconds": secs,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "model_type": config.model_type,
    }))


if __name__ == "__main__":
    main()
