"""The command line (``run_bench.py``, the ``run_bench`` / ``bnnbench`` console scripts, ``python -m bnnbench.cli``).

* :mod:`~bnnbench.cli.main`: the parser (one ``--plugin`` definition for every command) and one function per
  command: ``run`` (builds a :class:`~bnnbench.runner.SweepRequest`, plans, runs or submits, publishes),
  ``report``, ``list``; ``bench`` and ``deploy-bench`` call :mod:`bnnbench.tools`;
* :mod:`~bnnbench.cli.models`: ``evaluate`` and ``export`` (a finished run's model, or a 1-bit export file).

The top of the house: nothing in the package imports it (import-linter checks).
"""
from bnnbench.cli.main import main

__all__ = ["main"]
