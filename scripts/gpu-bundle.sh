#!/usr/bin/env bash
# The GPU check as a folder a lent GPU machine runs as it is (no cargo, no network there): the CUDA worker built
# and linked here (scripts/cuda-worker.sh), stripped, with the check's scripts and the reference data they read.
# NVIDIA's libraries are not shipped (cuBLASLt alone is ~500 MB), but for cuRAND: run.sh takes them from the GPU
# machine's own Python (PyTorch's nvidia-* packages), through LD_LIBRARY_PATH. The folder must stay under 64 MiB (what the device
# tool carries).
#
#   bash scripts/gpu-bundle.sh [DIR]      # default: gpu-bundle/ in the clone (git-ignored)
#   bash DIR/run.sh [--steps N]           # on the GPU machine; the report lands in $OUT or DIR/results
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
: "${CUDA_TARGET_DIR:=/var/tmp/freezetune-target-cuda}"
DIR="${1:-$ROOT/gpu-bundle}"
LIMIT=$((64 * 1024 * 1024))

bash "$ROOT/scripts/cuda-worker.sh" "$CUDA_TARGET_DIR/freezetune-cuda"
rm -rf "$DIR" && mkdir -p "$DIR/bin" "$DIR/scripts" "$DIR/tests/fixtures/models" "$DIR/tests/fixtures/reference"
# Stripped, then xz-compressed: candle's PTX kernels make the binary ~70 MB, which compresses ~7x. run.sh unpacks it
# with Python's lzma (the GPU machine need not have xz).
cp "$CUDA_TARGET_DIR/freezetune-cuda/freezetune-cuda" "$DIR/bin/freezetune-cuda"
strip --strip-all "$DIR/bin/freezetune-cuda"
xz -T0 -6 "$DIR/bin/freezetune-cuda"
# cuRAND (candle makes a generator when a CUDA device opens) is no longer in PyTorch's wheels: shipped, compressed,
# into bin/lib, where the worker's RPATH ($ORIGIN/lib) looks first.
mkdir -p "$DIR/bin/lib"
xz -T0 -9 -c "$CUDA_TARGET_DIR/freezetune-cuda/lib/libcurand.so.10" >"$DIR/bin/lib/libcurand.so.10.xz"
# The system libraries the worker needs beyond glibc (libdbus for the keyring, and what it pulls in; libstdc++),
# which a GPU machine's minimal image may lack. Found through the staged worker's own ldd.
link="$CUDA_TARGET_DIR/cuda-link"
for lib in $(LD_LIBRARY_PATH="$link" ldd "$CUDA_TARGET_DIR/freezetune-cuda/freezetune-cuda" \
  | awk '$3 ~ /^\/(usr\/)?lib/ {print $3}' | grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*|libgcc_s)\.so'); do
  cp -L "$lib" "$DIR/bin/lib/"
done
cp "$ROOT/scripts/gpu_check.py" "$ROOT/scripts/gpu_check_torch.py" "$DIR/scripts/"
cp -r "$ROOT/tests/fixtures/models/llama" "$DIR/tests/fixtures/models/"
cp "$ROOT/tests/fixtures/reference/parity.json" "$ROOT/tests/fixtures/reference/families.json" \
  "$ROOT/tests/fixtures/reference/mxfp4.json" "$ROOT/tests/fixtures/reference/fp8.json" \
  "$DIR/tests/fixtures/reference/"
# The families whose device-generic math differs most from llama's (about 7 MB; all 21 would pass the 64 MiB):
# Qwen3.5's Gated DeltaNet and gated attention, Granite 4.0-H's Mamba 2 scan, LFM2's convolutions, Gemma 2's softcaps and sandwich norms, Gemma 3's
# q/k norms and per-type rope, SmolLM3's NoPE layers, LongRoPE, YaRN, a sliding window, and the mixture-of-experts
# routing (gather, index_add) and stacked-experts node of Qwen3 MoE and Qwen3.5 MoE, gpt-oss's sinks and interleaved
# experts, and its MXFP4 experts held in their blocks; Qwen3 MoE's and DeepSeek-V3's FP8 builds held in their codes; DeepSeek-V3's latent attention (pads, a broadcast key part,
# interleaved rotary) and grouped sigmoid routing, GLM-4.5's, GLM-4.7-Flash's latent attention with biases, and
# Qwen3-Next's grouped DeltaNet projections. gpu_check.py names the rest as not carried.
for family in qwen3_5 granite4_h lfm2 gemma2 gemma3 smollm3 phi3_longrope qwen2_yarn mistral_window qwen3_moe qwen3_5_moe \
  gpt_oss gpt_oss_mxfp4 qwen3_moe_fp8 deepseek_v3_fp8 glm4_moe deepseek_v3 glm4_moe_lite qwen3_next; do
  cp -r "$ROOT/tests/fixtures/models/$family" "$DIR/tests/fixtures/models/"
done
cp "$ROOT/scripts/gpu-run.sh" "$DIR/run.sh"
chmod +x "$DIR/run.sh"

size="$(du -sb "$DIR" | cut -f1)"
if [ "$size" -ge "$LIMIT" ]; then
  echo "the GPU bundle is $((size / 1048576)) MiB, over the 64 MiB a lent machine takes" >&2
  exit 1
fi
echo "GPU bundle: $DIR ($((size / 1048576)) MiB); on the GPU machine: bash $(basename "$DIR")/run.sh" >&2
