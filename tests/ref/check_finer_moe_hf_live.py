#!/usr/bin/env python3
"""finer_moe and finmoe_dense checkpoints written by finmoe load in HF
transformers through the modeling code finmoe writes beside them
(trust_remote_code), with finmoe's log-probabilities and greedy generations.

    python check_finer_moe_hf_live.py FINMOE_BIN TOKENIZER_DIR [WORK_DIR]

For each variant (finer_moe with G_O>1, R_O>1, G_I>1, a shared expert, the
concat projection, separate routers (router_mode), tied embeddings, a sliding
window; finmoe_dense with and without biases) (and RoPE linear, llama3 and yarn
scaling, with yarn's attention factor from the factor alone and from DeepSeek's
mscale pair) it writes a config, makes the checkpoint with `finmoe init
--config`, rewrites its weights with O(1)-scale random values (so logits
differ by whole units and routing decisions matter), then
  - loads it with AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True),
    asserting that no tensor is missing or unexpected;
  - compares transformers' log-softmax with `finmoe logits --ids ... --top 64`
    at every position (max abs diff <= 1e-4, float32);
  - runs a greedy HF generate (KV cache) of 8 tokens and checks it against
    `finmoe generate --greedy` (same text) and against finmoe's argmax at
    every position of the generated sequence (`finmoe logits`).
Exit 0 on success, 1 on a mismatch, 77 when torch/transformers are missing.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
except ImportError as e:  # pragma: no cover
    print(f"skip: torch/transformers/safetensors not importable ({e})")
    sys.exit(77)

TOL = 1e-4
TOP = 64
NEW_TOKENS = 8
PROMPT = "The quarterly earnings of the bank rose"

BASE = {
    "vocab_size": 151680, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "max_position_embeddings": 256, "torch_dtype": "float32",
    "eos_token_id": 151645,
}


def finer(name, G_I, R_I, G_O, R_O, T_I, shared, **extra):
    c = dict(BASE, model_type="finer_moe", G_I=G_I, R_I=R_I, G_O=G_O, R_O=R_O,
             num_experts=G_I * R_I * G_O * R_O, num_experts_per_tok=T_I * G_O,
             moe_intermediate_size=16, shared_expert_intermediate_size=shared, qkv_bias=True)
    c.update(extra)
    return name, c


VARIANTS = [
    finer("finer_moe_GO2_RO2_shared", G_I=1, R_I=2, G_O=2, R_O=2, T_I=1, shared=32),
    finer("finer_moe_GI2_RI2_TI2_linear_rope", G_I=2, R_I=2, G_O=1, R_O=1, T_I=2, shared=0,
          rope_scaling={"rope_type": "linear", "factor": 2.0}),
    finer("finer_moe_GI2_GO2_RO2_concat_tied", G_I=2, R_I=1, G_O=2, R_O=2, T_I=1, shared=48,
          moe_concat_proj=True, tie_word_embeddings=True, num_hidden_layers=3,
          decoder_sparse_step=1, mlp_only_layers=[1]),
    finer("finer_moe_GI2_GO2_RO3_separate_routers", G_I=2, R_I=2, G_O=2, R_O=3, T_I=1, shared=32,
          router_mode="separate"),
    finer("finer_moe_window_interleaved", G_I=1, R_I=4, G_O=1, R_O=1, T_I=2, shared=32,
          use_sliding_window=True, sliding_window=4, max_window_layers=1, rope_interleaved=True),
    ("finmoe_dense_llama3_rope", dict(BASE, model_type="finmoe_dense", num_experts=4, moe_intermediate_size=16,
                                       rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 8},
                                       rope_theta=500000.0)),
    finer("finer_moe_yarn_rope", G_I=1, R_I=2, G_O=2, R_O=1, T_I=1, shared=0,
          rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                        "beta_fast": 8.0, "beta_slow": 1.0}),
    ("finmoe_dense_yarn_mscale", dict(BASE, model_type="finmoe_dense", num_experts=2, moe_intermediate_size=16,
                                       rope_scaling={"rope_type": "yarn", "factor": 8.0, "mscale": 0.707,
                                                     "mscale_all_dim": 1.0,
                                                     "original_max_position_embeddings": 32})),
    ("finmoe_dense_bias", dict(BASE, model_type="finmoe_dense", num_experts=3,
                                attention_bias=True, mlp_bias=True, mlp_only_layers=[0])),
]


def run(cmd):
    # bytes decoded here: text=True would turn a generated "\r\n" into "\n"
    p = subprocess.run(cmd, capture_output=True)
    out, err = p.stdout.decode("utf-8"), p.stderr.decode("utf-8", "replace")
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{out}\n{err}")
    return out


def rescale(model_dir, seed):
    """New O(1)-scale weights: N(0, 1/fan_in) matrices, norms 1 + N(0, 0.1), biases N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    for f in sorted(os.listdir(model_dir)):
        if not f.endswith(".safetensors"):
            continue
        path = os.path.join(model_dir, f)
        tensors = load_file(path)
        for name, t in tensors.items():
            if name.endswith("norm.weight"):
                v = 1 + 0.1 * torch.randn(t.shape, generator=g)
            elif name.endswith(".bias") or t.dim() == 1:
                v = 0.1 * torch.randn(t.shape, generator=g)
            else:
                v = torch.randn(t.shape, generator=g) / t.shape[-1] ** 0.5
                if name.endswith("embed_tokens.weight"):
                    v = v * t.shape[-1] ** 0.5  # rows of unit-scale values, as a trained model's
            tensors[name] = v.to(t.dtype).contiguous()
        save_file(tensors, path, metadata={"format": "pt"})


def check(name, cfg, finmoe, tokenizer_dir, work):
    d = os.path.join(work, name)
    cfg_path = d + ".config.json"
    with open(cfg_path, "w") as fh:
        json.dump(cfg, fh)
    run([finmoe, "init", d, "--config", cfg_path, "--dtype", "float32", "--seed", "7",
         "--tokenizer", tokenizer_dir])
    rescale(d, seed=len(name))
    saved = json.load(open(os.path.join(d, "config.json")))
    assert "auto_map" in saved, f"{name}: config.json has no auto_map"

    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        d, trust_remote_code=True, dtype=torch.float32, output_loading_info=True)
    model.eval()
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if bad:
        print(f"{name}: loading info {bad}")
        return False
    tok = transformers.AutoTokenizer.from_pretrained(d, trust_remote_code=True)
    ids = tok(PROMPT, add_special_tokens=True)["input_ids"]
    ids = ids + [int(i) for i in torch.randint(0, 151643, (9,), generator=torch.Generator().manual_seed(3))]

    # log-probabilities at every position vs finmoe logits
    ref = json.loads(run([finmoe, "logits", d, "--ids", ",".join(map(str, ids)), "--top", str(TOP)]))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    diff = 0.0
    for pos in ref["positions"]:
        p = pos["position"]
        for alt in pos["top"]:
            diff = max(diff, abs(logp[p, alt["id"]].item() - alt["logprob"]))
        if logp[p].argmax().item() != pos["top"][0]["id"]:
            print(f"{name}: position {p}: argmax differs")
            return False
    spread = (logp.max(-1).values - logp.min(-1).values).mean().item()

    # greedy generation with the KV cache
    prompt_ids = tok(PROMPT, add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             min_new_tokens=NEW_TOKENS, pad_token_id=0)
    new = out[0, len(prompt_ids):].tolist()
    chain = json.loads(run([finmoe, "logits", d, "--ids", ",".join(map(str, prompt_ids + new[:-1])),
                            "--top", "1"]))
    argmax = [pos["top"][0]["id"] for pos in chain["positions"][len(prompt_ids) - 1:]]
    if argmax != new:
        print(f"{name}: HF greedy {new} != finmoe argmax chain {argmax}")
        return False
    text = run([finmoe, "generate", d, "-p", PROMPT, "-n", str(NEW_TOKENS), "--greedy"])
    hf_text = tok.decode(new)
    same_text = text == hf_text + "\n"  # stdout: the generated text and a newline
    print(f"{name}: max |logprob diff| {diff:.3g} over {len(ids)} positions x top-{TOP} "
          f"(mean logprob range {spread:.1f}); greedy {NEW_TOKENS} tokens equal "
          f"(text {'equal' if same_text else 'differs'})")
    if not same_text:
        print(f"  finmoe generate: {text!r}\n  HF decode:       {hf_text!r}")
        return False
    return diff <= TOL


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    finmoe, tokenizer_dir = sys.argv[1], sys.argv[2]
    work = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="finmoe-hf-remote-")
    torch.manual_seed(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    ok = True
    try:
        for name, cfg in VARIANTS:
            ok = check(name, cfg, finmoe, tokenizer_dir, work) and ok
    finally:
        if len(sys.argv) <= 3:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
