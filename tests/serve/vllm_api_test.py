#!/usr/bin/env python3
"""vLLM's extensions of the OpenAI API on `finmoe serve` (tiny model made with
`finmoe init`): vLLM's sampling fields (honoured, or accepted and named in the
X-Finmoe-Ignored-Fields header), usage.prompt_tokens_details.cached_tokens,
/tokenize and /detokenize, and vLLM's metric names on /metrics. Each is
checked against another path: the completion's own usage, the prefix-cache
counters, the tokenizer.json vocabulary, finmoe's own metric names.

Usage: vllm_api_test.py FINMOE_BINARY TEST_DATA_DIR  (exit 77 = skipped)
"""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

openai = serve_util.import_openai()

FINMOE, DATA = serve_util.args()
MODEL_NAME = "tiny-vllm"
KEY = "sk-vllm-test"
AUTH = {"Authorization": "Bearer " + KEY}
SCRATCH = None
SERVER = None


def setUpModule():
    global SCRATCH, SERVER
    SCRATCH = serve_util.ScratchDir("finmoe-serve-vllm-")
    model = serve_util.make_tiny_model(FINMOE, DATA, SCRATCH.path)
    SERVER = serve_util.Server(FINMOE, model, "--served-model-name", MODEL_NAME, "--api-key", KEY,
                               "--kv-cache-memory", "16MiB", "--block-size", "16")


def tearDownModule():
    try:
        code = SERVER.stop()
        assert code == 0, "server exit code %s\n%s" % (code, SERVER.log())
    finally:
        SCRATCH.cleanup()


def client():
    return openai.OpenAI(base_url=SERVER.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def post(path, body, headers=AUTH):
    status, hdrs, data = SERVER.request("POST", path, body, headers)
    return status, {k.lower(): v for k, v in hdrs.items()}, json.loads(data) if data else None


def metrics_after(before, name, delta):
    """/metrics once `name` moved by `delta` from `before` (the engine publishes
    its stats after the step that answered the request; wait up to 5 s)."""
    deadline = time.time() + 5
    while True:
        m = SERVER.metrics()
        if m.get(name, 0) - before.get(name, 0) >= delta or time.time() > deadline:
            return m
        time.sleep(0.05)


def tokenize(text, **kw):
    status, _, body = post("/tokenize", dict(model=MODEL_NAME, prompt=text, **kw))
    assert status == 200, body
    return body


class SamplingFields(unittest.TestCase):
    def test_ignored_fields_are_named_in_a_header_and_defaults_are_not(self):
        raw = client().chat.completions.with_raw_response.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            extra_body={"spaces_between_special_tokens": False, "priority": 3, "use_beam_search": False,
                        "skip_special_tokens": True, "min_tokens": 1, "stop_token_ids": [7]})
        self.assertEqual(raw.headers.get("x-finmoe-ignored-fields"), "spaces_between_special_tokens, priority")
        self.assertEqual(len(raw.parse().choices), 1)
        plain = client().chat.completions.with_raw_response.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        self.assertIsNone(plain.headers.get("x-finmoe-ignored-fields"))

    def test_wrong_types_are_400s_naming_the_field(self):
        for field, value in [("min_tokens", "3"), ("stop_token_ids", [1, "x"]), ("priority", 0.5),
                             ("spaces_between_special_tokens", 1), ("skip_special_tokens", "no")]:
            status, _, body = post("/v1/completions", {"model": MODEL_NAME, "prompt": "hi", field: value})
            self.assertEqual(status, 400, field)
            self.assertEqual(body["error"]["param"], field)
        status, _, body = post("/v1/completions", {"model": MODEL_NAME, "prompt": "hi", "no_such_field": 1})
        self.assertEqual((status, body["error"]["param"]), (400, "no_such_field"))

    def test_stop_token_ids_and_min_tokens(self):
        c = client()
        greedy = dict(model=MODEL_NAME, prompt="The balance sheet", temperature=0, max_tokens=8)
        first = c.completions.create(**dict(greedy, max_tokens=1), extra_body={"ignore_eos": True})
        ids = tokenize(first.choices[0].text, add_special_tokens=False)["tokens"]
        if len(ids) != 1:
            self.skipTest("the first token's text does not tokenize back to one token")
        # the first greedy token as a stop token: the request ends at once, the token not in the text
        r = c.completions.create(**greedy, extra_body={"ignore_eos": True, "stop_token_ids": ids})
        self.assertEqual((r.choices[0].finish_reason, r.choices[0].text, r.usage.completion_tokens), ("stop", "", 1))
        # min_tokens holds it back
        r = c.completions.create(**greedy, extra_body={"ignore_eos": True, "stop_token_ids": ids, "min_tokens": 3})
        self.assertGreaterEqual(r.usage.completion_tokens, 3)

    def test_continuous_usage_stats(self):
        chunks = list(client().chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0,
            stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True},
            extra_body={"ignore_eos": True}))
        self.assertTrue(all(ch.usage is not None for ch in chunks))
        counts = [ch.usage.completion_tokens for ch in chunks]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(counts[-1], 5)


class CachedTokens(unittest.TestCase):
    def test_cached_tokens_equal_the_prefix_cache_hits(self):
        c = client()
        prompt = "Quarterly revenue rose while operating margins narrowed across the segment. " * 6
        first = c.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1)
        self.assertEqual(first.usage.prompt_tokens_details.cached_tokens, 0)
        before = SERVER.metrics()
        second = c.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1)
        cached = second.usage.prompt_tokens_details.cached_tokens
        name = "finmoe_prefix_cache_hits_tokens_total"
        hits = metrics_after(before, name, cached)[name] - before[name]
        self.assertGreater(cached, 0)
        self.assertEqual(cached, hits)
        self.assertEqual(cached % 16, 0)  # whole blocks
        self.assertLess(cached, second.usage.prompt_tokens)


class TokenizerRoutes(unittest.TestCase):
    def vocab(self):
        with open(os.path.join(DATA, "tokenizer", "qwen3", "tokenizer.json"), encoding="utf-8") as f:
            t = json.load(f)
        inv = {i: s for s, i in t["model"]["vocab"].items()}
        inv.update({a["id"]: a["content"] for a in t["added_tokens"]})
        return inv

    def test_tokenize_counts_what_completions_count(self):
        text = "Net interest income: 4.2bn EUR (+3%)"
        body = tokenize(text, return_token_strs=True)
        r = client().completions.create(model=MODEL_NAME, prompt=text, max_tokens=1)
        self.assertEqual(body["count"], r.usage.prompt_tokens)
        self.assertEqual(body["count"], len(body["tokens"]))
        self.assertGreater(body["max_model_len"], 0)
        vocab = self.vocab()
        self.assertEqual(body["token_strs"], [vocab[i] for i in body["tokens"]])
        status, _, back = post("/detokenize", {"model": MODEL_NAME, "tokens": body["tokens"]})
        self.assertEqual((status, back), (200, {"prompt": text}))

    def test_tokenize_messages_counts_what_chat_counts(self):
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is EBITDA?"}]
        status, _, body = post("/tokenize", {"model": MODEL_NAME, "messages": messages})
        self.assertEqual(status, 200, body)
        r = client().chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1)
        self.assertEqual(body["count"], r.usage.prompt_tokens)
        status, _, without = post("/tokenize", {"messages": messages, "add_generation_prompt": False})
        self.assertLess(without["count"], body["count"])
        self.assertEqual(without["tokens"], body["tokens"][:without["count"]])

    def test_errors_and_auth(self):
        self.assertEqual(post("/tokenize", {"prompt": "x"}, headers={})[0], 401)
        self.assertEqual(post("/detokenize", {"tokens": [1]}, headers={"Authorization": "Bearer no"})[0], 401)
        for path, body, param in [("/tokenize", {"prompt": 5}, "prompt"), ("/tokenize", {}, "prompt"),
                                  ("/tokenize", {"prompt": "x", "model": "other"}, "model"),
                                  ("/detokenize", {"tokens": [-1]}, "tokens"),
                                  ("/detokenize", {"tokens": "abc"}, "tokens"),
                                  ("/detokenize", {"tokens": [1], "temperature": 1}, "temperature")]:
            status, _, err = post(path, body)
            self.assertEqual((status, err["error"]["param"]), (400, param), (path, body))
        status, _, _ = SERVER.request("GET", "/tokenize", headers=AUTH)
        self.assertEqual(status, 405)


class Metrics(unittest.TestCase):
    def test_vllm_names_mirror_finmoe_names(self):
        before = SERVER.metrics()
        r = client().completions.create(model=MODEL_NAME, prompt="Credit spreads", max_tokens=4,
                                        extra_body={"ignore_eos": True})
        done = '{model_name="%s",finished_reason="length"}' % MODEL_NAME
        m = metrics_after(before, "vllm:generation_tokens_total", r.usage.completion_tokens)
        label = '{model_name="%s"}' % MODEL_NAME
        pairs = {"vllm:num_requests_running": "finmoe_num_requests_running",
                 "vllm:num_requests_waiting": "finmoe_num_requests_waiting",
                 "vllm:kv_cache_usage_perc": "finmoe_kv_cache_usage_ratio",
                 "vllm:prefix_cache_queries_total": "finmoe_prefix_cache_queries_tokens_total",
                 "vllm:prefix_cache_hits_total": "finmoe_prefix_cache_hits_tokens_total",
                 "vllm:num_preemptions_total": "finmoe_num_preemptions_total",
                 "vllm:prompt_tokens_total": "finmoe_prompt_tokens_total",
                 "vllm:generation_tokens_total": "finmoe_generation_tokens_total",
                 "vllm:time_to_first_token_seconds_count": "finmoe_time_to_first_token_seconds_count"}
        for v, f in pairs.items():
            self.assertIn(v + label, m)
            self.assertEqual(m[v + label], m[f + label], v)
        self.assertGreaterEqual(m["vllm:kv_cache_usage_perc"], 0)
        self.assertLessEqual(m["vllm:kv_cache_usage_perc"], 1)
        gen = m["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
        self.assertEqual(gen, r.usage.completion_tokens)
        self.assertEqual(m["vllm:request_success_total" + done] - before["vllm:request_success_total" + done], 1)
        self.assertEqual(m["vllm:time_to_first_token_seconds_count" + label]
                         - before["vllm:time_to_first_token_seconds_count" + label], 1)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
