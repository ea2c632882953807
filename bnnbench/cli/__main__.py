"""``python -m bnnbench.cli``: the command line (``run_bench.py``)."""
import sys

from bnnbench.cli.main import main

sys.exit(main())
