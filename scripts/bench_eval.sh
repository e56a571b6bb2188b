#!/usr/bin/env bash
# `finmoe eval` against lm-evaluation-harness (PyPI `lm_eval`, its Hugging
# Face backend on torch) on the same task YAML and the same model, on the
# CPU, alternating rounds in one run: wall time of each and the ratio, plus
# both accuracies (which must agree: the same requests).
#
#   scripts/bench_eval.sh MODEL_DIR WORK_DIR [ROUNDS] [DOCS]
#
# The task: DOCS (default 200) four-choice questions written here (seeded),
# 2-shot from the same split, acc and acc_norm, in lm-eval's YAML format.
# Env: FINMOE (default build/finmoe), LM_EVAL_PYTHON (a python with lm_eval,
# torch and transformers), DTYPE (bfloat16 | float32, default: bfloat16),
# BATCH (default 16).
set -euo pipefail
MODEL="$(realpath "$1")"
WORK="$2"
ROUNDS="${3:-2}"
DOCS="${4:-200}"
FINMOE="${FINMOE:-build/finmoe}"
PY="${LM_EVAL_PYTHON:?set LM_EVAL_PYTHON to a python with lm_eval, torch and transformers}"
DTYPE="${DTYPE:-bfloat16}"
BATCH="${BATCH:-16}"
mkdir -p "$WORK/task"
WORK="$(realpath "$WORK")"
python3 - "$WORK/task" "$DOCS" <<'PY'
import json, random, sys
out, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
nouns = ["bond", "loan", "equity", "dividend", "coupon", "margin", "deposit", "mortgage", "option", "swap",
         "ledger", "invoice", "account", "asset", "liability", "reserve", "premium", "yield", "spread", "index"]
verbs = ["raises", "lowers", "hedges", "funds", "repays", "prices", "books", "settles", "accrues", "defers"]
with open(f"{out}/bench_mc.jsonl", "w") as f:
    for i in range(n):
        q = f"Which term {r.choice(verbs)} the {r.choice(nouns)} of a {r.choice(nouns)} when the {r.choice(nouns)} {r.choice(verbs)}?"
        choices = [" ".join(r.choice(nouns) for _ in range(r.randint(1, 4))) for _ in range(4)]
        f.write(json.dumps({"question": q, "choices": choices, "answer": r.randrange(4)}) + "\n")
with open(f"{out}/bench_mc.yaml", "w") as f:
    f.write("""task: bench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: %s/bench_mc.jsonl
test_split: test
fewshot_split: test
fewshot_config:
  sampler: first_n
num_fewshot: 2
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""" % out)
PY
"$PY" - "$WORK" "$ROUNDS" "$FINMOE" "$MODEL" "$DTYPE" "$BATCH" <<'PY'
import glob, json, os, shutil, statistics, subprocess, sys, time
work, rounds, finmoe, model, dtype, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
task = f"{work}/task/bench_mc.yaml"
threads = str(os.cpu_count())

def run(cmd, env=None):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return time.perf_counter() - t

def finmoe_acc(out):
    r = json.load(open(f"{out}/results.json"))
    m = r["results"]["bench_mc"]
    return m.get("acc,none", m.get("acc")), m.get("acc_norm,none", m.get("acc_norm"))

def lm_eval_acc(out):
    f = sorted(glob.glob(f"{out}/**/results_*.json", recursive=True))[-1]
    m = json.load(open(f))["results"]["bench_mc"]
    return m["acc,none"], m["acc_norm,none"]

rows = []
env = dict(os.environ, OMP_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false")
for r in range(1, rounds + 1):
    fo, lo = f"{work}/finmoe-out", f"{work}/lm-eval-out"
    shutil.rmtree(fo, ignore_errors=True)
    shutil.rmtree(lo, ignore_errors=True)
    f = run([finmoe, "eval", model, "--tasks", task, "--dtype", dtype, "--batch-size", batch, "--out", fo])
    l = run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
             f"pretrained={model},dtype={dtype}", "--tasks", task, "--device", "cpu",
             "--batch_size", batch, "--output_path", lo], env)
    rows.append({"round": r, "finmoe_s": f, "lm_eval_s": l, "finmoe_acc": finmoe_acc(fo), "lm_eval_acc": lm_eval_acc(lo)})
    x = rows[-1]
    print(f"round {r}: finmoe {f:.1f} s (acc {x['finmoe_acc'][0]:.3f}, acc_norm {x['finmoe_acc'][1]:.3f}) | "
          f"lm-eval {l:.1f} s (acc {x['lm_eval_acc'][0]:.3f}, acc_norm {x['lm_eval_acc'][1]:.3f}) | "
          f"finmoe {l / f:.2f}x faster", flush=True)
fm = statistics.median(x["finmoe_s"] for x in rows)
lm = statistics.median(x["lm_eval_s"] for x in rows)
print(f"median: finmoe {fm:.1f} s, lm-eval {lm:.1f} s: finmoe {lm / fm:.2f}x faster")
json.dump({"model": model, "dtype": dtype, "batch": batch, "rounds": rows}, open(f"{work}/results.json", "w"), indent=2)
PY
