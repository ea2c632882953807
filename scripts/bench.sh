#!/usr/bin/env bash
# Main job: create/reuse the venv, then run the benchmark CLI with the given arguments.
#   scripts/bench.sh --methods ovsw recu        (default recipe: embedded digits, a few CPU minutes)
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" ""
cd "$ROOT"
exec "$VENV/bin/python" run_bench.py "$@"
