#!/usr/bin/env bash
# finmoe's one entry point on a fresh Debian 12 machine:
#   ./finmoe.sh demo    install what is missing, build, run the headline pipeline
#   ./finmoe.sh test    install what is missing, build, run the whole test suite
#   ./finmoe.sh tour    install what is missing, build, a one-minute tour of the inference commands
#   ./finmoe.sh build   install + build only (binary: build/finmoe)
#   ./finmoe.sh test-asan [CTEST ARGS]  the tests built with ASan+UBSan (build-asan/)
#   ./finmoe.sh fuzz [SECONDS]          each libFuzzer target for SECONDS (default 120; clang-16, build-fuzz/)
#   ./finmoe.sh ARGS... any other arguments run the built `finmoe ARGS...`
#   ./finmoe.sh help    this list (no command prints it too, with exit code 2)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=${FINMOE_BUILD_DIR:-$ROOT/build}
VENV=$ROOT/.venv
# Build jobs: the cores, but at most one per 2 GiB of available memory (a
# translation unit with the torch headers peaks near 1.5 GiB).
default_jobs() {
  local cores mem_kb
  cores=$(nproc)
  mem_kb=$(awk '/MemAvailable/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)
  local by_mem=$((mem_kb / 2097152))
  if ((by_mem >= 1 && by_mem < cores)); then cores=$by_mem; fi
  echo "$cores"
}
JOBS=${FINMOE_JOBS:-$(default_jobs)}

APT_PACKAGES=(build-essential cmake ninja-build ccache pkg-config git python3 python3-venv
  libtorch-dev libopenblas0-pthread libopenblas0-openmp nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcpp-httplib-dev libyaml-cpp-dev zlib1g-dev
  libgloo-dev)
# Reference implementations the tests compare against (small; the live
# transformers+torch comparison is opt-in: FINMOE_LIVE_HF=1).
PIP_PACKAGES=(numpy safetensors tokenizers openai)

# bold only on a terminal: piped or logged output carries no escape codes
if [ -t 2 ]; then
  log() { printf '\033[1m[finmoe]\033[0m %s\n' "$*" >&2; }
else
  log() { printf '[finmoe] %s\n' "$*" >&2; }
fi

# The commands, from the comment at the top of this file.
usage() {
  echo "usage: ./finmoe.sh COMMAND [ARGS...]"
  sed -n '2,/^set -euo/s/^#   /  /p' "${BASH_SOURCE[0]}"
}

install_deps() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    local SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

setup_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  local want=("${PIP_PACKAGES[@]}")
  if [ "${FINMOE_LIVE_HF:-0}" = 1 ]; then want+=(torch transformers); fi
  if ! "$VENV/bin/python" -c "import $(IFS=,; echo "${want[*]}")" 2>/dev/null; then
    log "installing into $VENV: ${want[*]}"
    # without network the C++ tests still run; the Python-backed ones skip,
    # each naming the package it lacks
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check --timeout 30 "${want[@]}"; then
      log "warning: could not install ${want[*]} (no network?); tests that need them will be skipped"
    fi
  fi
}

# build [TARGET...]: everything, or just those targets (the demo needs only the CLI)
build() {
  install_deps
  export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
  # relative paths let clones in other directories share the cache; the
  # sloppiness settings let ccache cache translation units built with a PCH
  export CCACHE_BASEDIR=$ROOT
  export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  ccache -M 5G >/dev/null 2>&1 || true
  if [ ! -f "$BUILD/build.ninja" ]; then
    log "configuring $BUILD"
    cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release ${FINMOE_CMAKE_ARGS:-}
  fi
  if (($#)); then
    log "building $* with $JOBS jobs"
    cmake_build "$BUILD" --target "$@"
  else
    log "building with $JOBS jobs"
    cmake_build "$BUILD"
  fi
}

# cmake --build DIR [ARGS...] with a disk check first and, when a step fails,
# the free disk and memory printed and one retry on a single job (a compiler
# killed for memory by parallel jobs then succeeds; a real error fails again).
cmake_build() {
  local dir=$1
  shift
  mkdir -p "$dir"
  local free_kb
  free_kb=$(df -Pk "$dir" | awk 'NR==2 {print $4}')
  if [ -n "$free_kb" ] && ((free_kb < 6 * 1048576)); then
    log "warning: only $((free_kb / 1024)) MiB free on the disk of $dir; a full build needs about 6 GiB"
  fi
  if cmake --build "$dir" -j "$JOBS" "$@"; then return 0; fi
  log "build failed; free disk: $(df -Ph "$dir" | awk 'NR==2 {print $4}'), available memory: $(awk '/MemAvailable/ {printf "%d MiB", $2/1024}' /proc/meminfo)"
  if ((JOBS > 1)); then
    log "retrying the failed steps with 1 job"
    cmake --build "$dir" -j 1 "$@"
  else
    return 1
  fi
}

# A second build tree with its own CMake options: build_variant DIR CMAKE_ARGS... -- TARGETS...
build_variant() {
  local dir=$1
  shift
  local args=() targets=()
  while (($#)) && [ "$1" != -- ]; do args+=("$1"); shift; done
  shift || true
  targets=("$@")
  install_deps
  export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
  export CCACHE_BASEDIR=$ROOT
  export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  if [ ! -f "$dir/build.ninja" ]; then
    log "configuring $dir"
    cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFINMOE_BUILD_BENCH=OFF "${args[@]}"
  fi
  log "building ${targets[*]:-everything} in $dir with $JOBS jobs"
  if ((${#targets[@]})); then
    cmake_build "$dir" --target "${targets[@]}"
  else
    cmake_build "$dir"
  fi
}

# Seed inputs of each libFuzzer target from the test data (never written back).
fuzz_seeds() {
  local corpus=$1
  mkdir -p "$corpus"/{safetensors_header,config_json,tokenizer_json,train_yaml,chat_template}
  cp "$ROOT"/tests/data/core/fixture.safetensors "$corpus/safetensors_header/"
  cp "$ROOT"/tests/data/core/configs/*.json "$corpus/config_json/"
  local n=0
  for f in "$ROOT"/tests/data/hf/*/config.json; do cp "$f" "$corpus/config_json/hf-$((n++)).json"; done
  cp "$ROOT"/tests/data/tokenizer/byte_fallback/llama2_style/tokenizer.json "$corpus/tokenizer_json/llama2.json"
  cp "$ROOT"/tests/data/tokenizer/byte_fallback/metaspace_style/tokenizer.json "$corpus/tokenizer_json/metaspace.json"
  cp "$ROOT"/fuzz/train.yaml "$corpus/train_yaml/"
  cp "$ROOT"/tests/data/chat_templates/templates/*.jinja "$corpus/chat_template/"
}

# The kernel paths below this CPU's best (src/kernels/isa.h): avx512 (without
# BF16) when it has AVX-512 BF16, avx2 when it has AVX-512, and scalar.
lower_isas() {
  local flags
  flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
  has() { [[ " $flags " == *" $1 "* ]]; }
  if has avx512_bf16 && has avx512_vnni; then echo avx512; fi
  if has avx512f && has avx512bw && has avx512vl && has avx512dq && has avx2 && has fma; then echo avx2; fi
  echo scalar
}

if [ $# -eq 0 ]; then
  usage >&2
  log "no command given (the headline pipeline is ./finmoe.sh demo)"
  exit 2
fi
cmd=$1
case "$cmd" in
  help | -h | --help)
    usage ;;
  build)
    build ;;
  test)
    shift || true
    build
    setup_venv
    export FINMOE_PYTHON="$VENV/bin/python"
    cd "$BUILD"
    ctest --output-on-failure -j "$JOBS" "$@"
    # Without a test filter: the kernel and model tests again on the lower
    # kernel paths this CPU runs (FINMOE_ISA), so a CPU with another vector
    # width than this one cannot turn the suite red.
    if [ $# -eq 0 ]; then
      for isa in $(lower_isas); do
        labels='^(kernels|model)$'
        [ "$isa" = scalar ] && labels='^kernels$'
        log "tests labelled $labels again with FINMOE_ISA=$isa"
        FINMOE_ISA=$isa ctest --output-on-failure -j "$JOBS" -L "$labels"
      done
    fi ;;
  test-asan)
    # Every test built with AddressSanitizer + UndefinedBehaviorSanitizer; a
    # finding aborts the test. libtorch itself is not instrumented.
    shift || true
    ASAN_BUILD=${FINMOE_ASAN_BUILD_DIR:-$ROOT/build-asan}
    targets=()
    # FINMOE_ASAN_TARGETS="test_core test_tokenizer" builds just those
    if [ -n "${FINMOE_ASAN_TARGETS:-}" ]; then read -r -a targets <<<"$FINMOE_ASAN_TARGETS"; fi
    build_variant "$ASAN_BUILD" -DFINMOE_SANITIZE=address,undefined -- "${targets[@]}"
    setup_venv
    export FINMOE_PYTHON="$VENV/bin/python"
    # leaks: libtorch's and yaml-cpp's process-lifetime allocations are not findings
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    cd "$ASAN_BUILD"
    ctest --output-on-failure -j "$JOBS" "$@" ;;
  fuzz)
    # The libFuzzer targets of fuzz/ (ASan + UBSan), each for SECONDS; a
    # finding leaves its input in build-fuzz/findings/ and fails the run.
    shift || true
    seconds=${1:-120}
    FUZZ_BUILD=${FINMOE_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
    # clang 16 (Debian 12: clang-16, libclang-rt-16-dev for libFuzzer): clang 14
    # with libstdc++ 12 cannot compile the torch headers fuzz_train_yaml needs in C++20
    APT_PACKAGES+=(clang-16 libclang-rt-16-dev)
    CC=${CC:-clang-16} CXX=${CXX:-clang++-16} build_variant "$FUZZ_BUILD" -DFINMOE_FUZZ=ON -DFINMOE_BUILD_TESTS=OFF -- \
      fuzz_safetensors_header fuzz_config_json fuzz_tokenizer_json fuzz_train_yaml fuzz_chat_template
    fuzz_seeds "$FUZZ_BUILD/seeds"
    mkdir -p "$FUZZ_BUILD/findings"
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
    status=0
    for t in safetensors_header config_json tokenizer_json train_yaml chat_template; do
      mkdir -p "$FUZZ_BUILD/corpus/$t"
      log "fuzz_$t for ${seconds}s"
      "$FUZZ_BUILD/fuzz_$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
        -dict="$ROOT/fuzz/json.dict" -print_final_stats=1 \
        -artifact_prefix="$FUZZ_BUILD/findings/$t-" "$FUZZ_BUILD/corpus/$t" "$FUZZ_BUILD/seeds/$t" \
        2>&1 | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY|INFO: Running with)" \
        || true
      if ls "$FUZZ_BUILD/findings/$t-"* >/dev/null 2>&1; then status=1; fi
    done
    exit $status ;;
  demo)
    shift || true
    build finmoe_cli
    exec "$BUILD/finmoe" demo "$@" ;;
  tour)
    shift || true
    build finmoe_cli
    exec "$ROOT/scripts/tour.sh" "$BUILD/finmoe" "$@" ;;
  *)
    [ -x "$BUILD/finmoe" ] || build finmoe_cli
    exec "$BUILD/finmoe" "$@" ;;
esac
