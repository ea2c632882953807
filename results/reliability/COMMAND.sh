#!/usr/bin/env bash
# The reliability tests three times in a row (output: three-rounds.log)
cd "$(dirname "$0")/../.."
for i in 1 2 3; do echo "=== round $i $(date +%T)"; .venv/bin/python -m pytest -q tests/test_reliability.py -p no:cacheprovider 2>&1 | tail -3; done
