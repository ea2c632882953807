"""Tools: measurements and checks around the suite, each a command or a script.

* :mod:`~bnnbench.tools.bench`: ``run_bench.py bench`` (training-step speed of every method vs FP);
* :mod:`~bnnbench.tools.deploy_bench`: ``run_bench.py deploy-bench`` (1-bit inference vs FP32, per layer and
  end to end);
* :mod:`~bnnbench.tools.gpu_check`: ``scripts/gpu_check.sh`` (every CUDA path, one PASS/FAIL line each);
* :mod:`~bnnbench.tools.summary`: ``run_bench.py summary`` (the per-layer model summary, larq-style);
* :mod:`~bnnbench.tools.robustness`: ``run_bench.py robustness`` (corruptions and attacks, robustness.json);
* :mod:`~bnnbench.tools.rebuild`: ``run_bench.py rebuild-weights`` (a finished run's missing checkpoint);
* :mod:`~bnnbench.tools.precision`: the binarizers in fp16/bf16 against fp32;
* :mod:`~bnnbench.tools.transfers`: a host<->device traffic counter (a TorchDispatchMode).

``add_run_dirs_argument`` and ``add_data_arguments`` are the flags the commands that load finished runs share.
Submodules are imported on use. Layering: may import everything below the command line; only the CLI
imports them.
"""
import argparse
from pathlib import Path

__all__ = ["add_data_arguments", "add_run_dirs_argument", "bench", "deploy_bench", "gpu_check", "precision",
           "rebuild", "robustness", "summary", "transfers"]


def add_run_dirs_argument(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``RUN_DIR ...``: finished runs or results folders (``bnnbench.store.finished_run_dirs``)."""
    p.add_argument("paths", type=Path, nargs="+", metavar="RUN_DIR",
                   help="finished run directories, or results folders (every finished run under runs/)")
    return p


def add_data_arguments(p: argparse.ArgumentParser, device_help: str = "cpu (default), cuda or cuda:N"
                       ) -> argparse.ArgumentParser:
    """``--data-root`` and ``--device`` of the commands that load a finished run's model and data."""
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: $BNNBENCH_DATA or ./data)")
    p.add_argument("--device", default="cpu", help=device_help)
    return p
