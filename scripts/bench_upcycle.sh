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
# `bench decode` flags, default "--steps 32 --repeats 2").
set -euo pipefail
DENSE="$1"
WORK="$2"
shift 2
PRESETS=("$@")
[ ${#PRESETS[@]} -eq 0 ] && PRESETS=(split finermoe nvshard drop dense-moe copy)
FINMOE="${FINMOE:-build/finmoe}"
BENCH_ARGS="${BENCH_ARGS:---steps 32 --repeats 2}"
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
python3 - "$WORK" dense "${PRESETS[@]}" <<'PY'
import json, sys
work, names = sys.argv[1], sys.argv[2:]
rows = []
for n in names:
    info = json.load(open(f"{work}/{n}.info.json"))
    b = json.load(open(f"{work}/{n}.bench.json"))
    d = {x["batch"]: x["tokens_per_s"] for x in b["decode"]}
    rows.append((n, info["total_params"], info.get("active_params", info["total_params"]),
                 b["prefill_tokens_per_s"], d))
base = rows[0]
print("| model | #P | #AP | prefill tok/s | TTFT@prefill (s) | decode b1 | b4 | b16 |")
print("|---|---|---|---|---|---|---|---|")
for n, P, AP, pre, d in rows:
    r = lambda v, w: f"{v:.1f} ({v / w:.2f}x)"
    ttft = 1.0 / pre
    print(f"| {n} | {P / 1e9:.3f}B | {AP / 1e9:.3f}B | {r(pre, base[3])} | "
          f"{ttft * json.load(open(f'{work}/{n}.bench.json')).get('prefill_tokens', 512):.2f} "
          f"({ttft * base[3]:.2f}x) | {r(d[1], base[4][1])} | {r(d[4], base[4][4])} | "
          f"{r(d[16], base[4][16])} |")
PY
