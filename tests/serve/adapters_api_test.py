#!/usr/bin/env python3
"""Adapters picked per request on `finmoe serve --lora NAME=DIR` through the
official `openai` client: /v1/models lists each adapter with its base as
parent, a request naming an adapter gets that adapter's output, and requests
of the base and of two adapters running concurrently each get what a server
of the merged model (`finmoe lora merge`, another code path) gives alone.

Usage: adapters_api_test.py FINMOE_BINARY TEST_DATA_DIR  (exit 77 = skipped)
"""
import concurrent.futures
import json
import os
import random
import struct
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

openai = serve_util.import_openai()

FINMOE, DATA = serve_util.args()
SCRATCH = None
SERVERS = {}
PROMPTS = ["The bank's net interest margin", "Quarterly revenue rose", "Risk-weighted assets"]


def write_lora(model_dir, out_dir, targets, seed):
    """A PEFT adapter (adapter_config.json + adapter_model.safetensors) with
random A and B, written without numpy: safetensors is a JSON header + raw bytes."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    d, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hd = d // heads
    shapes = {"q_proj": (heads * hd, d), "k_proj": (kv * hd, d), "v_proj": (kv * hd, d),
              "o_proj": (d, heads * hd), "gate_proj": (inter, d), "up_proj": (inter, d), "down_proj": (d, inter)}
    where = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
             "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    rng = random.Random(seed)
    r = 4
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for t in targets:
            out, inp = shapes[t]
            name = "base_model.model.model.layers.%d.%s.%s" % (layer, where[t], t)
            tensors[name + ".lora_A.weight"] = ([r, inp], [rng.gauss(0, 0.3) for _ in range(r * inp)])
            tensors[name + ".lora_B.weight"] = ([out, r], [rng.gauss(0, 0.3) for _ in range(out * r)])
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        shape, values = tensors[name]
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": r, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none",
                   "target_modules": targets, "task_type": "CAUSAL_LM"}, f)
    return out_dir


def setUpModule():
    global SCRATCH
    SCRATCH = serve_util.ScratchDir("finmoe-serve-adapters-")
    base = serve_util.make_tiny_model(FINMOE, DATA, SCRATCH.path)
    qa = write_lora(base, os.path.join(SCRATCH.path, "lora-qa"), ["q_proj", "v_proj", "down_proj"], 1)
    ner = write_lora(base, os.path.join(SCRATCH.path, "lora-ner"), ["k_proj", "o_proj", "up_proj"], 2)
    common = ["--kv-cache-memory", "16MiB", "--block-size", "16"]
    SERVERS["multi"] = serve_util.Server(FINMOE, base, "--served-model-name", "base", "--lora", "qa=" + qa,
                                         "--lora-modules", "ner=" + ner, *common)
    for name, adapter in (("qa", qa), ("ner", ner)):
        merged = os.path.join(SCRATCH.path, "merged-" + name)
        subprocess.run([FINMOE, "lora", "merge", base, adapter, merged], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        SERVERS[name] = serve_util.Server(FINMOE, merged, "--served-model-name", name, *common)


def tearDownModule():
    try:
        for s in SERVERS.values():
            code = s.stop()
            assert code == 0, "server exit code %s\n%s" % (code, s.log())
    finally:
        SCRATCH.cleanup()


def client(server):
    return openai.OpenAI(base_url=SERVERS[server].url + "/v1", api_key="none", max_retries=0, timeout=120)


def complete(server, model, prompt):
    r = client(server).completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, logprobs=1)
    assert r.model == model, (r.model, model)
    return r.choices[0].text, r.choices[0].logprobs.token_logprobs


class Adapters(unittest.TestCase):
    def test_models_lists_each_adapter_with_its_parent(self):
        models = {m.id: m for m in client("multi").models.list().data}
        self.assertEqual(set(models), {"base", "qa", "ner"})
        self.assertIsNone(models["base"].parent)
        self.assertEqual(models["qa"].parent, "base")
        self.assertTrue(models["ner"].root.endswith("lora-ner"))
        self.assertEqual(client("multi").models.retrieve("ner").parent, "base")

    def test_concurrent_requests_each_get_their_adapters_output(self):
        jobs = [(model, p) for model in ("base", "qa", "ner") for p in PROMPTS] * 2
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            got = list(pool.map(lambda j: complete("multi", *j), jobs))
        base = {p: complete("multi", "base", p) for p in PROMPTS}
        for (model, prompt), (text, logprobs) in zip(jobs, got):
            want_text, want_lp = base[prompt] if model == "base" else complete(model, model, prompt)
            self.assertEqual(text, want_text, (model, prompt))
            for a, b in zip(logprobs, want_lp):
                self.assertAlmostEqual(a, b, delta=1e-3, msg=(model, prompt))
        # the adapters do change the output
        self.assertNotEqual(complete("qa", "qa", PROMPTS[0])[1], base[PROMPTS[0]][1])
        self.assertNotEqual(complete("ner", "ner", PROMPTS[0])[1], base[PROMPTS[0]][1])

    def test_embeddings_of_an_adapter_are_the_merged_models(self):
        def embed(server, model):
            r = client(server).embeddings.create(model=model, input=PROMPTS, encoding_format="float")
            self.assertEqual(r.model, model)
            return [d.embedding for d in r.data]
        base = embed("multi", "base")
        for name in ("qa", "ner"):
            got, want = embed("multi", name), embed(name, name)
            for g, w, b in zip(got, want, base):
                self.assertLess(max(abs(x - y) for x, y in zip(g, w)), 1e-4, name)
                self.assertGreater(max(abs(x - y) for x, y in zip(g, b)), 1e-3, name)

    def test_an_unknown_model_names_the_served_ones(self):
        with self.assertRaises(openai.BadRequestError) as e:
            client("multi").completions.create(model="other", prompt="x", max_tokens=1)
        self.assertIn("`base`, `ner`, `qa`", str(e.exception))


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
