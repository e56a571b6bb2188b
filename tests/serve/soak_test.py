#!/usr/bin/env python3
"""Soak: 200 requests from 32 concurrent clients against `finmoe serve` on a
tiny model, 20% of them disconnecting mid-stream and 10% malformed. Every
valid request must complete, every malformed one get a 400 naming the
problem, the server must not crash, its RSS must come back near the level it
had after a warm-up, and /metrics must show every KV block free.

Standard library only. Usage: soak_test.py FINMOE_BINARY TEST_DATA_DIR
"""
import http.client
import json
import os
import random
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

FINMOE, DATA = serve_util.args()
NUM_REQUESTS = 200
CLIENTS = 32
MODEL = "soak"

# Malformed bodies and the param their error must name ("" = none: bad JSON).
MALFORMED = [
    ("/v1/chat/completions", "{\"messages\": [", ""),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": 7}, "temperature"),
    ("/v1/chat/completions", {"messages": "hello"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "top_p": 1.5}, "top_p"),
    ("/v1/completions", {"prompt": "x", "model": "other"}, "model"),
    ("/v1/completions", {"prompt": "x", "logprobs": 50}, "logprobs"),
    ("/v1/completions", {"prompt": [1, 2, -3]}, "prompt"),
    ("/v1/completions", {"prompt": "x", "bogus_field": 1}, "bogus_field"),
]

WORDS = ["revenue", "equity", "bond", "yield", "asset", "margin", "dividend", "cash", "flow", "ratio", "loan"]


def sse_events(resp):
    """Yields the data payloads of an SSE response (http.client handles chunking)."""
    buf = b""
    while True:
        data = resp.read1(65536) if hasattr(resp, "read1") else resp.read(1)
        if not data:
            return
        buf += data
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            assert ev.startswith(b"data: "), ev
            yield ev[6:]


class Soak(unittest.TestCase):
    def test_soak(self):
        scratch = serve_util.ScratchDir("finmoe-serve-soak-")
        server = None
        try:
            model = serve_util.make_tiny_model(FINMOE, DATA, scratch.path, seed=5)
            server = serve_util.Server(FINMOE, model, "--served-model-name", MODEL, "--kv-cache-memory", "8MiB",
                                       "--max-num-seqs", "16", "--block-size", "16")
            self.run_soak(server)
        except Exception:
            if server:
                print(server.log()[-4000:], file=sys.stderr)
            raise
        finally:
            if server:
                code = server.stop()
                self.assertEqual(code, 0, "graceful shutdown exits 0")
            scratch.cleanup()

    def plan(self, rng):
        kinds = ["valid"] * 70 + ["disconnect"] * 20 + ["malformed"] * 10
        kinds = (kinds * (NUM_REQUESTS // len(kinds) + 1))[:NUM_REQUESTS]
        rng.shuffle(kinds)
        jobs = []
        for i, kind in enumerate(kinds):
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
            chat = rng.random() < 0.5
            job = {"i": i, "kind": kind, "chat": chat, "stream": kind == "disconnect" or rng.random() < 0.5,
                   "max_tokens": rng.randint(4, 32) if kind != "disconnect" else 400}
            body = {"model": MODEL, "max_tokens": job["max_tokens"], "stream": job["stream"],
                    "temperature": rng.choice([0, 0.8]), "seed": i, "ignore_eos": kind == "disconnect"}
            if chat:
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            if rng.random() < 0.2:
                body["n"] = 2
            job["path"] = "/v1/chat/completions" if chat else "/v1/completions"
            job["body"] = json.dumps(body)
            if kind == "malformed":
                path, bad, param = MALFORMED[i % len(MALFORMED)]
                job["path"], job["body"], job["param"] = path, bad if isinstance(bad, str) else json.dumps(bad), param
            jobs.append(job)
        return jobs

    def run_one(self, server, job):
        if job["kind"] == "disconnect":
            # read a couple of events, then drop the connection without a word
            sock = socket.create_connection((server.host, server.port), timeout=60)
            body = job["body"].encode()
            sock.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Content-Length: %d\r\n\r\n" % (job["path"], len(body))).encode() + body)
            got = b""
            while got.count(b"data: ") < 2:
                data = sock.recv(4096)
                if not data:
                    break
                got += data
            sock.close()
            return {"ok": b"200 OK" in got, "why": got[:200]}
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        try:
            conn.request("POST", job["path"], body=job["body"], headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            if job["kind"] == "malformed":
                err = json.loads(resp.read())["error"]
                ok = resp.status == 400 and (err["param"] or "") == job["param"] and err["message"]
                return {"ok": bool(ok), "why": (resp.status, err)}
            if resp.status != 200:
                return {"ok": False, "why": (resp.status, resp.read()[:300])}
            n = json.loads(job["body"]).get("n", 1)
            if not job["stream"]:
                r = json.loads(resp.read())
                done = len(r["choices"]) == n and all(c["finish_reason"] in ("stop", "length") for c in r["choices"])
                done = done and r["usage"]["completion_tokens"] <= n * job["max_tokens"]
                return {"ok": done, "why": r}
            finished, saw_done = set(), False
            for ev in sse_events(resp):
                if ev == b"[DONE]":
                    saw_done = True
                    continue
                for c in json.loads(ev)["choices"]:
                    if c.get("finish_reason") in ("stop", "length"):
                        finished.add(c["index"])
            return {"ok": saw_done and finished == set(range(n)), "why": (saw_done, finished)}
        finally:
            conn.close()

    def wait_idle(self, server, timeout=60):
        deadline = time.time() + timeout
        while True:
            m = server.metrics()
            idle = (m["finmoe_num_requests_running"] == 0 and m["finmoe_num_requests_waiting"] == 0 and
                    m["finmoe_http_requests_in_flight"] == 0 and
                    m["finmoe_kv_cache_blocks_free"] == m["finmoe_kv_cache_blocks_total"])
            if idle or time.time() > deadline:
                return m
            time.sleep(0.2)

    def run_jobs(self, server, jobs):
        results = [None] * len(jobs)
        lock = threading.Lock()
        queue = list(range(len(jobs)))

        def client():
            while True:
                with lock:
                    if not queue:
                        return
                    k = queue.pop(0)
                try:
                    results[k] = self.run_one(server, jobs[k])
                except Exception as e:  # noqa: BLE001 - reported below
                    results[k] = {"ok": False, "why": repr(e)}

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def run_soak(self, server):
        rng = random.Random(1234)
        # warm-up: touches the KV cache, the allocator's arenas and the worker threads
        warm = self.run_jobs(server, [j for j in self.plan(random.Random(99)) if j["kind"] == "valid"][:64])
        self.assertTrue(all(r["ok"] for r in warm), [r for r in warm if not r["ok"]][:3])
        self.wait_idle(server)
        rss_idle = server.rss_kib()

        jobs = self.plan(rng)
        t0 = time.time()
        results = self.run_jobs(server, jobs)
        elapsed = time.time() - t0
        failed = [(j["i"], j["kind"], r["why"]) for j, r in zip(jobs, results) if not r["ok"]]
        self.assertEqual(failed, [], "requests that did not behave")
        self.assertIsNone(server.proc.poll(), "server crashed")

        m = self.wait_idle(server)
        self.assertEqual(m["finmoe_num_requests_running"], 0)
        self.assertEqual(m["finmoe_num_requests_waiting"], 0)
        self.assertEqual(m["finmoe_http_requests_in_flight"], 0)
        self.assertEqual(m["finmoe_kv_cache_blocks_used"], 0)
        self.assertEqual(m["finmoe_kv_cache_blocks_free"], m["finmoe_kv_cache_blocks_total"])
        disconnects = sum(j["kind"] == "disconnect" for j in jobs)
        self.assertGreaterEqual(m["finmoe_requests_cancelled_total"], disconnects,
                                "each dropped stream cancels its engine request")
        self.assertEqual(server.request("GET", "/health")[0], 200)

        rss_after = server.rss_kib()
        print("soak: %d requests in %.1f s; RSS idle %.1f MiB, after %.1f MiB"
              % (len(jobs), elapsed, rss_idle / 1024, rss_after / 1024), file=sys.stderr)
        # generous: allocator caches may keep some of what the burst used
        self.assertLess(rss_after, max(rss_idle * 1.5, rss_idle + 100 * 1024),
                        "RSS %d KiB after the soak vs %d KiB idle" % (rss_after, rss_idle))


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
