#!/usr/bin/env bash
# Builds freezetune-cuda, the CUDA training worker: the CLI with --features cuda, linked against NVIDIA's CUDA 13
# libraries (cudart, cublas, cublasLt, curand; nvrtc is linked but unused; from NVIDIA's PyPI wheels,
# redistributable under NVIDIA's licence) and staged with the ones it loads in a private folder:
#   OUT/freezetune-cuda   the worker, with RPATH $ORIGIN/lib
#   OUT/lib/              the CUDA libraries it loads
#   OUT/licenses/         NVIDIA's licence texts from the wheels
# libcuda.so.1 is the driver's and is never shipped: linking uses a stub built here from cudarc's list of driver
# functions, and on a machine without the driver the worker fails to start with the loader's error about
# libcuda.so.1 (the app turns that into one line and trains on the CPU).
# Usage: bash scripts/cuda-worker.sh [OUT]   (default $CUDA_TARGET_DIR/freezetune-cuda)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
: "${CUDA_TARGET_DIR:=/var/tmp/freezetune-target-cuda}"
OUT="${1:-$CUDA_TARGET_DIR/freezetune-cuda}"
cuda_env="$(bash "$ROOT/scripts/cuda-toolkit.sh" --runtime)" # a failure ends this script (set -e)
eval "$cuda_env"
LIB="$CUDA_HOME/lib"
SHIP=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libnvrtc-builtins.so.13.0)

# The linker wants unversioned names (-lcublas) and a libcuda.so: a folder of links and the stub.
LINK="$CUDA_TARGET_DIR/cuda-link"
rm -rf "$LINK" && mkdir -p "$LINK"
for lib in "${SHIP[@]}"; do
  test -f "$LIB/$lib" || { echo "missing $LIB/$lib (re-run scripts/cuda-toolkit.sh --runtime)" >&2; exit 1; }
  ln -s "$LIB/$lib" "$LINK/${lib%%.so*}.so"
done
# The stub lists cudarc's driver functions, so its source must be on disk (a fresh machine has no registry yet).
(cd "$ROOT" && cargo fetch --locked >&2)
CUDARC="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$(grep -A1 '^name = "cudarc"' "$ROOT/Cargo.lock" \
  | sed -n 's/^version = "\(.*\)"/\1/p')" | head -1)"
grep -ohE '^\s+fn cu[A-Za-z0-9_]+\(' "$CUDARC/src/driver/sys/mod.rs" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' \
  | sort -u | awk '{print "void " $1 "(void) {}"}' >"$LINK/cuda_stub.c"
gcc -shared -fPIC -o "$LINK/libcuda.so" -Wl,-soname,libcuda.so.1 "$LINK/cuda_stub.c"

# cargo rustc passes the link flags to the final binary only, so the dependencies' builds are shared with other
# release CUDA builds in this target dir. --disable-new-dtags writes DT_RPATH, which (unlike RUNPATH) also serves
# the libraries' own dependencies (cublas -> cublasLt) and nvrtc's dlopen of its builtins.
cd "$ROOT"
CARGO_TARGET_DIR="$CUDA_TARGET_DIR" cargo rustc --release --locked -p freezetune-cli --bin freezetune --features cuda -- \
  -L "native=$LINK" -C 'link-arg=-Wl,--disable-new-dtags,-rpath,$ORIGIN/lib'

rm -rf "$OUT" && mkdir -p "$OUT/lib" "$OUT/licenses"
cp "$CUDA_TARGET_DIR/release/freezetune" "$OUT/freezetune-cuda"
# Ship the libraries the loader actually resolves (the linker drops unused ones: candle loads its kernels as PTX
# through the driver and never calls NVRTC, so libnvrtc's 113 MB stay out), with the stub standing in for libcuda.
for lib in "${SHIP[@]}"; do cp "$LIB/$lib" "$OUT/lib/"; done
used="$(LD_LIBRARY_PATH="$LINK" ldd "$OUT/freezetune-cuda" | awk -v d="$OUT/lib/" 'index($3, d) {print $1}')"
for f in "$OUT"/lib/*; do grep -qx "$(basename "$f")" <<<"$used" || rm "$f"; done
for dist in "$(dirname "$(dirname "$CUDA_HOME")")"/nvidia_{cuda_runtime,cublas,curand}-*.dist-info; do
  name="$(basename "$dist" | sed 's/-[0-9].*//')"
  for f in "$dist"/License.txt "$dist"/licenses/*; do [ -f "$f" ] && cp "$f" "$OUT/licenses/$name-$(basename "$f")"; done
done
# Every library the worker needs resolves inside OUT or the system, except the driver's libcuda.so.1.
missing="$(env -u LD_LIBRARY_PATH ldd "$OUT/freezetune-cuda" | awk '/not found/ {print $1}' | grep -v '^libcuda\.so\.1$' || true)"
[ -z "$missing" ] || { echo "freezetune-cuda needs libraries that are not shipped: $missing" >&2; exit 1; }
echo "built $OUT/freezetune-cuda ($(du -sh "$OUT" | cut -f1) with its libraries)" >&2
