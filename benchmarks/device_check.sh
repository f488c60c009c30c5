#!/usr/bin/env bash
# The GPU run of the reference-AutoAttack benchmark and of the attack floor, prepared for a session
# that is lent a GPU machine (the device tool): one command there, inside its 10-minute limit.
#
#   bash benchmarks/device_check.sh prepare   # here: fills .device/ (ignored by git) with what the
#                                             # device machine lacks: MNIST's and CIFAR-10's test
#                                             # data, the benchmark models, the two peers (pure
#                                             # Python, unpacked; pyautoattack without its 45 MB
#                                             # of example models)
#   device run: command "bash benchmarks/device_check.sh run", carry [".device"], timeout_s 580
#
# `run` writes under $OUT (what the device tool brings back; benchmarks/results/device without it):
# machine.txt, attack_floor.json, autoattack_reference.json and .md, and the two logs. The
# benchmark writes its JSON after each row, so a run stopped by the limit keeps the rows it did.
# DEVICE=cpu runs the same on a CPU (how this script was tested); PYTHON picks the interpreter
# (default: python3, the one that holds PyTorch on the device machine); ROWS and IMAGES narrow it.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=.device
# The benchmark's rows that fit the device machine's budget, most telling first (the madry-cnn row's
# 13 MB model is left out: what travels is limited to 64 MiB).
ROWS=${ROWS:-"mnist-pgd-kwsmall:Linf cifar10-pgd-kwsmall:Linf mnist-fastfgsm-smallcnn:Linf mnist-bilateral-kwsmall:Linf mnist-natural-lenet:Linf mnist-pgd-kwsmall:L2"}

case "${1:-}" in
  prepare)
    PY=${PYTHON:-.venv/bin/python}
    data=${ROBUSTLAB_DATA:-../shared/data}
    rm -rf "$STAGE"
    mkdir -p "$STAGE/data/mnist" "$STAGE/data/cifar10-jpeg" "$STAGE/site" "$STAGE/models"
    cp "$data"/mnist/t10k-* "$STAGE/data/mnist/"
    cp "$data"/cifar10-jpeg/cifar10-jpeg.tar.gz "$STAGE/data/cifar10-jpeg/"
    wheels=$(mktemp -d)
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" pyautoattack==0.2.0 torchattacks==3.5.1
    for wheel in "$wheels"/*.whl; do
      "$PY" -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2], [n for n in z.namelist() if '/examples/' not in n])" "$wheel" "$STAGE/site"
    done
    rm -rf "$wheels"
    for row in $ROWS; do
      model=${row%%:*}
      ROBUSTLAB_DATA=$data "$PY" benchmarks/zoo_models.py "$model"  # trains it only if benchmarks/.cache lacks it
      cp "benchmarks/.cache/$model.json" "benchmarks/.cache/$model.safetensors" "$STAGE/models/"
    done
    du -sh "$STAGE"
    ;;
  run)
    PY=${PYTHON:-python3}
    OUT=${OUT:-benchmarks/results/device}
    DEVICE=${DEVICE:-cuda}
    mkdir -p "$OUT" benchmarks/.cache
    export PYTHONPATH="$PWD/src:$PWD/$STAGE/site" ROBUSTLAB_DATA="$PWD/$STAGE/data" PYTHONUNBUFFERED=1
    cp -n "$STAGE"/models/* benchmarks/.cache/
    { nvidia-smi || true
      "$PY" -c "import torch, robustlab; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'robustlab', robustlab.__version__)"
    } > "$OUT/machine.txt" 2>&1
    "$PY" benchmarks/attack_floor.py --device "$DEVICE" --threads 8 ${IMAGES:+--images "$IMAGES"} --out "$OUT/attack_floor.json" \
      2>&1 | tee "$OUT/attack_floor.log"
    # shellcheck disable=SC2086  # ROWS is a list
    "$PY" benchmarks/autoattack_reference.py --device "$DEVICE" --threads 8 --torchattacks --rows $ROWS \
      ${IMAGES:+--images "$IMAGES"} --out "$OUT/autoattack_reference.json" 2>&1 | tee "$OUT/autoattack_reference.log"
    ;;
  *)
    echo "usage: bash benchmarks/device_check.sh prepare|run" >&2
    exit 2
    ;;
esac
