#!/usr/bin/env bash
# Builds finmoe against the libtorch inside a Python PyTorch installation,
# e.g. a CUDA build of PyTorch (CMake detects CUDA from it):
#
#   scripts/build_with_python_torch.sh [BUILD_DIR]        (default build-torch)
#
# Environment:
#   PYTHON              the interpreter whose torch to use (default python3)
#   FINMOE_DEPS_PREFIX  a folder holding Debian packages' files unpacked with
#                       `dpkg -x` (nlohmann-json, CLI11, PCRE2, ICU, GoogleTest,
#                       pkgconf) for machines where they cannot be installed
#   JOBS                parallel compile jobs (default: all cores)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${1:-$ROOT/build-torch}"
PY="${PYTHON:-python3}"
TORCH_PREFIX="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
PREFIXES="$TORCH_PREFIX"
ARGS=()
if [ -n "${FINMOE_DEPS_PREFIX:-}" ]; then
  P="$(cd "$FINMOE_DEPS_PREFIX" && pwd)"
  ARCH_LIB="$P/usr/lib/x86_64-linux-gnu"
  PREFIXES="$PREFIXES;$P/usr;$ARCH_LIB/cmake"
  export PKG_CONFIG_PATH="$ARCH_LIB/pkgconfig:$P/usr/share/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$P"
  export LD_LIBRARY_PATH="$ARCH_LIB:${LD_LIBRARY_PATH:-}"
  if ! command -v pkg-config >/dev/null && [ -x "$P/usr/bin/pkgconf" ]; then
    ARGS+=("-DPKG_CONFIG_EXECUTABLE=$P/usr/bin/pkgconf")
  fi
  ARGS+=("-DCMAKE_BUILD_RPATH=$ARCH_LIB")
fi
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PREFIXES" "${ARGS[@]}"
cmake --build "$BUILD" -j "${JOBS:-$(nproc)}"
