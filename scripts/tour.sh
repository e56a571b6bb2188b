#!/usr/bin/env bash
# A one-minute tour of the inference commands (no model hub, no download):
# create a seeded Qwen2-architecture model with the Qwen tokenizer shipped in
# tests/data, inspect it, tokenize financial text, generate, and benchmark decode.
set -euo pipefail
FINMOE=${1:?usage: tour.sh path/to/finmoe [work dir]}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${2:-$ROOT/out/tour}
MODEL=$WORK/qwen2-small
mkdir -p "$WORK"
if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi

step "finmoe init: a seeded random Qwen2-architecture model"
"$FINMOE" init "$MODEL" --preset small --arch qwen2 --tokenizer "$ROOT/tests/data/tokenizer/qwen3" --seed 42

step "finmoe info"
"$FINMOE" info "$MODEL"

step "finmoe tokenize"
"$FINMOE" tokenize "$MODEL" --text "人民币贰万叁仟元整 = CNY 23,000.00; NPV at 10%: -4.96" | tail -n 4

step "finmoe generate (random weights: the text is noise, the numbers are real)"
"$FINMOE" generate "$MODEL" --chat -p "什么是资产负债表?" -n 32 --temperature 0.8 --top-p 0.95 --seed 7

step "finmoe bench decode"
"$FINMOE" bench decode "$MODEL" --prefill 256 --steps 16 | tee "$WORK/bench_decode.txt"
"$FINMOE" bench decode "$MODEL" --prefill 256 --steps 16 --json > "$WORK/bench_decode.json"
printf '\nresults in %s\n' "$WORK"
