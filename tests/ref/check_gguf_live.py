#!/usr/bin/env python3
"""finmoe export gguf against PyPI gguf and a live llama.cpp.

    python check_gguf_live.py FINMOE_BINARY LLAMA_CPP_BIN TOKENIZER_ROOT WORKDIR [--json OUT]

For llama (Llama-3 tokenizer), qwen2 and mistral, then mixtral, qwen2_moe
and deepseek_v2 / deepseek_v3 (MLA; HF's interleaved rope and rotate-half)
(Qwen3 tokenizer; TOKENIZER_ROOT/{llama3,qwen3}): a tiny random float32
model made by `finmoe init --config`, exported as f16 and q8_0. Then
  * gguf's GGUFReader reads each file: metadata (architecture, vocabulary,
    merges, special ids, chat template) and every tensor against the
    safetensors source (llama's q/k rows reordered here with numpy; f16
    exactly the f16 rounding, q8_0 within half a block scale);
  * llama-server (LLAMA_CPP_BIN) loads it and returns the next-token top-K
    log-probabilities after several prompts; `finmoe logits` gives them from
    the safetensors model. The top-1 ids must agree, the top-K sets overlap,
    and the log-probabilities of the shared ids agree within a tolerance per
    type.
Prints one line per (arch, type) with the measured numbers. Exit 0 on
agreement, 1 otherwise, 77 when gguf/numpy/safetensors or llama-server are
missing.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

try:
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

TOP = 10
# |logprob(finmoe) - logprob(llama.cpp)| over the shared top-K ids
TOL = {"f16": 0.02, "q8_0": 0.3}  # llama.cpp also rounds the activations to Q8_0
PROMPTS = {
    "llama3": [[128000, 791, 3974, 14198, 39935], [128000, 9906, 1917, 0, 1102, 374, 264],
               [128000, 40, 1093, 27285, 13, 220, 16, 13, 20, 3346]],
    "qwen3": [[785, 3974, 13876, 38835], [9707, 1879, 0, 1084, 374, 264],
              [151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645]],
}
MODELS = [  # (name, tokenizer, config)
    ("llama", "llama3", {"model_type": "llama"}),
    ("qwen2", "qwen3", {"model_type": "qwen2", "attention_bias": True, "tie_word_embeddings": True}),
    ("mistral", "llama3", {"model_type": "mistral", "head_dim": 24}),
    ("mixtral", "llama3", {"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2}),
    ("qwen2_moe", "qwen3", {"model_type": "qwen2_moe", "num_experts": 6, "num_experts_per_tok": 2,
                            "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64,
                            "attention_bias": True}),
]
# MLA + DeepSeekMoE: a dense first layer, then MoE; q LoRA on (the llama.cpp
# snapshot these were checked with takes q_proj only for 27-layer models);
# one group (llama.cpp does not limit routing to groups)
_MLA = {"num_key_value_heads": 4, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
        "v_head_dim": 8, "q_lora_rank": 12, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "n_shared_experts": 1, "first_k_dense_replace": 1}
MODELS += [
    ("deepseek_v2", "qwen3", dict(_MLA, model_type="deepseek_v2", routed_scaling_factor=1.5)),
    ("deepseek_v3", "qwen3", dict(_MLA, model_type="deepseek_v3", n_group=1, topk_group=1,
                                  routed_scaling_factor=2.0)),
    ("deepseek_v3_rotate_half", "qwen3", dict(_MLA, model_type="deepseek_v3", n_group=1, topk_group=1,
                                              rope_interleave=False)),
]


def vocab_size(tok_dir):
    j = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
    ids = list(j["model"]["vocab"].values()) + [a["id"] for a in j.get("added_tokens", [])]
    return (max(ids) + 1 + 63) // 64 * 64


def make_model(finmoe, work, name, tok_dir, extra):
    cfg = {"vocab_size": vocab_size(tok_dir), "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "initializer_range": 0.2}
    cfg.update(extra)
    path = os.path.join(work, name + ".config.json")
    json.dump(cfg, open(path, "w"))
    out = os.path.join(work, name)
    subprocess.run([finmoe, "init", out, "--config", path, "--tokenizer", tok_dir, "--dtype", "float32",
                    "--seed", "5"], check=True, capture_output=True)
    return out, cfg


def hf_name(gguf_name):
    """The safetensors tensor(s) a GGUF tensor comes from (experts: a format with {e})."""
    table = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    base, _, suffix = gguf_name.rpartition(".")
    if base in table:
        return f"{table[base]}.{suffix}"
    _, layer, part = base.split(".")
    L = f"model.layers.{layer}."
    simple = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj", "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
              "ffn_up_shexp": "mlp.shared_expert.up_proj", "ffn_down_shexp": "mlp.shared_expert.down_proj",
              "ffn_gate_inp_shexp": "mlp.shared_expert_gate"}
    deepseek = {"attn_q_a": "self_attn.q_a_proj", "attn_q_a_norm": "self_attn.q_a_layernorm",
                "attn_q_b": "self_attn.q_b_proj", "attn_kv_a_mqa": "self_attn.kv_a_proj_with_mqa",
                "attn_kv_a_norm": "self_attn.kv_a_layernorm", "attn_kv_b": "self_attn.kv_b_proj",
                "exp_probs_b": "mlp.gate.e_score_correction_bias"}
    if part in deepseek:
        return L + deepseek[part] + ("" if part == "exp_probs_b" else "." + suffix)
    if part in simple:
        return L + simple[part] + "." + suffix
    return {"ffn_gate_inp": "{moe}gate", "ffn_gate_exps": "{moe}experts.{e}.{gate}",
            "ffn_up_exps": "{moe}experts.{e}.{up}", "ffn_down_exps": "{moe}experts.{e}.{down}"}[part] \
        .replace("{moe}", L + "{moe}") + "." + suffix


def expected(name, src, cfg):
    t = cfg["model_type"]
    mix = t == "mixtral"
    h = hf_name(name).replace("{moe}", "block_sparse_moe." if mix else "mlp.")
    if t.startswith("deepseek"):
        h = h.replace("shared_expert.", "shared_experts.")
    h = h.replace("{gate}", "w1" if mix else "gate_proj").replace("{up}", "w3" if mix else "up_proj") \
         .replace("{down}", "w2" if mix else "down_proj")
    if "{e}" in h:
        n = cfg.get("num_local_experts", cfg.get("num_experts", cfg.get("n_routed_experts")))
        return np.stack([src[h.replace("{e}", str(e))] for e in range(n)])
    w = src[h]
    if name.endswith("ffn_gate_inp_shexp.weight"):
        w = w.reshape(-1)
    part = name.split(".")[-2]
    if t in ("llama", "mistral", "mixtral") and part in ("attn_q", "attn_k"):
        heads = cfg["num_attention_heads"] if part == "attn_q" else cfg["num_key_value_heads"]
        # rotate-half -> adjacent pairs, as llama.cpp's converter does for Llama
        w = w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    if t.startswith("deepseek") and cfg.get("rope_interleave", True) is False and part in ("attn_q_b", "attn_q",
                                                                                             "attn_kv_a_mqa"):
        # the rope rows of each block (the tail of every head; of the latent row) to adjacent pairs
        rope = cfg["qk_rope_head_dim"]
        blocks = cfg["num_attention_heads"] if part != "attn_kv_a_mqa" else 1
        v = w.reshape(blocks, -1, w.shape[-1]).copy()
        tail = v[:, -rope:, :]
        v[:, -rope:, :] = tail.reshape(blocks, 2, rope // 2, -1).swapaxes(1, 2).reshape(blocks, rope, -1)
        w = v.reshape(w.shape)
    return w


def check_reader(path, model_dir, cfg, typ, tok_dir):
    r = GGUFReader(path)
    f = {k: v for k, v in r.fields.items()}
    arch = f["general.architecture"].contents()
    want_arch = {"qwen2": "qwen2", "qwen2_moe": "qwen2moe", "deepseek_v2": "deepseek2",
                 "deepseek_v3": "deepseek2"}.get(cfg["model_type"], "llama")
    assert arch == want_arch, (arch, want_arch)
    assert f["general.alignment"].contents() == 32
    tokens = f["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == cfg["vocab_size"], (len(tokens), cfg["vocab_size"])
    tj = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
    for s, i in list(tj["model"]["vocab"].items())[:2000]:
        assert tokens[i] == s, (i, tokens[i], s)
    merges = f["tokenizer.ggml.merges"].contents()
    m0 = tj["model"]["merges"][0]
    assert merges[0] == (m0 if isinstance(m0, str) else " ".join(m0)) and len(merges) == len(tj["model"]["merges"])
    tc = json.load(open(os.path.join(tok_dir, "tokenizer_config.json")))
    assert f["tokenizer.chat_template"].contents() == tc["chat_template"]
    src = load_file(os.path.join(model_dir, "model.safetensors"))
    worst = 0.0
    for t in r.tensors:
        w = expected(t.name, src, cfg).astype(np.float32)
        got = dequantize(t.data, t.tensor_type).reshape(w.shape).astype(np.float32)
        if t.tensor_type.name == "Q8_0":
            blocks = w.reshape(-1, 32)
            amax = np.abs(blocks).max(axis=1, keepdims=True)
            err = np.abs(got.reshape(-1, 32) - blocks)
            assert (err <= amax / 254 + amax * 2.0 ** -11 + 1e-12).all(), t.name
            worst = max(worst, float((err / np.maximum(amax, 1e-30)).max()))
        elif t.tensor_type.name == "F16":
            assert np.array_equal(got, w.astype(np.float16).astype(np.float32)), t.name
        else:
            assert t.tensor_type.name == "F32" and np.array_equal(got, w), (t.name, t.tensor_type.name)
    return len(r.tensors), worst


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def llama_top(server_bin, path, prompts):
    port = free_port()
    proc = subprocess.Popen([server_bin, "-m", path, "--port", str(port), "-c", "256", "-np", "1",
                             "-t", "2", "--no-warmup"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if proc.poll() is not None:
                raise RuntimeError("llama-server exited: " + proc.stderr.read().decode()[-3000:])
            try:
                if urllib.request.urlopen(base + "/health", timeout=1).status == 200:
                    break
            except Exception:
                time.sleep(0.1)
        out = []
        for p in prompts:
            body = json.dumps({"prompt": p, "n_predict": 1, "n_probs": TOP, "temperature": 0,
                               "cache_prompt": False}).encode()
            req = urllib.request.Request(base + "/completion", body, {"Content-Type": "application/json"})
            res = json.load(urllib.request.urlopen(req, timeout=60))
            top = res["completion_probabilities"][0]["top_logprobs"]
            out.append({a["id"]: a["logprob"] for a in top})
        return out
    finally:
        proc.terminate()
        proc.wait()


def finmoe_top(finmoe, model_dir, prompts):
    out = []
    for p in prompts:
        r = subprocess.run([finmoe, "logits", model_dir, "--ids", ",".join(map(str, p)), "--top", str(TOP)],
                           check=True, capture_output=True, text=True)
        last = json.loads(r.stdout)["positions"][-1]["top"]
        out.append({a["id"]: a["logprob"] for a in last})
    return out


def main():
    args = sys.argv[1:]
    json_out = None
    if "--json" in args:
        i = args.index("--json")
        json_out = args[i + 1]
        del args[i:i + 2]
    finmoe, llama_bin, tok_root, work = args
    server = os.path.join(llama_bin, "llama-server")
    if not os.access(server, os.X_OK):
        print(f"skip: no llama-server in {llama_bin}")
        sys.exit(77)
    os.makedirs(work, exist_ok=True)
    ok = True
    rows = []
    for name, tok, extra in MODELS:
        tok_dir = os.path.join(tok_root, tok)
        model_dir, cfg = make_model(finmoe, work, name, tok_dir, extra)
        ref = finmoe_top(finmoe, model_dir, PROMPTS[tok])
        for typ in ("f16", "q8_0"):
            path = os.path.join(work, f"{name}.{typ}.gguf")
            subprocess.run([finmoe, "export", "gguf", model_dir, path, "--type", typ, "--json"], check=True,
                           capture_output=True)
            n_tensors, q8_worst = check_reader(path, model_dir, cfg, typ, tok_dir)
            got = llama_top(server, path, PROMPTS[tok])
            top1 = sum(max(a, key=a.get) == max(b, key=b.get) for a, b in zip(ref, got))
            overlap = min(len(set(a) & set(b)) for a, b in zip(ref, got))
            diff = max(abs(a[i] - b[i]) for a, b in zip(ref, got) for i in set(a) & set(b))
            good = top1 == len(ref) and overlap >= TOP - 2 and diff <= TOL[typ]
            ok &= good
            row = {"model": name, "type": typ, "tensors": n_tensors, "prompts": len(ref), "top1_agree": top1,
                   "min_topk_overlap": overlap, "max_logprob_diff": diff, "q8_0_max_rel_err": q8_worst,
                   "ok": good}
            rows.append(row)
            print(f"{name:10s} {typ:5s} {n_tensors:3d} tensors  top-1 {top1}/{len(ref)}  "
                  f"top-{TOP} overlap >= {overlap}  max |dlogprob| {diff:.4f} (tol {TOL[typ]})"
                  + (f"  q8_0 max err/amax {q8_worst:.5f}" if typ == "q8_0" else "")
                  + ("" if good else "  FAIL"), flush=True)
    if json_out:
        json.dump(rows, open(json_out, "w"), indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
