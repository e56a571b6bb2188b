#!/usr/bin/env python3
"""Fairness: one huge request (8 prompts x n=8 = 64 sequences) must not hold
every running slot while other clients wait. With --max-seqs-per-request 2
its sequences queue in the server and go in two at a time, so six other
clients sending small requests meanwhile see a p99 latency close to what
they see on an idle server (1.7-2.0x measured on a quiet machine: each step
they share runs 8 rows instead of 6, two of them sampled at temperature 1
over the whole vocabulary); without the cap they wait behind the huge request's
64 sequences.

Latencies are compared within this run (idle vs loaded, on the same server),
and against the huge request's own duration, so the bounds hold on a slow,
loaded machine. Standard library only.
Usage: fairness_test.py FINMOE_BINARY TEST_DATA_DIR
"""
import json
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util  # noqa: E402

FINMOE, DATA = serve_util.args()
MODEL = "fair"
SMALL_CLIENTS = 6
SMALL = {"model": MODEL, "prompt": "Net interest margin", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
HUGE = {"model": MODEL, "prompt": ["quarter %d revenue rose" % i for i in range(8)], "n": 8, "max_tokens": 24,
        "temperature": 1.0, "ignore_eos": True}


def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def small_latencies(server, until=None, count=None):
    """Latencies (s) of small requests from SMALL_CLIENTS clients, each sending
    back to back, until `until` is set or each sent `count`."""
    out, lock = [], threading.Lock()

    def client():
        sent = 0
        while (until is None or not until.is_set()) and (count is None or sent < count):
            t0 = time.time()
            status, body = server.post_json("/v1/completions", SMALL)
            assert status == 200, body
            assert body["usage"]["completion_tokens"] == SMALL["max_tokens"], body
            with lock:
                out.append(time.time() - t0)
            sent += 1

    threads = [threading.Thread(target=client) for _ in range(SMALL_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def measure(server):
    small_latencies(server, count=2)  # warm-up
    idle = small_latencies(server, count=16)
    done = threading.Event()
    huge = {}

    def run_huge():
        t0 = time.time()
        huge["status"], huge["body"] = server.post_json("/v1/completions", HUGE)
        huge["seconds"] = time.time() - t0
        done.set()

    t = threading.Thread(target=run_huge)
    t.start()
    time.sleep(0.2)  # the huge request is in first
    loaded = small_latencies(server, until=done)
    t.join()
    assert huge["status"] == 200, huge["body"]
    assert len(huge["body"]["choices"]) == 64
    assert huge["body"]["usage"]["completion_tokens"] == 64 * HUGE["max_tokens"]
    return idle, loaded, huge["seconds"]


def load():
    """The 1-minute load average and the CPUs, printed with the figures: latencies on a
    shared machine are only comparable at a similar load."""
    return "load %.1f on %d CPUs" % (os.getloadavg()[0], os.cpu_count())


class Fairness(unittest.TestCase):
    def test_a_huge_request_does_not_starve_small_ones(self):
        scratch = serve_util.ScratchDir("finmoe-serve-fair-")
        try:
            model = serve_util.make_tiny_model(FINMOE, DATA, scratch.path, seed=9)
            results = {}
            print("fairness: before, %s" % load(), file=sys.stderr)
            for cap in ("2", "0"):
                server = serve_util.Server(FINMOE, model, "--served-model-name", MODEL, "--kv-cache-memory", "16MiB",
                                           "--max-num-seqs", "8", "--max-seqs-per-request", cap)
                try:
                    results[cap] = measure(server)
                finally:
                    self.assertEqual(server.stop(), 0)
                print("fairness: after --max-seqs-per-request %s, %s" % (cap, load()), file=sys.stderr)
            for cap, (idle, loaded, huge_s) in results.items():
                print("fairness: --max-seqs-per-request %s: small requests p99 idle %.3f s, during the huge request "
                      "%.3f s (%d requests, %.2fx idle; p50 %.3f vs %.3f s); the huge request took %.2f s"
                      % (cap, p99(idle), p99(loaded), len(loaded), p99(loaded) / p99(idle),
                         sorted(idle)[len(idle) // 2], sorted(loaded)[len(loaded) // 2], huge_s), file=sys.stderr)
            idle, loaded, huge_s = results["2"]
            self.assertGreater(huge_s, 5 * p99(idle), "the huge request must be long enough to matter")
            self.assertGreaterEqual(len(loaded), 2 * SMALL_CLIENTS, "small requests kept completing meanwhile")
            # Measured on 2 CPUs (docs/RELIABILITY.md): 1.7-2.0x quiet, 1.0-1.6x at load 4; 1.9-4.1x
            # before the sampler stopped sorting the whole vocabulary for every temperature sample;
            # 3.0x once on a quiet machine with the first of the sampler changes, hence 5x. The
            # uncapped run below is 27-184x.
            self.assertLess(p99(loaded), 5 * p99(idle), "capped: small requests stay near their idle latency")
            self.assertLess(p99(loaded), 0.25 * huge_s)
            # the cap is what makes the difference: uncapped, small requests wait behind the huge one
            idle0, loaded0, huge0_s = results["0"]
            self.assertGreater(p99(loaded0), 3 * p99(idle0), "uncapped: small requests queue behind 64 sequences")
            self.assertGreater(p99(loaded0), 10 * p99(loaded))
        finally:
            scratch.cleanup()


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
