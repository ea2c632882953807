#!/usr/bin/env python3
"""Entry point: ``python run_bench.py --methods ovsw recu`` (see README.md and ``--help``)."""
import sys

from bnnbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
