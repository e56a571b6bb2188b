#!/usr/bin/env python3
"""Cosine between the domain vector (DOMAIN - BASE) and instruction vectors
(INSTRUCT - BASE) of checkpoint directories, as a Markdown table: over all
weights, and per kind of tensor (embeddings, each projection, norms).

    delta_cosine.py BASE DOMAIN INSTRUCT [INSTRUCT ...] > cosine.md
    delta_cosine.py --json BASE DOMAIN INSTRUCT [INSTRUCT ...]

--json prints the same rows as one JSON object instead: for each row (the
first "all weights") the cosines with each instruct vector, |d| and |iN|.

A directory is a Hugging Face checkpoint (model*.safetensors, float32,
bfloat16 or float16). Only numpy is needed: the safetensors header is read
directly (8-byte little-endian length, JSON, raw little-endian data).
With several instruct models the table also gives the cosine between the
first two instruction vectors (how alike two seeds' vectors are).
"""
import json
import re
import struct
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def load(directory):
    files = sorted(Path(directory).glob("model*.safetensors"))
    if not files:
        sys.exit(f"error: no model*.safetensors in {directory}")
    tensors = {}
    for f in files:
        data = f.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        body = memoryview(data)[8 + n:]
        for name, info in header.items():
            if name == "__metadata__":
                continue
            lo, hi = info["data_offsets"]
            raw = body[lo:hi]
            dt = info["dtype"]
            if dt == "F32":
                a = np.frombuffer(raw, dtype="<f4")
            elif dt == "F16":
                a = np.frombuffer(raw, dtype="<f2")
            elif dt == "BF16":
                a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                sys.exit(f"error: {f}: tensor {name} has dtype {dt} (F32, F16, BF16 only)")
            tensors[name] = a.astype(np.float64)
    return tensors


def kind(name):
    """model.layers.3.self_attn.q_proj.weight -> q_proj; others by name."""
    m = re.match(r"model\.layers\.\d+\.(?:[a-z_]+\.)?([a-z_]+)\.(weight|bias)$", name)
    return f"{m.group(1)}.{m.group(2)}" if m else name


def main(argv):
    as_json = "--json" in argv[1:]
    argv = [a for a in argv if a != "--json"]
    if len(argv) < 4:
        sys.exit(__doc__)
    base, domain = load(argv[1]), load(argv[2])
    instructs = [load(p) for p in argv[3:]]
    for label, model in [("domain", domain)] + [(f"instruct {i + 1}", m) for i, m in enumerate(instructs)]:
        if sorted(model) != sorted(base) or any(model[k].shape != base[k].shape for k in base):
            sys.exit(f"error: the {label} model's tensors differ from the base's in names or shapes")
    names = sorted(base)
    d = {k: domain[k] - base[k] for k in names}
    vs = [{k: m[k] - base[k] for k in names} for m in instructs]

    def cos_over(keys, a, b):
        ab = sum(float(a[k] @ b[k]) for k in keys)
        aa = sum(float(a[k] @ a[k]) for k in keys)
        bb = sum(float(b[k] @ b[k]) for k in keys)
        return ab / (aa * bb) ** 0.5 if aa > 0 and bb > 0 else float("nan"), aa ** 0.5, bb ** 0.5

    groups = defaultdict(list)
    for k in names:
        groups[kind(k)].append(k)
    rows = [("all weights", names)] + sorted(groups.items())
    if as_json:
        out = {}
        for label, keys in rows:
            cells = [cos_over(keys, d, v) for v in vs]
            out[label] = {"cos": [c[0] for c in cells], "norm_d": cells[0][1], "norm_i": [c[2] for c in cells]}
        print(json.dumps(out, indent=1))
        return
    head = "| tensors | " + " | ".join(f"cos(d, i{j + 1})" for j in range(len(vs))) + " | \\|d\\| | \\|i1\\| |"
    if len(vs) > 1:
        head += " cos(i1, i2) |"
    print(head)
    print("|" + "---|" * (1 + len(vs) + 2 + (len(vs) > 1)))
    for label, keys in rows:
        cells = [cos_over(keys, d, v) for v in vs]
        line = f"| {label} | " + " | ".join(f"{c[0]:.3f}" for c in cells)
        line += f" | {cells[0][1]:.3f} | {cells[0][2]:.3f} |"
        if len(vs) > 1:
            line += f" {cos_over(keys, vs[0], vs[1])[0]:.3f} |"
        print(line)
    print()
    print("d = DOMAIN - BASE, iN = INSTRUCT N - BASE; norms are Euclidean over the tensors of the row.")


if __name__ == "__main__":
    main(sys.argv)
