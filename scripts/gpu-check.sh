#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU (driver R580+) and nvcc 13: builds the CUDA CLI, then runs
# scripts/gpu_check.py through it: parity with PyTorch on the reference llama (f32 within 1e-4, bf16 within 2e-2)
# and with transformers on every family's tiny model (f32 within 1e-4),
# the freeze mask on the exported checkpoint, and a side-by-side benchmark against PyTorch (Qwen2.5-0.5B-shaped,
# bf16, batch 8 x 1024; top 4 / bottom 4 / full; step time and peak GPU memory).
#
#   bash scripts/gpu-check.sh                   # CUDA: release build with --features cuda, then the checks
#   bash scripts/gpu-check.sh --device metal    # an Apple GPU: the Metal build, the small reference model
#   bash scripts/gpu-check.sh --device cpu      # the same flows on the CPU with the small reference model
#                                               # (part of `make test`, so this script cannot rot)
#   FREEZETUNE_BIN=path/to/freezetune-cuda bash scripts/gpu-check.sh   # a prebuilt binary, no build
#
# Extra arguments go to gpu_check.py (--steps N, --out DIR). The report is printed and written as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda:0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/freezetune-target}"
if [ -n "${FREEZETUNE_BIN:-}" ]; then
  bin="$FREEZETUNE_BIN"
elif [ "$device" = cpu ]; then
  # The debug build `make test` already has: the CPU flows use tiny models.
  cargo build --locked -q -p freezetune-cli
  bin="$CARGO_TARGET_DIR/debug/freezetune"
elif [ "$device" = metal ]; then
  # Apple GPUs: the Metal build, in the CPU build's target dir (a Mac has no CUDA build).
  cargo build --release --locked -q -p freezetune-cli --features metal
  bin="$CARGO_TARGET_DIR/release/freezetune"
else
  cuda_env="$(bash scripts/cuda-toolkit.sh)" # a failure ends this script (set -e)
  eval "$cuda_env"
  export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-/var/tmp/freezetune-target-cuda}"
  cargo build --release --locked -q -p freezetune-cli --features cuda
  bin="$CARGO_TARGET_DIR/release/freezetune"
fi
case "$device" in
  cuda*) nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader ;;
  metal) system_profiler SPDisplaysDataType 2>/dev/null | grep -E 'Chipset|Metal' || true ;;
esac
python3 scripts/gpu_check.py --bin "$bin" --device "$device" ${args[@]+"${args[@]}"}
