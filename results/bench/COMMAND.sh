#!/usr/bin/env bash
# Training-step cost of every method against the full-precision backbone (cresnet20, batch 256, CIFAR
# shapes) on this machine's CPU (2 cores), channels_last (training's layout), written to results/bench/cpu-cresnet20-b256.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
python run_bench.py bench --steps 30 --warmup 3 --json results/bench/cpu-cresnet20-b256.json
