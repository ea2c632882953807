#!/usr/bin/env bash
# CIFAR-10, cResNet-20, the ten methods plus vanilla (OvSW with AGS and SAD off), 3 seeds each, on the CPU:
# the unified cifar10-cresnet20 recipe (SGD 0.1, momentum 0.9, wd 5e-4, batch 256, cosine) shortened to
# 8 epochs with 1 warmup epoch on the first 20,000 training images; the full 10,000-image test set.
# 33 runs, about 5.5 minutes each on 2 cores. Resumable: rerun the same script after an interruption.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/cifar10-jpeg/cifar-10-batches-py}
PY=${PY:-.venv/bin/python}
COMMON=(--recipe cifar10-cresnet20 --data-root "$DATA" --epochs 8 --set train_subset=20000 warmup_epochs=1
        --seeds 3 --device cpu --out results/cifar10-cpu --no-download)
"$PY" run_bench.py --methods xnor bireal irnet recu ovsw "${COMMON[@]}"  # the five methods of that time
"$PY" run_bench.py --methods reste biper rebnn adabin bop "${COMMON[@]}"  # the five added since (default hparams)
"$PY" run_bench.py --methods ovsw --hp ovsw.ags=false ovsw.sad=false "${COMMON[@]}"
"$PY" run_bench.py report --out results/cifar10-cpu --format md --baseline 'ovsw[ags=False,sad=False]'
