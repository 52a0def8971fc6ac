#!/usr/bin/env bash
# The CUDA 13.0 compiler without a GPU or NVIDIA's installer: NVIDIA's own PyPI wheels (nvcc, cudart, the CCCL
# headers, crt, nvvm; about 300 MB) in a virtual environment outside the clone, installed once and reused.
# With --runtime it adds the libraries a CUDA build links and ships (cublas, cublasLt, curand, nvrtc; about 850 MB
# more), for scripts/cuda-worker.sh.
# Prints the environment a CUDA build needs, for `eval "$(bash scripts/cuda-toolkit.sh)"`. A machine whose PATH
# already has nvcc 13 (a real toolkit) uses that instead.
set -euo pipefail
VENV="${FREEZETUNE_CUDA_VENV:-/var/tmp/freezetune-cuda-venv}"
EXTRAS='nvcc,cudart,cccl,crt,nvvm'
WANT=bin/nvcc
if [ "${1:-}" = --runtime ]; then
  EXTRAS="$EXTRAS,cublas,curand,nvrtc"
  WANT=lib/libcublasLt.so.13
fi
PKG="cuda-toolkit[$EXTRAS]==13.0.2"

if command -v nvcc >/dev/null 2>&1 && nvcc --version | grep -q 'release 13\.' && [ "${1:-}" != --runtime ]; then
  home="$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)"
else
  # No match yet (a fresh machine) is an empty answer, not a failure: under pipefail it ended the script silently.
  find_home() { ls -d "$VENV"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -1 || true; }
  home="$(find_home)"
  if [ -z "$home" ] || [ ! -e "$home/$WANT" ]; then
    echo "installing NVIDIA's CUDA 13.0 wheels ($PKG) into $VENV (once)" >&2
    [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check "$PKG" >&2
    home="$(find_home)"
  fi
fi
[ -x "$home/bin/nvcc" ] || { echo "no nvcc under $home" >&2; exit 1; }
echo "export CUDA_HOME='$home' CUDA_PATH='$home' CUDA_ROOT='$home' PATH='$home/bin':\"\$PATH\" CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-80}\""
