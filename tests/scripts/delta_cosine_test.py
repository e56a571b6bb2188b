#!/usr/bin/env python3
"""scripts/delta_cosine.py against the norm identity, on tiny random models.

B, D, I are three seeded `finmoe init` models of one shape; S = D + (I - B)
is written by `finmoe merge --chat-vector` (B + d + i). The script's cosine
of d and i must equal (|d + i|^2 - |d|^2 - |i|^2) / (2 |d| |i|), with
|d + i| the script's norm of S - B: the cosine from the dot product against
one from three norms, one of them of a model finmoe made. Also: cos(d, d) = 1
and a model's vector against its negation (B - d, by task arithmetic) is -1.

    delta_cosine_test.py FINMOE TESTDATA      (exit 77 = skipped: no numpy)
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy  # noqa: F401  (the script needs it)
except ImportError:
    print("skipped: numpy is not installed in", sys.executable)
    sys.exit(77)

finmoe, testdata = sys.argv[1], sys.argv[2]
script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "delta_cosine.py")


def sh(*args):
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAILED: {' '.join(args)}\n{r.stdout}{r.stderr}")
    return r.stdout


def cos_json(*models):
    return json.loads(sh(sys.executable, script, "--json", *models))


def check(cond, what):
    if not cond:
        sys.exit("FAILED: " + what)


with tempfile.TemporaryDirectory() as tmp:
    m = {}
    for name, seed in [("B", 1), ("D", 2), ("I", 3)]:
        m[name] = os.path.join(tmp, name)
        sh(finmoe, "init", m[name], "--preset", "tiny", "--arch", "qwen2", "--dtype", "float32",
           "--seed", str(seed), "--tokenizer", os.path.join(testdata, "tokenizer", "qwen3"))
    m["S"] = os.path.join(tmp, "S")
    sh(finmoe, "merge", "--chat-vector", "--base", m["B"], "--domain", m["D"], "--instruct", m["I"], m["S"])
    recipe = os.path.join(tmp, "neg.yaml")
    with open(recipe, "w") as f:
        f.write(f"merge_method: task_arithmetic\nbase_model: {m['B']}\nmodels:\n"
                f"  - model: {m['D']}\n    parameters: {{weight: -1.0}}\n")
    m["N"] = os.path.join(tmp, "N")
    sh(finmoe, "merge", recipe, m["N"])

    di = cos_json(m["B"], m["D"], m["I"], m["D"], m["N"])
    ss = cos_json(m["B"], m["S"], m["S"])
    for row, v in di.items():
        c, nd, ni = v["cos"][0], v["norm_d"], v["norm_i"][0]
        ns = ss[row]["norm_d"]
        if nd == 0 or ni == 0:
            continue
        expect = (ns * ns - nd * nd - ni * ni) / (2 * nd * ni)
        check(abs(c - expect) < 1e-4, f"{row}: cos(d, i) {c} vs {expect} from the norms")
        check(abs(v["cos"][1] - 1) < 1e-9, f"{row}: cos(d, d) = {v['cos'][1]}")
        check(abs(v["cos"][2] + 1) < 1e-6, f"{row}: cos(d, -d) = {v['cos'][2]}")
    # the Markdown table: one row per kind and the overall row first
    table = sh(sys.executable, script, m["B"], m["D"], m["I"]).splitlines()
    check(table[2].startswith("| all weights | "), "the first row is 'all weights':\n" + "\n".join(table))
    check(len([l for l in table if l.startswith("| ")]) == len(di) + 1, "one table row per JSON row")
print(f"ok: {len(di)} rows; overall cos(d, i) = {di['all weights']['cos'][0]:.4f}")
