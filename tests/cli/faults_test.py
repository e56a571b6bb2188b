#!/usr/bin/env python3
"""Crash-only behaviour under faults, through the real `finmoe` binary:

- SIGTERM finishes the current step, checkpoints it and exits 143;
  the resume says where it starts and reaches the uninterrupted weights;
- a training run killed with SIGKILL at several points (between steps,
  during a checkpoint save, before the first checkpoint) and resumed with
  `--resume auto` ends with the same weights, bit for bit, as a run that was
  never interrupted;
- a checkpoint save that fails for lack of space (the file-size limit makes
  every write past it fail with EFBIG, as a full disk fails with ENOSPC)
  exits 2 naming the file, leaves the previous checkpoint as it was and no
  half-written one, and a resume from there reaches the same weights;
- `finmoe serve` killed with SIGKILL restarts at once on the same port and
  answers (no stale lock, socket or cache state).

Standard library only. Usage: faults_test.py FINMOE_BINARY TEST_DATA_DIR
"""
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serve"))
import serve_util  # noqa: E402

FINMOE, DATA = serve_util.args()
STEPS = 12
SAVE_INTERVAL = 3


def tensors(path):
    """name -> (dtype, shape, raw bytes) of a safetensors file, parsed here."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    return {k: (v["dtype"], tuple(v["shape"]), data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


class Training:
    def __init__(self, root):
        self.root = root
        self.data = os.path.join(root, "data.jsonl")
        with open(self.data, "w") as f:
            for i in range(40):
                f.write(json.dumps({"text": "The bank reported assets of %d and liabilities of %d; "
                                            "net interest income rose %d%%." % (i * 1000, i * 700, i % 9)})
                        + "\n")

    def command(self, out, *extra):
        return [FINMOE, "train", "--init-preset", "tiny",
                "--tokenizer", os.path.join(DATA, "tokenizer", "qwen3"),
                "--data", self.data, "--seq-len", "32", "--batch-size", "2",
                "--max-steps", str(STEPS), "--save-interval", str(SAVE_INTERVAL),
                "--set", "keep_checkpoints=0", "--seed", "7", "--output-dir", out] + list(extra)

    def run(self, out, *extra, preexec=None, timeout=300):
        return subprocess.run(self.command(out, *extra), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              preexec_fn=preexec)

    @staticmethod
    def steps_done(out):
        try:
            with open(os.path.join(out, "metrics.jsonl")) as f:
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0

    def kill_at(self, out, when):
        """Starts a run and SIGKILLs it when `when(out, seconds)` says so."""
        p = subprocess.Popen(self.command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.monotonic()
        try:
            while p.poll() is None:
                if when(out, time.monotonic() - start):
                    p.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.002)
        finally:
            p.wait(timeout=60)
        return p.returncode


def files(directory):
    out = {}
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def checkpoints(out):
    return sorted((d for d in os.listdir(out) if d.startswith("checkpoint-")),
                  key=lambda d: int(d.split("-")[1]))


class TrainingUnderFaults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="finmoe-faults-")
        cls.training = Training(cls.root)
        cls.reference_dir = os.path.join(cls.root, "uninterrupted")
        r = cls.training.run(cls.reference_dir)
        assert r.returncode == 0, r.stdout
        cls.reference = tensors(os.path.join(cls.reference_dir, "checkpoint-%d" % STEPS,
                                             "model.safetensors"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def assertSameWeights(self, out):
        final = os.path.join(out, "checkpoint-%d" % STEPS, "model.safetensors")
        self.assertTrue(os.path.exists(final), os.listdir(out))
        got = tensors(final)
        self.assertEqual(sorted(got), sorted(self.reference))
        for name, (dtype, shape, raw) in self.reference.items():
            self.assertEqual(got[name][:2], (dtype, shape), name)
            self.assertTrue(got[name][2] == raw, "%s differs after the resume" % name)

    def resume(self, out):
        r = self.training.run(out, "--resume", "auto")
        self.assertEqual(r.returncode, 0, r.stdout)
        return r

    def test_sigkill_between_steps_then_resume_gives_the_same_weights(self):
        for target in (2, 7, 10):  # steps logged when the kill lands
            with self.subTest(step=target):
                out = os.path.join(self.root, "killed-step-%d" % target)
                code = self.training.kill_at(out, lambda o, t: Training.steps_done(o) >= target)
                self.assertEqual(code, -signal.SIGKILL, "the run ended before step %d" % target)
                self.resume(out)
                self.assertSameWeights(out)

    def test_sigterm_checkpoints_the_finished_step_then_resume(self):
        # SIGINT takes the same path (Trainer.SigintOrSigterm... in test_train)
        for sig, code in ((signal.SIGTERM, 143),):
            with self.subTest(signal=sig.name):
                out = os.path.join(self.root, "stopped-%s" % sig.name)
                log = os.path.join(self.root, "stopped-%s.log" % sig.name)
                with open(log, "w") as f:
                    p = subprocess.Popen(self.training.command(out), stdout=f, stderr=subprocess.STDOUT)
                    try:
                        while p.poll() is None and Training.steps_done(out) < 2:
                            time.sleep(0.002)
                        p.send_signal(sig)
                    finally:
                        p.wait(timeout=120)
                with open(log) as f:
                    text = f.read()
                self.assertEqual(p.returncode, code, text)
                done = Training.steps_done(out)
                self.assertLess(done, STEPS, "the signal came after the last step")
                self.assertIn("stopped by %s after step %d/%d" % (sig.name, done, STEPS), text)
                # the finished step is the checkpoint `latest` names, written whole
                with open(os.path.join(out, "latest")) as f:
                    self.assertEqual(f.read().strip(), "checkpoint-%d" % done)
                self.assertEqual([n for n in os.listdir(out) if n.startswith(".")], [])
                r = self.resume(out)
                self.assertIn("resuming from checkpoint-%d at step %d" % (done, done), r.stdout)
                self.assertSameWeights(out)

    def test_sigkill_during_a_checkpoint_save_keeps_the_previous_one(self):
        # the kill lands while checkpoint-6 is being written: its directory
        # (or its temp files) exists, the step-6 metrics line may not yet
        out = os.path.join(self.root, "killed-in-save")

        def saving(o, _):
            return os.path.isdir(o) and any(n.startswith(("checkpoint-6", ".checkpoint-6", ".tmp"))
                                            or "checkpoint-6" in n for n in os.listdir(o))
        code = self.training.kill_at(out, saving)
        self.assertEqual(code, -signal.SIGKILL)
        for c in checkpoints(out):  # whatever is named a checkpoint is whole
            r = subprocess.run([FINMOE, "info", os.path.join(out, c), "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.assertEqual(r.returncode, 0, "%s: %s" % (c, r.stdout))
        self.resume(out)
        self.assertSameWeights(out)
        # the killed save's temp directory is gone once a later save ran
        self.assertEqual([n for n in os.listdir(out) if n.startswith(".")], [])

    def test_sigkill_before_the_first_checkpoint_restarts_from_scratch(self):
        out = os.path.join(self.root, "killed-early")
        code = self.training.kill_at(out, lambda o, t: Training.steps_done(o) >= 1)
        self.assertEqual(code, -signal.SIGKILL)
        self.resume(out)
        self.assertSameWeights(out)

    def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(self):
        out = os.path.join(self.root, "full-disk")
        first = os.path.join(out, "checkpoint-%d" % SAVE_INTERVAL)
        # the run stops (SIGKILL) once its first checkpoint is there, then
        # resumes on a disk too small for the next one
        code = self.training.kill_at(out, lambda o, t: os.path.isdir(first)
                                     and Training.steps_done(o) > SAVE_INTERVAL)
        self.assertEqual(code, -signal.SIGKILL)
        before = files(first)
        weights = len(before["model.safetensors"])

        def small_disk():  # writes past half the weights' size fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (weights // 2, weights // 2))

        r = self.training.run(out, "--resume", "auto", preexec=small_disk)
        self.assertEqual(r.returncode, 2, r.stdout)
        self.assertIn("File too large", r.stdout)
        self.assertIn("checkpoint-%d" % (2 * SAVE_INTERVAL), r.stdout)  # names what it was writing
        self.assertNotIn("internal error", r.stdout)
        self.assertEqual(checkpoints(out), ["checkpoint-%d" % SAVE_INTERVAL], os.listdir(out))
        after = files(first)
        self.assertEqual(before, after)
        leftovers = [n for n in os.listdir(out) if n.startswith(".") or ".tmp" in n]
        self.assertEqual(leftovers, [])
        self.resume(out)  # room again: the resume reaches the uninterrupted weights
        self.assertSameWeights(out)


class ServeUnderFaults(unittest.TestCase):
    def test_serve_restarts_on_the_same_port_after_sigkill(self):
        root = tempfile.mkdtemp(prefix="finmoe-faults-serve-")
        try:
            model = serve_util.make_tiny_model(FINMOE, DATA, root)
            body = {"prompt": "The bank", "max_tokens": 4, "temperature": 0}
            first = serve_util.Server(FINMOE, model)
            status, answer = first.post_json("/v1/completions", body)
            self.assertEqual(status, 200, answer)
            port = first.port
            first.kill()  # SIGKILL
            second = serve_util.Server(FINMOE, model, port=port)
            try:
                self.assertEqual(second.port, port)
                status, again = second.post_json("/v1/completions", body)
                self.assertEqual(status, 200, again)
                self.assertEqual(again["choices"][0]["text"], answer["choices"][0]["text"])
            finally:
                second.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
