#!/usr/bin/env bash
# finmoe's one entry point on a fresh Debian 12 machine:
#   ./finmoe.sh demo    install what is missing, build, run the headline pipeline
#   ./finmoe.sh test    install what is missing, build, run the whole test suite
#   ./finmoe.sh tour    install what is missing, build, a one-minute tour of the inference commands
#   ./finmoe.sh build   install + build only (binary: build/finmoe)
#   ./finmoe.sh ARGS... any other arguments run the built `finmoe ARGS...`
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=${FINMOE_BUILD_DIR:-$ROOT/build}
VENV=$ROOT/.venv
JOBS=${FINMOE_JOBS:-$(nproc)}

APT_PACKAGES=(build-essential cmake ninja-build ccache pkg-config git python3 python3-venv
  libtorch-dev libopenblas0-pthread libopenblas0-openmp nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev
  libgtest-dev libgmock-dev libbenchmark-dev libcpp-httplib-dev libyaml-cpp-dev zlib1g-dev
  libgloo-dev)
# Reference implementations the tests compare against (small; the live
# transformers+torch comparison is opt-in: FINMOE_LIVE_HF=1).
PIP_PACKAGES=(numpy safetensors tokenizers openai)

log() { printf '\033[1m[finmoe]\033[0m %s\n' "$*" >&2; }

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
    "$VENV/bin/pip" install -q --disable-pip-version-check "${want[@]}"
  fi
}

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
  log "building with $JOBS jobs"
  cmake --build "$BUILD" -j "$JOBS"
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

cmd=${1:-demo}
case "$cmd" in
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
  demo)
    shift || true
    build
    exec "$BUILD/finmoe" demo "$@" ;;
  tour)
    shift || true
    build
    exec "$ROOT/scripts/tour.sh" "$BUILD/finmoe" "$@" ;;
  *)
    [ -x "$BUILD/finmoe" ] || build
    exec "$BUILD/finmoe" "$@" ;;
esac
