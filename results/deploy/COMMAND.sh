#!/usr/bin/env bash
# Measured 1-bit inference on this CPU: every binary conv and the whole network of ImageNet ResNet-18
# (224x224) and cResNet-20 (32x32), batch 1 and 32, 2 threads, packed XNOR-popcount model against torch
# FP32 (same topology, channels_last, eval) and against the simulated binary model. Run it alone on the
# machine: other processes on the same cores distort every figure.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
"$PY" run_bench.py deploy-bench --arch resnet18 cresnet20 --batch 1 32 --threads 2 --rounds 30 --warmup 5 \
  --json results/deploy/cpu-2threads.json | tee results/deploy/cpu-2threads.txt
