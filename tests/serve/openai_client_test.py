#!/usr/bin/env python3
"""`finmoe serve` through the official `openai` Python client, on a tiny model
made with `finmoe init`. The greedy text is also checked against
`finmoe generate` (an independent path: the batch Generator, not the engine).

Usage: openai_client_test.py FINMOE_BINARY TEST_DATA_DIR  (exit 77 = skipped)
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

openai = serve_util.import_openai()

FINMOE, DATA = serve_util.args()
MODEL_NAME = "tiny-test"
PROMPT = "The balance sheet of a bank"
SCRATCH = None
MODEL = None  # one tiny model for every server of this file


def setUpModule():
    global SCRATCH, MODEL
    SCRATCH = serve_util.ScratchDir("finmoe-serve-openai-")
    MODEL = serve_util.make_tiny_model(FINMOE, DATA, SCRATCH.path)


def tearDownModule():
    SCRATCH.cleanup()


class OpenAiClient(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = MODEL
        cls.server = serve_util.Server(FINMOE, cls.model, "--served-model-name", MODEL_NAME,
                                       "--kv-cache-memory", "16MiB", "--max-body-bytes", "65536")
        cls.client = openai.OpenAI(base_url=cls.server.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    @classmethod
    def tearDownClass(cls):
        code = cls.server.stop()
        assert code == 0, "server exit code %s\n%s" % (code, cls.server.log())

    def chat(self, **kw):
        kw.setdefault("model", MODEL_NAME)
        kw.setdefault("messages", [{"role": "user", "content": "What is a balance sheet?"}])
        return self.client.chat.completions.create(**kw)

    # ---- happy paths ---------------------------------------------------------
    def test_models_lists_the_served_name(self):
        ids = [m.id for m in self.client.models.list().data]
        self.assertEqual(ids, [MODEL_NAME])

    def test_chat_completion(self):
        r = self.chat(max_tokens=8, temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(r.model, MODEL_NAME)
        self.assertEqual(len(r.choices), 1)
        c = r.choices[0]
        self.assertEqual(c.message.role, "assistant")
        self.assertIsInstance(c.message.content, str)
        self.assertIn(c.finish_reason, ("stop", "length"))
        self.assertLessEqual(r.usage.completion_tokens, 8)
        if c.finish_reason == "length":
            self.assertEqual(r.usage.completion_tokens, 8)
        self.assertGreater(r.usage.prompt_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)

    def test_streaming_chat_concatenates_to_the_greedy_text(self):
        kw = dict(max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
        full = self.chat(**kw)
        chunks = list(self.chat(stream=True, stream_options={"include_usage": True}, **kw))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        self.assertEqual(text, full.choices[0].message.content)
        finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        self.assertEqual(finish, ["length"])
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        # the last chunk carries the usage and no choices; the others no usage
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, 24)
        self.assertEqual(chunks[-1].usage.prompt_tokens, full.usage.prompt_tokens)
        self.assertTrue(all(ch.usage is None for ch in chunks[:-1]))

    def test_completion_stops_before_the_stop_string(self):
        kw = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
        text = self.client.completions.create(**kw).choices[0].text
        # a stop string taken from the middle of the greedy text
        stop = next((text[i:i + 2] for i in range(len(text) // 3, len(text) - 1)
                     if text[i:i + 2].strip() and "\ufffd" not in text[i:i + 2]), None)
        self.assertIsNotNone(stop, "greedy text too short: %r" % text)
        r = self.client.completions.create(stop=[stop, "\u0000never"], **kw)
        self.assertEqual(r.choices[0].text, text[:text.find(stop)])
        self.assertEqual(r.choices[0].finish_reason, "stop")

    def test_chat_logprobs(self):
        r = self.chat(max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), 6)
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        for t in content:
            self.assertLessEqual(t.logprob, 0)
            self.assertEqual(len(t.top_logprobs), 3)
            lps = [x.logprob for x in t.top_logprobs]
            self.assertEqual(lps, sorted(lps, reverse=True))
            # greedy: the chosen token is the most likely one
            self.assertAlmostEqual(t.logprob, lps[0], places=5)
            self.assertEqual(bytes(t.bytes).decode("utf-8", "replace"), t.token)

    def test_completion_logprobs(self):
        r = self.client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2,
                                           extra_body={"ignore_eos": True})
        lp = r.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 5)
        self.assertEqual(len(lp.token_logprobs), 5)
        self.assertTrue(all(x <= 0 for x in lp.token_logprobs))
        self.assertTrue(all(len(d) in (2, 3) for d in lp.top_logprobs))
        self.assertEqual(lp.text_offset[0], 0)
        self.assertEqual(lp.text_offset, sorted(lp.text_offset))

    def test_n_choices(self):
        r = self.chat(max_tokens=10, temperature=1.0, seed=7, n=2, extra_body={"ignore_eos": True})
        self.assertEqual([c.index for c in r.choices], [0, 1])
        self.assertEqual(r.usage.completion_tokens, 20)
        again = self.chat(max_tokens=10, temperature=1.0, seed=7, n=2, extra_body={"ignore_eos": True})
        self.assertEqual([c.message.content for c in r.choices], [c.message.content for c in again.choices],
                         "a seeded request is reproducible")

    def test_greedy_text_equals_finmoe_generate(self):
        n = 16
        gen = subprocess.run([FINMOE, "generate", self.model, "-p", PROMPT, "--greedy", "-n", str(n)],
                             capture_output=True, text=True, check=True)
        r = self.client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=n, temperature=0)
        self.assertEqual(r.choices[0].text + "\n", gen.stdout)
        question = "What is equity?"
        gen = subprocess.run([FINMOE, "generate", self.model, "-p", question, "--chat", "--greedy", "-n", str(n)],
                             capture_output=True, text=True, check=True)
        r = self.chat(messages=[{"role": "user", "content": question}], max_tokens=n, temperature=0)
        self.assertEqual(r.choices[0].message.content + "\n", gen.stdout)

    # ---- errors --------------------------------------------------------------
    def test_invalid_requests_are_bad_request_errors_naming_the_param(self):
        cases = [
            (dict(temperature=5), "temperature"),
            (dict(top_p=0), "top_p"),
            (dict(n=0), "n"),
            (dict(logprobs=True, top_logprobs=25), "top_logprobs"),
            (dict(model="no-such-model"), "model"),
            (dict(messages=[{"role": "user", "content": "x " * 3000}]), "messages"),
            (dict(extra_body={"frobnicate": 1}), "frobnicate"),
        ]
        for kw, param in cases:
            with self.subTest(param=param):
                with self.assertRaises(openai.BadRequestError) as cm:
                    self.chat(max_tokens=4, **kw)
                self.assertEqual(cm.exception.status_code, 400)
                self.assertEqual(cm.exception.param, param)
                self.assertEqual(cm.exception.type, "invalid_request_error")
        with self.assertRaises(openai.BadRequestError) as cm:
            self.client.completions.create(model=MODEL_NAME, prompt=PROMPT, logprobs=21)
        self.assertEqual(cm.exception.param, "logprobs")
        self.chat(max_tokens=2)  # still serving

    def test_http_errors_have_openai_error_bodies(self):
        s = self.server
        status, body = s.post_json("/v1/chat/completions", "{not json")
        self.assertEqual(status, 400)
        self.assertEqual(set(body["error"]), {"message", "type", "param", "code"})
        status, body = s.post_json("/v1/nothing", {})
        self.assertEqual(status, 404)
        self.assertIn("/v1/nothing", body["error"]["message"])
        big = json.dumps({"model": MODEL_NAME, "prompt": "x" * 100000})
        status, _, data = s.request("POST", "/v1/completions", big)
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(data)["error"]["code"], "request_too_large")
        # a chunked upload has no Content-Length: the limit must hold all the same
        conn = http.client.HTTPConnection(s.host, s.port, timeout=60)
        conn.request("POST", "/v1/completions", body=iter([big[:50000].encode(), big[50000:].encode()]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        self.assertEqual(r.status, 413)
        self.assertEqual(json.loads(r.read())["error"]["code"], "request_too_large")
        conn.close()
        status, _, data = s.request("GET", "/v1/chat/completions")
        self.assertEqual(status, 405)
        status, _, _ = s.request("GET", "/health")
        self.assertEqual(status, 200)
        self.chat(max_tokens=2)  # still serving

    def test_disconnected_clients_are_cancelled(self):
        for stream in (True, False):
            with self.subTest(stream=stream):
                self.check_disconnect_cancels(stream)

    def check_disconnect_cancels(self, stream):
        before = self.server.metrics().get("finmoe_requests_cancelled_total", 0)
        body = json.dumps({"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 1500, "stream": stream,
                           "ignore_eos": True, "temperature": 0})
        sock = socket.create_connection((self.server.host, self.server.port))
        sock.sendall(("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
        if stream:
            self.assertIn(b"data: ", sock.recv(4096) + sock.recv(4096))
        else:
            time.sleep(0.5)  # generating; nothing is written before the end
        sock.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            m = self.server.metrics()
            if m["finmoe_requests_cancelled_total"] > before and m["finmoe_num_requests_running"] == 0:
                break
            time.sleep(0.1)
        m = self.server.metrics()
        self.assertGreater(m["finmoe_requests_cancelled_total"], before)
        self.assertEqual(m["finmoe_num_requests_running"], 0)
        self.assertLess(m["finmoe_generation_tokens_total"], 1e9)


class BenchServe(unittest.TestCase):
    """`finmoe bench serve` counts what it asked for: every request, exactly
    input_len + output_len tokens each, never more clients than allowed."""

    def check(self, runs, levels, num_prompts):
        self.assertEqual([r["concurrency"] for r in runs], levels)
        for r in runs:
            n = max(num_prompts, r["concurrency"])
            self.assertEqual((r["completed"], r["failed"]), (n, 0), r["first_error"])
            self.assertEqual(r["input_tokens"], n * 24)
            self.assertEqual(r["output_tokens"], n * 6)
            self.assertLessEqual(r["max_concurrent_requests"], r["concurrency"])
            self.assertGreater(r["output_throughput"], 0)
            for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
                self.assertLessEqual(r[k]["p50"], r[k]["p99"])
            self.assertLessEqual(r["ttft_ms"]["p99"], r["e2e_ms"]["p99"] + 1e-6)
            self.assertGreater(r["kv_capacity_tokens"], 0)
        self.assertLessEqual(runs[0]["max_running_seqs"], runs[-1]["max_running_seqs"])

    def run_bench(self, *target):
        out = os.path.join(SCRATCH.path, "bench.json")
        levels = [1, 3]
        cmd = [FINMOE, "bench", "serve", *target, "--compare", "--levels", ",".join(map(str, levels)),
               "--num-prompts", "4", "--input-len", "24", "--output-len", "6", "--shared-prefix-ratio", "0.7",
               "--out", out]
        r = subprocess.run(cmd, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("speedup", r.stdout)
        with open(out) as f:
            runs = json.load(f)["runs"]
        self.check(runs, levels, 4)
        # 0.7 of 24 tokens = 17 shared: one full block of 16 is reused by later prompts
        self.assertGreater(runs[-1]["prefix_hit_rate"], 0)

    def test_in_process_engine(self):
        self.run_bench(MODEL, "--kv-cache-memory", "8MiB")

    def test_running_server(self):
        server = serve_util.Server(FINMOE, MODEL, "--kv-cache-memory", "8MiB")
        try:
            self.run_bench("--url", server.url)
        finally:
            self.assertEqual(server.stop(), 0)


class Auth(unittest.TestCase):
    def test_api_key(self):
        server = serve_util.Server(FINMOE, MODEL, "--api-key", "sk-right", "--kv-cache-memory", "8MiB")
        try:
            wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
            with self.assertRaises(openai.AuthenticationError):
                wrong.models.list()
            with self.assertRaises(openai.AuthenticationError):
                wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            status, _, _ = server.request("POST", "/v1/completions", {"prompt": "x"})  # no header at all
            self.assertEqual(status, 401)
            right = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-right", max_retries=0)
            self.assertEqual([m.id for m in right.models.list().data], [MODEL])
            r = right.completions.create(model=MODEL, prompt="hi", max_tokens=2)
            self.assertEqual(len(r.choices), 1)
            self.assertEqual(server.request("GET", "/health")[0], 200)  # health needs no key
        finally:
            self.assertEqual(server.stop(), 0)


class Shutdown(unittest.TestCase):
    """SIGTERM lets an in-flight stream finish (or cancels it after
    --shutdown-timeout) and exits 0."""

    def stream_through_sigterm(self, timeout_s):
        server = serve_util.Server(FINMOE, MODEL, "--kv-cache-memory", "8MiB", "--shutdown-timeout", str(timeout_s))
        try:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=1500, stream=True,
                                               temperature=0, extra_body={"ignore_eos": True},
                                               stream_options={"include_usage": True})
            chunks = [next(iter(stream))]
            code = []
            t = threading.Thread(target=lambda: code.append(server.stop()))
            t.start()
            chunks += list(stream)
            t.join()
            self.assertEqual(code, [0], server.log())
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            return finish, chunks[-1].usage
        finally:
            server.kill()

    def test_sigterm_finishes_in_flight_requests(self):
        finish, usage = self.stream_through_sigterm(60)
        self.assertEqual(finish, ["length"])
        self.assertEqual(usage.completion_tokens, 1500)

    def test_sigterm_cancels_after_the_timeout(self):
        finish, usage = self.stream_through_sigterm(0)
        self.assertEqual(finish, ["abort"])
        self.assertLess(usage.completion_tokens, 1500)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
