#!/usr/bin/env bash
# CIFAR-10, cResNet-20, the ten methods plus vanilla (OvSW with AGS and SAD off), 3 seeds each, on the CPU:
# the unified cifar10-cresnet20 recipe (SGD 0.1, momentum 0.9, wd 5e-4, batch 256, cosine) shortened to
# 8 epochs with 1 warmup epoch on the first 20,000 training images; the full 10,000-image test set.
# 33 runs, about 5.5 minutes each on 2 cores. Resumable: rerun the same script after an interruption.
# The robustness lines need each run's weights here: run_bench.py rebuild-weights results/cifar10-cpu --data-root "$DATA"
# restores those not on this machine (checkpoints are not committed).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/cifar10-jpeg/cifar-10-batches-py}
PY=${PY:-.venv/bin/python}
COMMON=(--recipe cifar10-cresnet20 --data-root "$DATA" --epochs 8 --set train_subset=20000 warmup_epochs=1
        --seeds 3 --device cpu --out results/cifar10-cpu --no-download)
"$PY" run_bench.py --methods xnor bireal irnet recu ovsw "${COMMON[@]}"  # the five methods of that time
"$PY" run_bench.py --methods reste biper rebnn adabin bop "${COMMON[@]}"  # the five added since (default hparams)
"$PY" run_bench.py --methods ovsw --hp ovsw.ags=false ovsw.sad=false "${COMMON[@]}"
# The robustness track (bnnbench/engine/robustness.py): a full-precision cResNet-20 of the same schedule (seed 0;
# out of the table, in fp-source/) is the transfer attack's source; then every finished run above under the 15
# corruptions x 5 severities and FGSM/PGD at 1, 2 and 8 /255 on the first 1,000 test images. Needs each run's
# final checkpoint.pt on this machine (checkpoints are not committed; a run without one is named and skipped,
# exit status 3). Resumable entry by entry (robustness.json in each run directory).
"$PY" run_bench.py --methods xnor --set binarize=none train_subset=20000 warmup_epochs=1 --recipe cifar10-cresnet20 \
  --data-root "$DATA" --epochs 8 --seeds 1 --device cpu --out results/cifar10-cpu/fp-source --no-download
FP=$(ls -d results/cifar10-cpu/fp-source/runs/cifar10-cresnet20__unified__cresnet20__xnor__s0__*)
"$PY" run_bench.py robustness results/cifar10-cpu --subset 1000 --data-root "$DATA" --transfer-source "$FP"\
  || echo "robustness: the runs named above were not evaluated (see README: rebuild-weights)"
"$PY" run_bench.py report --out results/cifar10-cpu --format md --baseline 'ovsw[ags=False,sad=False]'
