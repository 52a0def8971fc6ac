#!/usr/bin/env bash
# The Python the cross-checks run with, one venv outside the clone shared by all of them (their versions agree):
# - LLaMA-Factory 0.9.5 (with the torch, transformers and datasets it pins), which trains the bundles
#   `freezetune export-run` writes (crates/cli/tests/export_run.rs);
# - llama.cpp's `gguf` package and llama.cpp itself through llama-cpp-python, built from its PyPI sdist for any
#   x86-64 or arm64 CPU of its kind (GGML_NATIVE=OFF: the machine's CPU may change while /var/tmp stays), which
#   read and run the GGUF files FreezeTune writes (crates/gguf/tests).
# Each part is installed once (a stamp file per version) and reused: about 8 minutes the first time.
# Prints the venv's python, for `PY="$(bash scripts/python-venv.sh)"`.
set -euo pipefail
VENV="${FREEZETUNE_PYTHON_VENV:-/var/tmp/freezetune-python-venv}"
LLAMAFACTORY=0.9.5
LLAMA_CPP_PYTHON=0.3.16
GGUF=0.17.1
pip() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@" >&2; }
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" >&2
stamp="$VENV/.freezetune-llamafactory-$LLAMAFACTORY"
if [ ! -e "$stamp" ]; then
  echo "installing LLaMA-Factory $LLAMAFACTORY into $VENV (once)" >&2
  pip "llamafactory==$LLAMAFACTORY"
  "$VENV/bin/python" -c 'import llamafactory' >&2
  touch "$stamp"
fi
stamp="$VENV/.freezetune-gguf-$LLAMA_CPP_PYTHON-$GGUF"
if [ ! -e "$stamp" ]; then
  echo "installing gguf $GGUF and llama-cpp-python $LLAMA_CPP_PYTHON (llama.cpp, compiled) into $VENV (once)" >&2
  pip "gguf==$GGUF" safetensors cmake ninja
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc 2>/dev/null || echo 2)" \
    pip --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON"
  "$VENV/bin/python" -c 'import gguf, llama_cpp' >&2
  touch "$stamp"
fi
echo "$VENV/bin/python"
