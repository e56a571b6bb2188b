#!/usr/bin/env python3
"""The TensorBoard event files of a real `finmoe train` run, read with PyPI
`tensorboard`'s EventAccumulator, hold every step's metrics as metrics.jsonl
has them (as float32), also after a resume from an older checkpoint than the
last logged step: TensorBoard drops the first file's steps past the
checkpoint (the second file's SessionLog START) and shows each step once.

    python tensorboard_live.py FINMOE_BIN TEST_DATA_DIR

Exit 0 on success, 1 on a mismatch, 77 when `tensorboard` is not importable.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError as e:  # pragma: no cover
    print(f"skip: PyPI tensorboard (with numpy) not importable ({e})")
    sys.exit(77)

FINMOE, DATA = sys.argv[1], sys.argv[2]

TAGS = {"train/loss": "loss", "train/lm_loss": "lm_loss", "train/aux_loss": "aux_loss",
        "train/kd_loss": "kd_loss", "train/lr": "lr", "train/grad_norm": "grad_norm",
        "train/tokens": "tokens", "train/loss_tokens": "loss_tokens",
        "train/tokens_per_second": "tokens_per_second", "eval/loss": "eval_loss",
        "eval/ppl": "eval_ppl"}


def train(root, out, *extra):
    cmd = [FINMOE, "train", "--init-preset", "tiny",
           "--tokenizer", os.path.join(DATA, "tokenizer", "qwen3"),
           "--data", os.path.join(root, "train.jsonl"), "--eval-data", os.path.join(root, "eval.jsonl"),
           "--seq-len", "16", "--batch-size", "2", "--seed", "3", "--eval-interval", "2",
           "--save-interval", "3", "--set", "logging_steps=2", "--output-dir", out] + list(extra)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if r.returncode != 0:
        print(r.stdout)
        raise SystemExit(f"finmoe train failed ({r.returncode})")


def main():
    root = tempfile.mkdtemp(prefix="finmoe-tb-")
    try:
        for name, n in (("train.jsonl", 30), ("eval.jsonl", 6)):
            with open(os.path.join(root, name), "w") as f:
                for i in range(n):
                    f.write(json.dumps({"text": f"Revenue of unit {i} rose {i % 7} percent to {i * 13} million."}) + "\n")
        out = os.path.join(root, "out")
        train(root, out, "--max-steps", "5")             # logs steps 1..5, checkpoints 3 and 5
        train(root, out, "--max-steps", "7", "--resume", os.path.join(out, "checkpoint-3"))
        files = sorted(os.listdir(os.path.join(out, "runs")))
        assert len(files) == 2 and all(f.startswith("events.out.tfevents.") for f in files), files

        with open(os.path.join(out, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        assert [r["step"] for r in rows] == list(range(1, 8)), [r["step"] for r in rows]

        acc = EventAccumulator(os.path.join(out, "runs"), size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert tags == set(TAGS), sorted(tags)
        checked = 0
        for tag, field in TAGS.items():
            events = acc.Scalars(tag)
            want = [(r["step"], r[field]) for r in rows if field in r]
            got = [(e.step, e.value) for e in events]
            assert [s for s, _ in got] == [s for s, _ in want], (tag, got, want)
            for (step, v), (_, w) in zip(got, want):
                assert v == float(np.float32(w)), (tag, step, v, w)
                checked += 1
        # the first file's steps 4 and 5 were purged, the second file's kept
        eval_steps = [e.step for e in acc.Scalars("eval/loss")]
        assert eval_steps == [2, 4, 6, 7], eval_steps
        print(f"ok: {checked} scalars over {len(rows)} steps in {len(files)} event files equal metrics.jsonl")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
