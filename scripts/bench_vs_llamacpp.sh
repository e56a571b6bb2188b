#!/usr/bin/env bash
# finmoe side by side with llama.cpp on the same weights, same machine, same
# minutes: rounds of one finmoe run and one llama.cpp run, alternating, so a
# drift in the VM's memory bandwidth hits both.
#
#   scripts/bench_vs_llamacpp.sh decode MODEL_DIR GGUF [ROUNDS]
#       finmoe bench decode (prefill 128, decode batch 1) vs llama-bench (pp128, tg32)
#   scripts/bench_vs_llamacpp.sh serve MODEL_DIR GGUF [ROUNDS]
#       finmoe serve vs llama-server, both driven by `finmoe bench serve --url`
#       (the same client, prompts and settings): 1 and 16 clients
#
# MODEL_DIR is a finmoe/HF directory, GGUF the same weights converted with
# llama.cpp's convert_hf_to_gguf.py (and llama-quantize for Q8_0).
# Env: FINMOE (default build/finmoe), LLAMA_BIN (folder with llama-bench and
# llama-server), THREADS (default: nproc), FINMOE_ISA (finmoe's kernel path;
# build llama.cpp with the matching GGML_AVX* options for a fair pair),
# PREFILL (128), STEPS (32), SERVE_ARGS (extra `bench serve` flags).
# Decode starts from a one-token context, as llama-bench's tg test starts
# from an empty cache.
# Before the rounds both tools' weight files are evicted from the page cache
# and read back in one sequential pass, so both are cached in large folios
# and mapped with 2 MiB entries (a file just written is mapped with 4 KiB
# ones, which costs decode speed; docs/PERFORMANCE.md). SAME_PAGE_STATE=0
# leaves the page cache as it is.
# Prints one line per round and the medians with finmoe/llama.cpp ratios; the
# raw JSON of every run lands in ${OUT:-bench-vs-llamacpp}/.
set -euo pipefail
mode="$1" dir="$2" gguf="$3" rounds="${4:-3}"
FINMOE="${FINMOE:-build/finmoe}"
LLAMA_BIN="${LLAMA_BIN:?set LLAMA_BIN to the folder holding llama-bench and llama-server}"
THREADS="${THREADS:-$(nproc)}"
PREFILL="${PREFILL:-128}"
STEPS="${STEPS:-32}"
OUT="${OUT:-bench-vs-llamacpp}"
mkdir -p "$OUT"
echo "finmoe kernels: ${FINMOE_ISA:-native}, llama.cpp: $LLAMA_BIN, $THREADS threads" >&2

wait_http() {  # url: until /health answers 200 (llama-server says 503 while it loads the model)
  for _ in $(seq 1 300); do
    curl -sf "$1/health" >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "no answer from $1" >&2
  return 1
}

# shellcheck source=scripts/same_page_state.sh
source "$(dirname "$0")/same_page_state.sh"
shopt -s nullglob
weights=("$dir"/*.safetensors)
shopt -u nullglob
[ ${#weights[@]} -gt 0 ] || { echo "no *.safetensors in $dir" >&2; exit 2; }
same_page_state "${weights[@]}" "$gguf"

case "$mode" in
  decode)
    for r in $(seq 1 "$rounds"); do
      FINMOE_NUM_THREADS="$THREADS" "$FINMOE" bench decode "$dir" --prefill "$PREFILL" --batch 1 \
        --context 1 --steps "$STEPS" --repeats 1 --json > "$OUT/finmoe-decode-$r.json"
      "$LLAMA_BIN/llama-bench" -m "$gguf" -t "$THREADS" -p "$PREFILL" -n "$STEPS" -r 1 -o json \
        > "$OUT/llama-decode-$r.json" 2>/dev/null
    done
    python3 - "$OUT" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
rows = []
for r in range(1, rounds + 1):
    f = json.load(open(f"{out}/finmoe-decode-{r}.json"))
    l = json.load(open(f"{out}/llama-decode-{r}.json"))
    lpp = next(x["avg_ts"] for x in l if x["n_prompt"] > 0 and x["n_gen"] == 0)
    ltg = next(x["avg_ts"] for x in l if x["n_gen"] > 0 and x["n_prompt"] == 0)
    fdec = next(x for x in f["decode"] if x["batch"] == 1)
    rows.append((f["prefill_tokens_per_s"], lpp, fdec["tokens_per_s"], ltg,
                 fdec.get("ratio_to_floor", float("nan"))))
    print(f"round {r}: prefill finmoe {rows[-1][0]:.1f} llama.cpp {lpp:.1f} tok/s | "
          f"decode b1 finmoe {rows[-1][2]:.1f} ({100 * rows[-1][4]:.0f}% of floor) llama.cpp {ltg:.1f} tok/s")
med = [statistics.median(c) for c in zip(*rows)]
print(f"median: prefill {med[0]:.1f} vs {med[1]:.1f} tok/s ({med[0] / med[1]:.2f}x) | "
      f"decode b1 {med[2]:.1f} vs {med[3]:.1f} tok/s ({med[2] / med[3]:.2f}x), "
      f"finmoe at {100 * med[4]:.0f}% of its floor")
PY
    ;;
  serve)
    # name port command...: start a server, load it with the shared client, stop it
    serve_round() {
      local name=$1 port=$2 pid
      shift 2
      # a server left from an earlier run on the port would answer instead
      if curl -s -o /dev/null "http://127.0.0.1:$port/health"; then
        echo "port $port is already served by another process" >&2
        exit 2
      fi
      "$@" --port "$port" > "$OUT/$name-serve-$r.log" 2>&1 &
      pid=$!
      server_pid=$pid  # stopped on exit too, when the client fails
      wait_http "http://127.0.0.1:$port"
      # shellcheck disable=SC2086
      "$FINMOE" bench serve --url "http://127.0.0.1:$port" --compare --levels 1,16 --input-len 70 \
        --output-len 64 --num-prompts 32 --out "$OUT/$name-serve-$r.json" ${SERVE_ARGS:-} \
        > "$OUT/$name-serve-$r.txt"
      kill "$pid"
      wait "$pid" 2>/dev/null || true
      server_pid=""
    }
    server_pid=""
    trap '[ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true' EXIT
    for r in $(seq 1 "$rounds"); do
      serve_round finmoe 18231 env FINMOE_NUM_THREADS="$THREADS" "$FINMOE" serve "$dir" \
        --kv-cache-memory 1GiB
      serve_round llama 18232 "$LLAMA_BIN/llama-server" -m "$gguf" -t "$THREADS" -np 16 -c 16384
    done
    python3 - "$OUT" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def tput(name, r):
    runs = json.load(open(f"{out}/{name}-serve-{r}.json"))["runs"]
    return {x["concurrency"]: x for x in runs}
rows = []
for r in range(1, rounds + 1):
    f, l = tput("finmoe", r), tput("llama", r)
    row = (f[1]["output_throughput"], l[1]["output_throughput"], f[16]["output_throughput"],
           l[16]["output_throughput"], f[16]["ttft_ms"]["p50"], l[16]["ttft_ms"]["p50"])
    rows.append(row)
    print(f"round {r}: 1 client finmoe {row[0]:.1f} llama-server {row[1]:.1f} out tok/s | "
          f"16 clients finmoe {row[2]:.1f} llama-server {row[3]:.1f} out tok/s "
          f"(TTFT p50 {row[4]:.0f} vs {row[5]:.0f} ms)")
m = [statistics.median(c) for c in zip(*rows)]
print(f"median: 1 client {m[0]:.1f} vs {m[1]:.1f} ({m[0] / m[1]:.2f}x) | 16 clients {m[2]:.1f} vs "
      f"{m[3]:.1f} out tok/s ({m[2] / m[3]:.2f}x), TTFT p50 {m[4]:.0f} vs {m[5]:.0f} ms")
PY
    ;;
  *)
    echo "usage: $0 decode|serve MODEL_DIR GGUF [ROUNDS]" >&2
    exit 2 ;;
esac
