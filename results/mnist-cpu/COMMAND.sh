#!/usr/bin/env bash
# MNIST, cResNet-20, all five methods plus vanilla (OvSW with AGS and SAD off), 5 seeds each, on the CPU:
# the mnist-cresnet20 recipe with a short schedule (first 6,000 training images, the full 10,000-image test
# set, 2 epochs, no warmup). Resumable: rerun the same script after an interruption.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${CACHE:-$HOME/.cache/bnnbench/mnist}   # torchvision extracts next to the .gz files: copy first
if [ ! -d "$CACHE/MNIST/raw" ]; then mkdir -p "$CACHE/MNIST" && cp -r ../shared/data/mnist/MNIST/raw "$CACHE/MNIST/"; fi
PY=${PY:-.venv/bin/python}
COMMON=(--recipe mnist-cresnet20 --data-root "$CACHE" --epochs 2 --set train_subset=6000 warmup_epochs=0
        --seeds 5 --device cpu --out results/mnist-cpu --no-download)
"$PY" run_bench.py --methods xnor bireal irnet recu ovsw "${COMMON[@]}"  # the five methods of that time
"$PY" run_bench.py --methods ovsw --hp ovsw.ags=false ovsw.sad=false "${COMMON[@]}"
"$PY" run_bench.py report --out results/mnist-cpu --format md --baseline 'ovsw[ags=False,sad=False]'
