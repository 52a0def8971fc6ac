#!/usr/bin/env bash
# The independent GGUF reader and runtime the GGUF tests check FreezeTune's files with: the `gguf` package
# (llama.cpp's own Python reader/writer) and llama.cpp itself through llama-cpp-python, built from its PyPI sdist
# once into a virtual environment outside the clone (a few minutes on 2 cores) and reused. Built for any x86-64
# or arm64 CPU of its kind (GGML_NATIVE=OFF): the machine's CPU may change while /var/tmp stays.
# Prints the venv's python, for `PY="$(bash scripts/gguf-venv.sh)"`.
set -euo pipefail
VENV="${FREEZETUNE_GGUF_VENV:-/var/tmp/freezetune-gguf-venv}"
LLAMA_CPP_PYTHON=0.3.16
GGUF=0.17.1
stamp="$VENV/.freezetune-$LLAMA_CPP_PYTHON-$GGUF"
if [ ! -e "$stamp" ]; then
  echo "installing gguf $GGUF and llama-cpp-python $LLAMA_CPP_PYTHON (llama.cpp, compiled) into $VENV (once)" >&2
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "gguf==$GGUF" numpy safetensors cmake ninja >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON" >&2
  "$VENV/bin/python" -c 'import gguf, llama_cpp' >&2
  touch "$stamp"
fi
echo "$VENV/bin/python"
