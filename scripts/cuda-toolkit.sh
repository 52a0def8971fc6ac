#!/usr/bin/env bash
# The CUDA 13.0 compiler without a GPU or NVIDIA's installer: NVIDIA's own PyPI wheels (nvcc, cudart, the CCCL
# headers, crt, nvvm; about 300 MB) in a virtual environment outside the clone, installed once and reused.
# Prints the environment a CUDA build needs, for `eval "$(bash scripts/cuda-toolkit.sh)"`. A machine whose PATH
# already has nvcc 13 (a real toolkit) uses that instead.
set -euo pipefail
VENV="${FREEZETUNE_CUDA_VENV:-/var/tmp/freezetune-cuda-venv}"
PKG='cuda-toolkit[nvcc,cudart,cccl,crt,nvvm]==13.0.2'

if command -v nvcc >/dev/null 2>&1 && nvcc --version | grep -q 'release 13\.'; then
  home="$(cd "$(dirname "$(command -v nvcc)")/.." && pwd)"
else
  find_home() { ls -d "$VENV"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -1; }
  home="$(find_home)"
  if [ -z "$home" ] || [ ! -x "$home/bin/nvcc" ]; then
    echo "installing the CUDA 13.0 compiler wheels into $VENV (once)" >&2
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check "$PKG" >&2
    home="$(find_home)"
  fi
fi
[ -x "$home/bin/nvcc" ] || { echo "no nvcc under $home" >&2; exit 1; }
echo "export CUDA_HOME='$home' CUDA_PATH='$home' CUDA_ROOT='$home' PATH='$home/bin':\"\$PATH\" CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-80}\""
