#!/usr/bin/env bash
# run.sh of the GPU bundle (scripts/gpu-bundle.sh): the GPU check on a machine with an NVIDIA GPU (driver R580+)
# and a Python whose PyTorch carries NVIDIA's CUDA 13 libraries. Arguments go to gpu_check.py (--steps N).
# The report is written to $OUT (the device tool's output folder) when set, else results/ beside this script.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
# The CUDA libraries the worker links (cudart, cublas, cublasLt, curand, nvrtc) from the Python's nvidia packages.
libs="$("$PY" - <<'PYEOF'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = []
for root in roots:
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "**", "lib"), recursive=True)):
        if glob.glob(os.path.join(lib, "lib*.so*")) and lib not in dirs:
            dirs.append(lib)
print(":".join(dirs))
PYEOF
)"
[ -n "$libs" ] || { echo "no NVIDIA libraries under $PY's site-packages (pip's nvidia-* packages): install PyTorch with CUDA 13" >&2; exit 1; }
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN="$HERE/bin/freezetune-cuda"
unpack() { [ -e "$1" ] || "$PY" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1] + ".xz"), open(sys.argv[1], "wb"))' "$1"; }
unpack "$BIN" && chmod +x "$BIN"
unpack "$HERE/bin/lib/libcurand.so.10"
missing="$(ldd "$BIN" | awk '/not found/ {print $1}')"
[ -z "$missing" ] || { echo "freezetune-cuda cannot find: $missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
out="${OUT:-$HERE/results}"
exec "$PY" "$HERE/scripts/gpu_check.py" --bin "$BIN" --device cuda:0 --out "$out" "$@"
