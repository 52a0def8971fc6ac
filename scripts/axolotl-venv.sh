#!/usr/bin/env bash
# The Python the Axolotl check runs with (crates/cli/tests/export_run.rs): Axolotl 0.19.0 from PyPI with the
# torch, transformers and datasets it pins, in its own venv outside the clone, because those pins conflict with
# LLaMA-Factory 0.9.5's (transformers 5.16.1 against <=5.6.0, datasets 4.8.4 against <=4.0.0), so it cannot share
# scripts/python-venv.sh's. CPU only: nothing it installs needs a GPU to import or to validate a config.
# Installed once (a stamp file per version) and reused: about 6 GB and a few minutes the first time.
# Prints the venv's python, for `AX="$(bash scripts/axolotl-venv.sh)"`.
set -euo pipefail
VENV="${FREEZETUNE_AXOLOTL_VENV:-/var/tmp/freezetune-axolotl-venv}"
AXOLOTL=0.19.0
stamp="$VENV/.freezetune-axolotl-$AXOLOTL"
if [ ! -e "$stamp" ]; then
  echo "installing Axolotl $AXOLOTL into $VENV (once)" >&2
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "axolotl==$AXOLOTL" >&2
  AXOLOTL_DO_NOT_TRACK=1 "$VENV/bin/python" -c 'import axolotl.cli.config, axolotl.utils.freeze' >&2
  touch "$stamp"
fi
echo "$VENV/bin/python"
