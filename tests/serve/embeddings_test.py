#!/usr/bin/env python3
"""/v1/embeddings on `finmoe serve` through the official `openai` client: a
tiny random model made by Hugging Face transformers (tests/data/hf), whose
embeddings must equal transformers' final hidden states pooled and
normalised by torch (tests/data/serve/embeddings, written by
tests/ref/make_embedding_reference.py). Float and base64 encodings, last and
mean pooling, text and token-id inputs, errors naming the field, and
embeddings answered while the same server generates.

Usage: embeddings_test.py FINMOE_BINARY TEST_DATA_DIR  (exit 77 = skipped)
"""
import base64
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

openai = serve_util.import_openai()

FINMOE, DATA = serve_util.args()
MODEL = "llama_gqa_llama3rope"
NAME = "tiny-embed"
SCRATCH = None
LAST = None  # --embedding-pooling last (the default), normalised
MEAN = None  # --embedding-pooling mean --no-embedding-normalize
with open(os.path.join(DATA, "serve", "embeddings", MODEL + ".json")) as f:
    REF = json.load(f)


def setUpModule():
    global SCRATCH, LAST, MEAN
    SCRATCH = serve_util.ScratchDir("finmoe-serve-embed-")
    model = os.path.join(SCRATCH.path, MODEL)
    # transformers' tiny model (vocabulary 320) with a tokenizer for the server to load;
    # the reference inputs are token ids below 320
    shutil.copytree(os.path.join(DATA, "hf", MODEL), model, ignore=shutil.ignore_patterns("reference.*"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(DATA, "tokenizer", "qwen3", name), model)
    common = ("--served-model-name", NAME, "--kv-cache-memory", "16MiB")
    LAST = serve_util.Server(FINMOE, model, *common)
    MEAN = serve_util.Server(FINMOE, model, *common, "--embedding-pooling", "mean", "--no-embedding-normalize")


def tearDownModule():
    try:
        for s in (LAST, MEAN):
            if s:
                code = s.stop()
                assert code == 0, "server exit code %s\n%s" % (code, s.log())
    finally:
        SCRATCH.cleanup()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def assert_close(test, got, want, rel=1e-4):
    test.assertEqual(len(got), len(want))
    scale = max(max(abs(x) for x in want), 1e-30)
    worst = max(abs(a - b) for a, b in zip(got, want))
    test.assertLessEqual(worst, rel * scale, "max |got - want| = %g at scale %g" % (worst, scale))


class Embeddings(unittest.TestCase):
    def test_last_pooling_normalised_equals_transformers(self):
        r = client(LAST).embeddings.create(model=NAME, input=REF["inputs"], encoding_format="float")
        self.assertEqual(r.object, "list")
        self.assertEqual(r.model, NAME)
        self.assertEqual([d.index for d in r.data], list(range(len(REF["inputs"]))))
        for d, want in zip(r.data, REF["last"]):
            self.assertEqual(d.object, "embedding")
            assert_close(self, d.embedding, want)
            self.assertAlmostEqual(math.sqrt(sum(x * x for x in d.embedding)), 1.0, places=5)
        n = sum(len(ids) for ids in REF["inputs"])
        self.assertEqual((r.usage.prompt_tokens, r.usage.total_tokens), (n, n))

    def test_mean_pooling_unnormalised_equals_transformers(self):
        r = client(MEAN).embeddings.create(model=NAME, input=REF["inputs"], encoding_format="float")
        for d, want in zip(r.data, REF["mean_raw"]):
            assert_close(self, d.embedding, want)

    def test_base64_is_the_float32_bytes_and_the_client_decodes_it(self):
        c = client(LAST)
        ids = REF["inputs"][0]
        floats = c.embeddings.create(model=NAME, input=[ids], encoding_format="float").data[0].embedding
        raw = c.embeddings.create(model=NAME, input=[ids], encoding_format="base64").data[0].embedding
        self.assertIsInstance(raw, str)
        decoded = list(struct.unpack("<%df" % (len(base64.b64decode(raw)) // 4), base64.b64decode(raw)))
        # the JSON floats are float32 values printed exactly: the same numbers
        self.assertEqual(decoded, [struct.unpack("<f", struct.pack("<f", x))[0] for x in floats])
        # without encoding_format the client asks for base64 and decodes it itself
        default = c.embeddings.create(model=NAME, input=[ids]).data[0].embedding
        assert_close(self, list(default), REF["last"][0])

    def test_text_input_equals_its_token_ids(self):
        c = client(LAST)
        for text in ["1+2=3", ["a b", "x"]]:
            texts = text if isinstance(text, list) else [text]
            ids = []
            for t in texts:
                status, body = LAST.post_json("/tokenize", {"model": NAME, "prompt": t})
                self.assertEqual(status, 200, body)
                self.assertLess(max(body["tokens"]), 320, t)  # within the tiny model's vocabulary
                ids.append(body["tokens"])
            by_text = c.embeddings.create(model=NAME, input=text, encoding_format="float")
            by_ids = c.embeddings.create(model=NAME, input=ids, encoding_format="float")
            self.assertEqual([d.embedding for d in by_text.data], [d.embedding for d in by_ids.data])
            self.assertEqual(by_text.usage.prompt_tokens, sum(len(i) for i in ids))

    def test_text_past_the_model_vocabulary_is_a_400(self):
        # the tokenizer (Qwen3's) has ids past the tiny model's 320: named, not a 500
        for text, param in [("Net interest income rose 3%", "input"), (["x", "!?"], "input[1]")]:
            status, body = LAST.post_json("/v1/embeddings", {"model": NAME, "input": text})
            self.assertEqual((status, body["error"]["param"]), (400, param), body)
            self.assertIn("outside the vocabulary", body["error"]["message"])

    def test_bad_fields_are_400s_naming_the_field(self):
        c = client(LAST)
        too_long = list(range(1, 258))  # max_position_embeddings 256
        for kwargs, param in [(dict(input=[1, 2], dimensions=8), "dimensions"),
                              (dict(input=[[1, 2], too_long]), "input[1]"),
                              (dict(input=[1, 400]), "input"),
                              (dict(input=[]), "input")]:
            with self.assertRaises(openai.BadRequestError) as cm:
                c.embeddings.create(model=NAME, encoding_format="float", **kwargs)
            self.assertEqual(cm.exception.body["param"], param, kwargs)
        with self.assertRaises(openai.BadRequestError) as cm:
            c.embeddings.create(model="other", input=[1])
        self.assertEqual(cm.exception.body["param"], "model")
        # the server goes on serving
        r = c.embeddings.create(model=NAME, input=[REF["inputs"][1]], encoding_format="float")
        assert_close(self, r.data[0].embedding, REF["last"][1])

    def test_embeddings_while_generating(self):
        c = client(LAST)
        before = LAST.metrics()
        done = {}

        def generate():
            r = c.completions.create(model=NAME, prompt=[5, 6, 7], max_tokens=48, temperature=0,
                                     extra_body={"ignore_eos": True})
            done["tokens"] = r.usage.completion_tokens

        t = threading.Thread(target=generate)
        t.start()
        for _ in range(4):
            r = c.embeddings.create(model=NAME, input=REF["inputs"], encoding_format="float")
            for d, want in zip(r.data, REF["last"]):
                assert_close(self, d.embedding, want)
        t.join(120)
        self.assertEqual(done.get("tokens"), 48)
        after = LAST.metrics()
        self.assertEqual(after["finmoe_embedding_requests_total"] - before.get("finmoe_embedding_requests_total", 0), 4)
        n = sum(len(ids) for ids in REF["inputs"])
        self.assertEqual(after["finmoe_embedding_prompt_tokens_total"]
                         - before.get("finmoe_embedding_prompt_tokens_total", 0), 4 * n)


class KvCacheMemoryFlag(unittest.TestCase):
    """`serve --kv-cache-memory` through the binary: its errors name the flag
    (exit code 2), and a cache of fewer than 4 full-length sequences warns."""

    def model(self):
        return os.path.join(SCRATCH.path, MODEL)

    def test_bad_values_exit_2_naming_the_flag(self):
        for value, words in [("1.5", "a share must be in (0, 1]"), ("150%", "(0, 100]"),
                             ("lots", "neither a size nor a share"), ("1KiB", "holds no block")]:
            p = subprocess.run([FINMOE, "serve", self.model(), "--port", "0", "--kv-cache-memory", value],
                               capture_output=True, text=True, timeout=120)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertIn("--kv-cache-memory", p.stderr)
            self.assertIn(words, p.stderr)
            self.assertNotIn("EngineOptions", p.stderr)
        p = subprocess.run([FINMOE, "serve", self.model(), "--port", "0", "--max-model-len", "999"],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("--max-model-len must be in [0, 256]", p.stderr)

    def test_warning_names_how_many_fit_and_the_flags(self):
        # 512 bytes per token (2 layers x K,V x 2 heads x 16 dims x 4 bytes): 160 KiB = 320 tokens
        s = serve_util.Server(FINMOE, self.model(), "--kv-cache-memory", "160KiB", "--max-model-len", "128")
        try:
            self.assertIn("finmoe: warning: the KV cache (320 tokens) holds 2 sequence(s) of the full context "
                          "(128 tokens) at once, fewer than 4. Raise --kv-cache-memory or lower --max-model-len.",
                          s.log())
        finally:
            self.assertEqual(s.stop(), 0)
        s = serve_util.Server(FINMOE, self.model(), "--kv-cache-memory", "256KiB", "--max-model-len", "128")
        try:
            self.assertNotIn("warning", s.log())
        finally:
            self.assertEqual(s.stop(), 0)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
