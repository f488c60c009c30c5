#!/usr/bin/env bash
# Install robustlab and its test dependencies into the current Python, with a CPU build of
# PyTorch: a plain `pip install torch` on Linux pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@"; }

if ! "$PY" -c "import torch" 2>/dev/null; then
  # A local CPU wheel where the machine keeps one (pip's find-links), else PyTorch's CPU index.
  pip_install "torch==2.13.0+cpu" 2>/dev/null \
    || pip_install torch --index-url https://download.pytorch.org/whl/cpu
fi
pip_install -e ".[test]"
