# Sourced by scripts/bench.sh and scripts/test.sh: create or reuse the project's virtual environment and
# (re)install the project into it when pyproject.toml changed. Usage: source scripts/_venv.sh EXTRA
# Environment: BNNBENCH_VENV (default .venv), PYTHON (default python3). Install a specific torch build
# (e.g. another CUDA) into the venv first and it is kept: pyproject asks only for torch>=2.1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BNNBENCH_VENV:-$ROOT/.venv}"
EXTRA="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtual environment $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV"
fi
STAMP="$VENV/.bnnbench-installed${EXTRA:+-$EXTRA}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "installing bnnbench${EXTRA:+[$EXTRA]} and its dependencies into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${EXTRA:+[$EXTRA]}" 2>&1 \
    | grep -v "^WARNING: Location 'file:" >&2 || true
  "$VENV/bin/python" -c "import bnnbench, bnnbench.methods, bnnbench.architectures, torch, torchvision, scipy, rich, tabulate, yaml, matplotlib, sklearn" \
    || { echo "error: installing into $VENV failed (see above)" >&2; exit 1; }
  touch "$STAMP"
fi
# the 1-bit inference kernels (bnnbench/deploy/csrc), compiled once into the venv; without a compiler the rest of
# the suite works and the leaderboard's 1-bit columns say why they are empty
KSTAMP="$VENV/bnnbench-kernels/.built"
if [ ! -f "$KSTAMP" ] || [ "$ROOT/bnnbench/deploy/csrc/binconv.cpp" -nt "$KSTAMP" ]; then
  echo "building the 1-bit kernels (g++, about a minute once)" >&2
  if "$VENV/bin/python" -m bnnbench.deploy.kernels >&2; then touch "$KSTAMP"
  else echo "warning: the 1-bit kernels did not build (see above); deploy figures will be empty" >&2; fi
fi
