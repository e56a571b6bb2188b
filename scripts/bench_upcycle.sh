#!/usr/bin/env bash
# Upcycles one dense checkpoint with each preset and runs `finmoe bench decode`
# on the dense model and every result in one run (FineRMoE Table 6 at our
# scale): #P, #AP, prefill tokens/s and TTFT at the prefill length, decode
# tokens/s at batch 1/4/16, each also as a ratio to the dense model.
#
#   scripts/bench_upcycle.sh DENSE_DIR WORK_DIR [PRESET...]
#
# Every model's weight files are evicted and read back in one pass before its
# benchmark (scripts/same_page_state.sh), so the dense model and a freshly
# written upcycled one are mapped alike; SAME_PAGE_STATE=0 skips that.
#
# Env: FINMOE (the finmoe binary, default build/finmoe), BENCH_ARGS (extra
# `bench decode` flags, default "--steps 32 --repeats 2"), ROUNDS (default 1:
# with N > 1 the dense model and every upcycled one are benchmarked again in
# N - 1 more rounds, alternating, and each ratio is the median of the
# per-round ratios, each against the dense run of its own round: the
# machine's speed drifts by 10% or more between runs a minute apart).
set -euo pipefail
DENSE="$1"
WORK="$2"
shift 2
PRESETS=("$@")
[ ${#PRESETS[@]} -eq 0 ] && PRESETS=(split finermoe nvshard drop dense-moe copy)
FINMOE="${FINMOE:-build/finmoe}"
BENCH_ARGS="${BENCH_ARGS:---steps 32 --repeats 2}"
ROUNDS="${ROUNDS:-1}"
# shellcheck source=scripts/same_page_state.sh
source "$(dirname "$0")/same_page_state.sh"
mkdir -p "$WORK"
"$FINMOE" info "$DENSE" --json > "$WORK/dense.info.json"
same_page_state "$DENSE"/*.safetensors
# shellcheck disable=SC2086
"$FINMOE" bench decode "$DENSE" $BENCH_ARGS --json > "$WORK/dense.bench.json"
for p in "${PRESETS[@]}"; do
  rm -rf "${WORK:?}/$p"
  "$FINMOE" upcycle "$DENSE" "$WORK/$p" --preset "$p" > "$WORK/$p.upcycle.log" 2>&1
  "$FINMOE" info "$WORK/$p" --json > "$WORK/$p.info.json"
  same_page_state "$WORK/$p"/*.safetensors
  # shellcheck disable=SC2086
  "$FINMOE" bench decode "$WORK/$p" $BENCH_ARGS --json > "$WORK/$p.bench.json"
  [ "$p" = copy ] && rm -rf "${WORK:?}/$p"  # ~20x the dense size
done
# more rounds, alternating: the dense model, then each upcycled one
for ((r = 2; r <= ROUNDS; r++)); do
  for n in dense "${PRESETS[@]}"; do
    [ "$n" = copy ] && continue  # removed after its first run
    dir="$WORK/$n"
    [ "$n" = dense ] && dir="$DENSE"
    same_page_state "$dir"/*.safetensors
    # shellcheck disable=SC2086
    "$FINMOE" bench decode "$dir" $BENCH_ARGS --json > "$WORK/$n.bench.$r.json"
  done
done
python3 - "$WORK" "$ROUNDS" dense "${PRESETS[@]}" <<'PY'
import json, os, statistics, sys
work, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def bench(n, r):  # {"prefill": tok/s, batch: tok/s, ...} of round r, or None
    path = f"{work}/{n}.bench.json" if r == 1 else f"{work}/{n}.bench.{r}.json"
    if not os.path.exists(path):
        return None
    b = json.load(open(path))
    d = {x["batch"]: x["tokens_per_s"] for x in b["decode"]}
    d["bytes16"] = next((x.get("weight_bytes_per_step") for x in b["decode"] if x["batch"] == 16), None)
    d["prefill"] = b["prefill_tokens_per_s"]
    d["prefill_tokens"] = b.get("prefill_tokens", 512)
    return d

print("| model | #P | #AP | prefill tok/s | TTFT@prefill (s) | decode b1 | b4 | b16 | weights a b16 step (MB) |")
print("|---|---|---|---|---|---|---|---|---|")
for n in names:
    info = json.load(open(f"{work}/{n}.info.json"))
    P, AP = info["total_params"], info.get("active_params", info["total_params"])
    runs = [(bench(n, r), bench("dense", r)) for r in range(1, rounds + 1)]
    runs = [(m, d) for m, d in runs if m and d]
    def cell(key):
        v = statistics.median(m[key] for m, _ in runs)
        ratio = statistics.median(m[key] / d[key] for m, d in runs)
        spread = (f" [{min(m[key] / d[key] for m, d in runs):.2f}-{max(m[key] / d[key] for m, d in runs):.2f}]"
                  if len(runs) > 1 else "")
        return f"{v:.1f} ({ratio:.2f}x{spread})"
    ttft = statistics.median(m["prefill_tokens"] / m["prefill"] for m, _ in runs)
    ttft_ratio = statistics.median(d["prefill"] / m["prefill"] for m, d in runs)
    # the weights a batch-16 step reads, and the b16 ratio they allow at the
    # dense model's efficiency (dense bytes / these bytes)
    b16 = [(m["bytes16"], d["bytes16"]) for m, d in runs if m["bytes16"] and d["bytes16"]]
    bytes16 = (f"{statistics.median(m for m, _ in b16) / 1e6:.0f} "
               f"({statistics.median(d / m for m, d in b16):.2f}x at equal efficiency)" if b16 else "n/a")
    print(f"| {n} | {P / 1e9:.3f}B | {AP / 1e9:.3f}B | {cell('prefill')} | {ttft:.2f} ({ttft_ratio:.2f}x) | "
          f"{cell(1)} | {cell(4)} | {cell(16)} | {bytes16} |")
print("(weights a b16 step: what the products read, each expert some token chose once; "
      "the ratio is the b16 one if the model ran at the dense model's share of its floor)")
if rounds > 1:
    print(f"(medians over {len(runs)} rounds; the ratios are per round, against that round's dense "
          f"run, [min-max])")
PY
