#!/usr/bin/env bash
# CPU-scale CIFAR-10 comparison of all five methods (plus vanilla: OvSW with AGS and SAD off) on the
# unified cifar10-cresnet20 recipe: first 20,000 training images, full 10,000-image test set,
# 8 epochs with 1 warmup epoch (the recipe's 600 epochs / 5 warmup are overridden), seed 0, CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/cifar10-jpeg/cifar-10-batches-py}
COMMON=(--recipe cifar10-cresnet20 --data-root "$DATA" --epochs 8 --set train_subset=20000 warmup_epochs=1
        --device cpu --out results/cifar10-cpu)
python run_bench.py --methods all "${COMMON[@]}"
python run_bench.py --methods ovsw --hp ovsw.ags=false ovsw.sad=false "${COMMON[@]}"
python run_bench.py report --out results/cifar10-cpu --format md
