#!/usr/bin/env bash
# CPU evidence for the two-stage track: cResNet-20 on CIFAR-10 (first 20,000 training images), ReCU and
# OvSW, 2 seeds; stage 1 (binary activations, real weights) 4 epochs then stage 2 (1W1A, from stage 1)
# 4 epochs, without and with KD from a full-precision teacher run (4 epochs, shared by both methods), and
# with KD from a longer-trained teacher (16 epochs: --set teacher.epochs=16).
# The single-stage baseline with the same total of 8 epochs is results/cifar10-cpu (same data, seeds 0-2).
# Resumable: rerun the same script after an interruption.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/cifar10-jpeg/cifar-10-batches-py}
PY=${PY:-.venv/bin/python}
COMMON=(--recipe cifar10-cresnet20-twostage --data-root "$DATA" --epochs 4 --seeds 2 --methods ovsw recu
        --device cpu --out results/cifar10-twostage --no-download)
"$PY" run_bench.py "${COMMON[@]}" --set train_subset=20000 warmup_epochs=1
"$PY" run_bench.py "${COMMON[@]}" --set train_subset=20000 warmup_epochs=1 distill_weight=1.0
"$PY" run_bench.py "${COMMON[@]}" --set train_subset=20000 warmup_epochs=1 distill_weight=1.0 teacher.epochs=16
"$PY" run_bench.py report --out results/cifar10-twostage --format md
"$PY" results/cifar10-twostage/compare.py | tee results/cifar10-twostage/compare.md
