#!/usr/bin/env python3
"""Request fuzzing of `finmoe serve` on a tiny model: valid /v1/completions,
/v1/chat/completions and /v1/embeddings bodies mutated with their structure in mind (a wrong
type in every field, fields deleted or invented, deep nesting, huge strings
and lists, edge numbers, invalid UTF-8 and lone surrogates, truncation,
random bytes, wholly random bodies), sent by 4 clients over keep-alive
connections.

Counts per target: 2xx, 4xx with an OpenAI error body, crashes (the server
died), hangs (no answer in HANG_S), 5xx, malformed errors. Fails on any
crash, hang, 5xx, error body not shaped {"error": {message, type, param,
code}}, 400 naming neither a field nor the body, or 2xx body that is not a
completion (an embedding list for /v1/embeddings). Then the server must be idle with every KV block free.

CI size: 600 inputs per target; FINMOE_FUZZ_LONG=1: 10,000 per target.
FINMOE_FUZZ_SEED picks the seed (printed). Standard library only.
Usage: fuzz_test.py FINMOE_BINARY TEST_DATA_DIR
"""
import http.client
import json
import os
import random
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

FINMOE, DATA = serve_util.args()
MODEL = "fuzz"
LONG = os.environ.get("FINMOE_FUZZ_LONG") == "1"
PER_TARGET = 10000 if LONG else 600
SEED = int(os.environ.get("FINMOE_FUZZ_SEED", "20260"))
CLIENTS = 4
HANG_S = 60
MAX_BODY = 262144

BASE = {
    "/v1/completions": {
        "model": MODEL, "prompt": "The balance sheet of a bank", "max_tokens": 4, "temperature": 0.7,
        "top_p": 0.9, "top_k": 20, "min_p": 0.05, "n": 1, "stream": False, "stop": ["\n\n", "END"], "seed": 7,
        "logprobs": 2, "presence_penalty": 0.1, "frequency_penalty": 0.1, "repetition_penalty": 1.05,
        "logit_bias": {"100": 1.5, "7": -2}, "ignore_eos": False, "include_stop_str_in_output": False,
        "user": "u-1", "best_of": 1, "echo": False,
        # vLLM's extensions: honoured, or accepted and named in X-Finmoe-Ignored-Fields
        "stop_token_ids": [7, 151643], "min_tokens": 1, "skip_special_tokens": True, "add_special_tokens": True,
        "spaces_between_special_tokens": False, "priority": 0,
    },
    "/v1/chat/completions": {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "What is equity?"}]},
                     {"role": "assistant", "content": "Assets minus liabilities."},
                     {"role": "user", "content": "And debt?", "name": "analyst"}],
        "max_tokens": 4, "max_completion_tokens": 4, "temperature": 0.7, "top_p": 0.9, "n": 1, "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True}, "stop": "\n\n", "seed": 7,
        "logprobs": True, "add_generation_prompt": True, "min_tokens": 2, "continue_final_message": False,
        "top_logprobs": 2, "presence_penalty": 0.1, "logit_bias": {"100": 1.5}, "response_format": {"type": "text"},
        "tool_choice": "none", "metadata": {"k": "v"},
    },
    "/v1/embeddings": {
        "model": MODEL, "input": ["The balance sheet", [5, 6, 7]], "encoding_format": "float", "dimensions": 64,
        "user": "u-1", "add_special_tokens": True,
    },
}

EDGE_VALUES = [None, True, False, 0, -1, 1, 2, 3.5, -0.0, 1e308, -1e308, 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 2 ** 70,
               1e-320, 127, 128, 129, 20, 21, 65, "", "x", "0", "1", "true", "null", "\u0000", "\ud7ff\ue000",
               "€" * 50, [], [1], [[1]], ["a"], [{}], {}, {"a": 1}, {"type": "text"}, {"role": "user"},
               [1, 2, 3, 151000], [-1], [[1, 2], [3]], "<|im_end|>", "<|endoftext|>" * 3]

DEEP = "\"__DEEP__\""


def paths(v, prefix=()):
    """Every path into a JSON value, containers first."""
    out = [prefix]
    if isinstance(v, dict):
        for k, x in v.items():
            out += paths(x, prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v[:20]):  # a huge list's first elements stand for the rest
            out += paths(x, prefix + (i,))
    return out


def get_at(body, path):
    for p in path:
        body = body[p]
    return body


def parent_of(body, path):
    cur = body
    for p in path[:-1]:
        cur = cur[p]
    return cur


def set_at(body, path, value):
    if not path:
        return value
    parent_of(body, path)[path[-1]] = value
    return body


class Mutator:
    def __init__(self, rng):
        self.rng = rng

    def random_string(self, n):
        r = self.rng
        alphabet = list("abc xyz 0123456789 \n\t\"\\/€漢字😀\u0000\u001f") + ["<|im_start|>", "<|im_end|>"]
        block = "".join(r.choices(alphabet, k=min(n, 2048)))
        return (block * (n // len(block) + 1))[:n]

    def mutate(self, target):
        """Bytes of one mutated body for `target`."""
        r = self.rng
        body = json.loads(json.dumps(BASE[target]))
        if r.random() < 0.04:  # wholly random bytes
            return bytes(r.getrandbits(8) for _ in range(r.randint(0, 3000)))
        deep = None
        for _ in range(r.randint(1, 3)):
            ps = paths(body)
            path = r.choice(ps)
            op = r.choice(["retype", "retype", "retype", "delete", "unknown", "deep", "huge_string", "huge_list",
                           "numbers", "valid"])
            if op == "retype":
                body = set_at(body, path, json.loads(json.dumps(r.choice(EDGE_VALUES))))
            elif op == "delete" and path:
                parent = parent_of(body, path)
                del parent[path[-1]]
            elif op == "unknown":
                dicts = [p for p in ps if isinstance(get_at(body, p), dict)]
                if dicts:
                    value = json.loads(json.dumps(r.choice(EDGE_VALUES)))  # a copy: later ops may edit it
                    get_at(body, r.choice(dicts))[self.random_string(r.randint(1, 12))] = value
            elif op == "deep" and deep is None and path:
                deep = r.choice([2, 32, 63, 64, 65, 200, 5000, 100000])
                body = set_at(body, path, "__DEEP__")
            elif op == "huge_string":
                body = set_at(body, path, self.random_string(r.choice([1000, 20000, 120000, MAX_BODY + 10])))
            elif op == "huge_list":
                n = r.choice([17, 65, 300, 1025, 20000])
                item = r.choice([1, "a", {"role": "user", "content": "x"}, [5]])
                copy = dict if isinstance(item, dict) else list if isinstance(item, list) else (lambda x: x)
                body = set_at(body, path, [copy(item) for _ in range(n)])
            elif op == "numbers":
                body = set_at(body, path, r.choice([0, 1, -1, 64, 65, 128, 129, 256, 2 ** 31, 2 ** 53 + 1, 0.5,
                                                    1e-9, 100, 101, -100, -101]))
            elif op == "valid":
                for k, v in (("n", r.choice([1, 2, 8])), ("max_tokens", r.choice([1, 8, 60])),
                             ("stream", r.random() < 0.5), ("temperature", r.choice([0, 1.0, 2.0]))):
                    if isinstance(body, dict):
                        body[k] = v
                if isinstance(body, dict):
                    body.pop("max_completion_tokens", None)
        try:
            text = json.dumps(body, ensure_ascii=r.random() < 0.5)
        except (TypeError, ValueError):
            text = json.dumps(BASE[target])
        if deep is not None:
            kind = r.random() < 0.5
            nest = ("[" * deep + "1" + "]" * deep) if kind else ('{"a":' * deep + "1" + "}" * deep)
            text = text.replace(DEEP, nest, 1)
        data = text.encode("utf-8", "surrogatepass")[:MAX_BODY + 4096]  # past the limit the rest does not matter
        tail = r.random()
        if tail < 0.06:  # truncated
            data = data[:r.randint(0, max(0, len(data) - 1))]
        elif tail < 0.12:  # random bytes over it
            data = bytearray(data)
            for _ in range(r.randint(1, 8)):
                if data:
                    data[r.randrange(len(data))] = r.getrandbits(8)
            data = bytes(data)
        elif tail < 0.17:  # invalid UTF-8 / a lone surrogate inside a string
            at = data.find(b'"', r.randrange(max(1, len(data))))
            bad = r.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\\ud800", b"\\udfff\\ud800", b"\xf4\x90\x80\x80"])
            if at >= 0:
                data = data[:at + 1] + bad + data[at + 1:]
        return data


class Outcome:
    def __init__(self):
        self.counts = {}
        self.failures = []
        self.lock = threading.Lock()

    def add(self, target, kind, detail=None, body=None):
        with self.lock:
            key = (target, kind)
            self.counts[key] = self.counts.get(key, 0) + 1
            if detail is not None:
                self.failures.append((target, kind, detail, (body or b"")[:300]))


FAILURE_KINDS = ("crash", "hang", "5xx", "bad_error", "unnamed_400", "bad_2xx", "dropped")


def judge(target, status, headers, data):
    """(kind, detail or None) of one answer."""
    ctype = headers.get("content-type", "")
    if 200 <= status < 300:
        if "text/event-stream" in ctype:
            text = data.decode("utf-8", "replace")
            if not text.endswith("data: [DONE]\n\n"):
                return "bad_2xx", "stream without [DONE]: %r" % text[-200:]
            for ev in text.split("\n\n"):
                if ev.startswith("data: {") and '"error"' in ev and '"choices"' not in ev:
                    return "bad_2xx", "error event in a stream: %s" % ev[:200]
            return "2xx", None
        try:
            j = json.loads(data)
        except ValueError:
            return "bad_2xx", "2xx body is not JSON: %r" % data[:200]
        if target == "/v1/embeddings":
            if j.get("object") != "list" or not isinstance(j.get("data"), list) or not j["data"] or "usage" not in j:
                return "bad_2xx", "2xx body is not an embedding list: %r" % data[:200]
            return "2xx", None
        if not isinstance(j.get("choices"), list) or not j["choices"] or "usage" not in j:
            return "bad_2xx", "2xx body is not a completion: %r" % data[:200]
        return "2xx", None
    if status >= 500:
        return "5xx", "%d %r" % (status, data[:300])
    try:
        err = json.loads(data)["error"]
        assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}
        assert isinstance(err["message"], str) and err["message"]
        assert err["type"] == "invalid_request_error" or status != 400
    except (ValueError, KeyError, AssertionError, TypeError):
        return "bad_error", "%d %r" % (status, data[:300])
    if status == 400 and not (isinstance(err["param"], str) and err["param"]) and "body" not in err["message"]:
        return "unnamed_400", err["message"]
    return "%dxx" % (status // 100) if status not in (400, 413) else str(status), None


class Fuzz(unittest.TestCase):
    def test_fuzz(self):
        scratch = serve_util.ScratchDir("finmoe-serve-fuzz-")
        server = None
        try:
            model = serve_util.make_tiny_model(FINMOE, DATA, scratch.path, seed=11)
            server = serve_util.Server(FINMOE, model, "--served-model-name", MODEL, "--kv-cache-memory", "8MiB",
                                       "--max-model-len", "64", "--max-body-bytes", str(MAX_BODY),
                                       "--max-n", "8", "--max-choices-per-request", "16")
            self.run_fuzz(server)
        except Exception:
            if server:
                print(server.log()[-3000:], file=sys.stderr)
            raise
        finally:
            if server:
                code = server.stop()
                self.assertEqual(code, 0, "graceful shutdown exits 0")
            scratch.cleanup()

    def run_fuzz(self, server):
        print("fuzz: seed %d, %d inputs per target%s" % (SEED, PER_TARGET, " (long)" if LONG else ""),
              file=sys.stderr)
        rng = random.Random(SEED)
        mut = Mutator(rng)
        edge_before = json.dumps(EDGE_VALUES)
        jobs = [(t, mut.mutate(t)) for t in BASE for _ in range(PER_TARGET)]
        # a mutation that edited a shared edge value in place would change every later input (and once
        # made one refer to itself: "Circular reference" at input 6,000-10,000 of the long mode)
        self.assertEqual(json.dumps(EDGE_VALUES), edge_before, "the mutator left EDGE_VALUES as it was")
        random.Random(SEED + 1).shuffle(jobs)
        outcome = Outcome()
        lock = threading.Lock()
        crashed = threading.Event()
        t0 = time.time()

        def client():
            conn = None
            while not crashed.is_set():
                with lock:
                    if not jobs:
                        break
                    target, body = jobs.pop()
                for attempt in (0, 1):
                    if conn is None:
                        conn = http.client.HTTPConnection(server.host, server.port, timeout=HANG_S)
                    try:
                        conn.request("POST", target, body=body, headers={"Content-Type": "application/json"})
                        resp = conn.getresponse()
                        data = resp.read()
                        headers = {k.lower(): v for k, v in resp.getheaders()}
                        if headers.get("connection") == "close":
                            conn.close()
                            conn = None
                        kind, detail = judge(target, resp.status, headers, data)
                        outcome.add(target, kind, detail, body)
                        break
                    except TimeoutError:
                        outcome.add(target, "hang", "no answer in %d s" % HANG_S, body)
                        conn.close()
                        conn = None
                        break
                    except (ConnectionError, http.client.HTTPException, OSError) as e:
                        conn.close()
                        conn = None
                        if server.proc.poll() is not None:
                            outcome.add(target, "crash", "server exited with %s" % server.proc.returncode, body)
                            crashed.set()
                            break
                        if attempt == 1:  # a kept-alive connection may have closed under us once
                            outcome.add(target, "dropped", repr(e), body)
            if conn:
                conn.close()

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.time() - t0

        for target in BASE:
            row = {k: v for (t, k), v in sorted(outcome.counts.items()) if t == target}
            print("fuzz: %-22s %5d inputs  %s" % (target, sum(row.values()), row), file=sys.stderr)
        print("fuzz: %d inputs in %.1f s; crashes %d, hangs %d"
              % (sum(outcome.counts.values()), elapsed,
                 sum(v for (t, k), v in outcome.counts.items() if k == "crash"),
                 sum(v for (t, k), v in outcome.counts.items() if k == "hang")), file=sys.stderr)
        for f in outcome.failures[:20]:
            print("fuzz failure: %s %s: %s\n  body: %r" % f, file=sys.stderr)
        bad = [f for f in outcome.failures if f[1] in FAILURE_KINDS]
        self.assertEqual(bad, [], "%d failing inputs (first shown above)" % len(bad))
        self.assertEqual(sum(outcome.counts.values()), len(BASE) * PER_TARGET, "every input was answered")
        for target in BASE:  # the mutations reach both outcomes
            self.assertGreater(outcome.counts.get((target, "2xx"), 0), PER_TARGET // 50, target)
            self.assertGreater(outcome.counts.get((target, "400"), 0), PER_TARGET // 2, target)

        # still serving, nothing left behind
        status, data = server.post_json("/v1/completions", {"model": MODEL, "prompt": "ok", "max_tokens": 2})
        self.assertEqual(status, 200, data)
        deadline = time.time() + 30
        while True:
            m = server.metrics()
            idle = (m["finmoe_num_requests_running"] == 0 and m["finmoe_num_requests_waiting"] == 0 and
                    m["finmoe_http_requests_in_flight"] == 0 and
                    m["finmoe_kv_cache_blocks_free"] == m["finmoe_kv_cache_blocks_total"])
            if idle or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertTrue(idle, "the server is idle with every KV block free again")


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
