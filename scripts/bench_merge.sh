#!/usr/bin/env bash
# `finmoe merge` against mergekit on the same recipe and the same three
# models (a base and two fine-tunes of Qwen2-0.5B shape, bf16), alternating
# rounds in one run, on the CPU; and each as GB/s of input read against the
# machine's memory read bandwidth measured in the same run (the inputs sit in
# the page cache after the first round, so memory, not disk, is the bound).
#
#   scripts/bench_merge.sh WORK_DIR [ROUNDS] [METHOD]
#
# METHOD: task_arithmetic (default) | ties | linear. Env: FINMOE (default
# build/finmoe), MERGEKIT (mergekit-yaml; default: the one on PATH),
# TOKENIZER (for `finmoe init`, default tests/data/tokenizer/qwen3).
# Prints one line per round and the medians; JSON in WORK_DIR/results.json.
set -euo pipefail
WORK="$1"
ROUNDS="${2:-3}"
METHOD="${3:-task_arithmetic}"
FINMOE="${FINMOE:-build/finmoe}"
MERGEKIT="${MERGEKIT:-mergekit-yaml}"
TOKENIZER="${TOKENIZER:-tests/data/tokenizer/qwen3}"
mkdir -p "$WORK"
for s in 1 2 3; do
  [ -f "$WORK/m$s/model.safetensors" ] ||
    "$FINMOE" init "$WORK/m$s" --preset qwen2-0.5b --seed "$s" --tokenizer "$TOKENIZER" >/dev/null
done
case "$METHOD" in
  linear) params="      weight: 0.5" ;;
  ties) params=$'      weight: 0.5\n      density: 0.5' ;;
  *) params="      weight: 0.5" ;;
esac
cat > "$WORK/recipe.yaml" <<EOF
merge_method: $METHOD
$( [ "$METHOD" = linear ] || echo "base_model: $WORK/m1" )
models:
$( [ "$METHOD" = linear ] && printf '  - model: %s/m1\n    parameters:\n%s\n' "$WORK" "$params" )
  - model: $WORK/m2
    parameters:
$params
  - model: $WORK/m3
    parameters:
$params
dtype: bfloat16
EOF
input_bytes=$(du -cb "$WORK"/m{1,2,3}/model.safetensors | tail -1 | cut -f1)
# warm the page cache once
cat "$WORK"/m{1,2,3}/model.safetensors >/dev/null
python3 - "$WORK" "$ROUNDS" "$FINMOE" "$MERGEKIT" "$input_bytes" <<'PY'
import json, os, shutil, statistics, subprocess, sys, time
work, rounds, finmoe, mergekit, nbytes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])

def probe():
    # the same 2-thread read probe `finmoe bench decode` prints
    out = subprocess.run([finmoe, "bench", "decode", f"{work}/m1", "--prefill", "1", "--batch", "1",
                          "--steps", "1", "--repeats", "1", "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["bandwidth_gb_s"]

def timed(cmd, out):
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

rows = []
for r in range(1, rounds + 1):
    bw = probe()
    f = timed([finmoe, "merge", f"{work}/recipe.yaml", f"{work}/out-finmoe"], f"{work}/out-finmoe")
    m = timed([mergekit, f"{work}/recipe.yaml", f"{work}/out-mergekit", "--lazy-unpickle"], f"{work}/out-mergekit")
    rows.append({"round": r, "bandwidth_gb_s": bw, "finmoe_s": f, "mergekit_s": m,
                 "finmoe_gb_s": nbytes / f / 1e9, "mergekit_gb_s": nbytes / m / 1e9})
    x = rows[-1]
    print(f"round {r}: finmoe {f:.1f} s ({x['finmoe_gb_s']:.2f} GB/s, {x['finmoe_gb_s'] / bw:.0%} of {bw:.1f} GB/s) "
          f"| mergekit {m:.1f} s ({x['mergekit_gb_s']:.2f} GB/s) | mergekit/finmoe time {m / f:.1f}x", flush=True)
med = {k: statistics.median(x[k] for x in rows) for k in rows[0] if k != "round"}
print(f"median: finmoe {med['finmoe_s']:.1f} s = {med['finmoe_gb_s']:.2f} GB/s of input "
      f"({med['finmoe_gb_s'] / med['bandwidth_gb_s']:.0%} of the read bandwidth {med['bandwidth_gb_s']:.1f} GB/s) | "
      f"mergekit {med['mergekit_s']:.1f} s = {med['mergekit_gb_s']:.2f} GB/s | finmoe {med['mergekit_s'] / med['finmoe_s']:.1f}x faster")
json.dump({"input_bytes": nbytes, "rounds": rows, "median": med}, open(f"{work}/results.json", "w"), indent=2)
PY
