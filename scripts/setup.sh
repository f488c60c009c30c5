#!/usr/bin/env bash
# Create the project's virtual environment (.venv) and install robustlab (editable) with its test
# dependencies and a CPU build of PyTorch. Works with a distribution's python3 (PEP 668 forbids
# pip there, so everything goes into .venv) and with any other Python 3.11+.
#   PYTHON=/path/to/python3 bash scripts/setup.sh   # choose the interpreter the venv is made from
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh: robustlab needs Python 3.11 or newer; '$PY' is $("$PY" --version 2>&1)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) as a separate package.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$PY" -m venv "$VENV"
    else
      echo "setup.sh: '$PY -m venv' failed; on Debian or Ubuntu install python3-venv (sudo apt install python3-venv)" >&2
      exit 2
    fi
  fi
fi
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  # The CPU wheel where the machine keeps one (pip's find-links), else PyTorch's CPU index: a plain
  # `pip install torch` on Linux pulls a multi-GB CUDA build.
  pip_install "torch==2.13.0+cpu" 2>/dev/null \
    || pip_install torch --index-url https://download.pytorch.org/whl/cpu
fi
pip_install -e ".[test]"
