#!/usr/bin/env bash
# Measured 1-bit inference on this CPU: every binary conv and the whole network of ImageNet ResNet-18
# (224x224) and cResNet-20 (32x32), batch 1 and 32, 2 threads, the fused packed XNOR-popcount model against
# torch FP32 (same topology, channels_last, eval), against the unfused packed model and against the
# simulated binary model; once per kernel path this CPU can run (ISAS overrides: e.g. ISAS=avx2), each
# forced with --isa, one JSON and one console log per path. Run it alone on the machine: other processes
# on the same cores distort every figure (each JSON records how busy the other cores were). First the
# arithmetic ceiling of this CPU (bnnbench/deploy/csrc/roofline.cpp: binary against FP32 multiply-accumulates
# per second, one thread) into roofline.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
ISAS=${ISAS:-$("$PY" -c 'from bnnbench.deploy import kernels as k; print(*k.ISAS[1:k.ISAS.index(k.best_isa()) + 1])')}
ROOF=$(mktemp -d)/roofline
g++ -O2 -Wno-uninitialized -o "$ROOF" bnnbench/deploy/csrc/roofline.cpp
{ echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), flags: $(grep -o 'avx512[a-z_0-9]*\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  "$ROOF"; } | tee results/deploy/roofline.txt
for ISA in $ISAS; do
  "$PY" run_bench.py deploy-bench --arch resnet18 cresnet20 --batch 1 32 --threads 2 --rounds 30 --warmup 5 \
    --isa "$ISA" --json "results/deploy/cpu-$ISA-2threads.json" | tee "results/deploy/cpu-$ISA-2threads.txt"
done
