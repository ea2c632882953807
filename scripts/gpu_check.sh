#!/usr/bin/env bash
# Every CUDA path of the suite in one command (under 8 minutes on one GPU): one PASS/FAIL/SKIP line per
# check, results in results/gpu/gpu_check.json. Without CUDA every check is skipped (exit 0); --self-test
# runs the CPU forms. Checks and options: bnnbench/tools/gpu_check.py (python -m bnnbench.tools.gpu_check --help).
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" "${BNNBENCH_EXTRAS:-all}"
cd "$ROOT"
exec "$VENV/bin/python" -m bnnbench.tools.gpu_check "$@"
