#!/usr/bin/env python3
"""`finmoe eval --model-url` against `finmoe serve` on the lm-eval reference
model (tests/data/eval/ref): greedy generations through /v1/completions equal
lm-evaluation-harness's own (reference.json) and `finmoe eval MODEL`'s; an
endpoint that refuses connections fails with exit 2 after its retries, and
no result file is written.

Standard library only. Usage: eval_model_url_test.py FINMOE_BINARY TEST_DATA_DIR
"""
import json
import os
import subprocess
import tempfile
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serve"))
import serve_util  # noqa: E402

FINMOE, DATA = serve_util.args()
REF = os.path.join(DATA, "eval", "ref")
MODEL = os.path.join(REF, "model")
TASK = os.path.join(REF, "ref_gen.yaml")


def generations(out_dir):
    with open(os.path.join(out_dir, "samples_ref_gen.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["resps"][0][0] for line in f]


class ModelUrl(unittest.TestCase):
    def test_generations_through_serve_equal_lm_eval(self):
        with tempfile.TemporaryDirectory(prefix="finmoe_eval_url_") as tmp:
            server = serve_util.Server(FINMOE, MODEL, "--chat-template", "chatml")
            try:
                r = subprocess.run([FINMOE, "eval", "--model-url", server.url, "--tasks", TASK,
                                    "--out", os.path.join(tmp, "url"), "--log-samples", "--batch-size", "4"],
                                   capture_output=True, text=True, timeout=300)
            finally:
                server.stop()
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            local = subprocess.run([FINMOE, "eval", MODEL, "--tasks", TASK, "--out", os.path.join(tmp, "local"),
                                    "--log-samples"], capture_output=True, text=True, timeout=300)
            self.assertEqual(local.returncode, 0, local.stdout + local.stderr)
            with open(os.path.join(REF, "reference.json"), encoding="utf-8") as f:
                ref = [s["resps"][0][0] for s in json.load(f)["tasks"]["ref_gen"]["samples"]]
            self.assertEqual(generations(os.path.join(tmp, "url")), ref)
            self.assertEqual(generations(os.path.join(tmp, "local")), ref)

    def test_unreachable_endpoint_exits_2_and_writes_nothing(self):
        with tempfile.TemporaryDirectory(prefix="finmoe_eval_url_") as tmp:
            out = os.path.join(tmp, "o")
            r = subprocess.run([FINMOE, "eval", "--model-url", "http://127.0.0.1:9", "--tasks", TASK,
                                "--out", out, "--limit", "1"], capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
            self.assertIn("--model-url http://127.0.0.1:9", r.stderr)
            self.assertIn("after 3 attempts", r.stderr)
            self.assertFalse(os.path.exists(os.path.join(out, "results.json")))


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]])
