"""Optional experiment trackers that mirror each run's metrics rows (``--logger tensorboard wandb mlflow``).

``metrics.jsonl`` stays the source of truth (reports and plots read only it); a logger receives the same
row once per epoch, numbers only (nested per-layer statistics are left out), with the epoch as the step,
on rank 0. Each run is its own tracker run, named by its run directory and carrying its config:

* ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` writing to ``RUN_DIR/tensorboard/``
  (``pip install tensorboard``; view with ``tensorboard --logdir OUT/runs``);
* ``wandb``: ``wandb.init(name=..., config=...)`` (``pip install wandb``; ``WANDB_MODE=offline`` works);
* ``mlflow``: one mlflow run per bnnbench run (``pip install mlflow``; ``MLFLOW_TRACKING_URI`` as usual).

A requested logger whose package is missing is an error before any training (no silent skip). A logger
is not part of a run's identity.
"""
from __future__ import annotations

import importlib
import numbers
from pathlib import Path
from typing import Any

from bnnbench.errors import ConfigError, RunError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_loggers(names: list[str]) -> None:
    """Refuse unknown loggers and loggers whose package is not installed (called before training)."""
    for n in names:
        if n not in PACKAGES:
            raise ConfigError(f"--logger {n!r} is not known; allowed: {', '.join(PACKAGES)}")
        try:
            importlib.import_module(PACKAGES[n])
        except ImportError:
            raise ConfigError(f"--logger {n} needs the {PACKAGES[n]} package: pip install {PACKAGES[n]}") from None


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row (booleans, None, text and nested statistics left out)."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and k != "epoch"}


def logger_dir(run_dir: Path, name: str) -> Path:
    """``run_dir/name`` for a tracker's files: a plain folder this process can write (a symlink there is
    refused, so a received run directory cannot redirect the writes; a read-only folder is one message before
    the tracker's writer thread starts)."""
    d = Path(run_dir) / name
    if d.is_symlink() or (d.exists() and not d.is_dir()):
        raise RunError(f"{d} is a symbolic link or a file; the {name} logger writes a plain folder there: remove it")
    try:
        d.mkdir(exist_ok=True)
        probe = d / ".write_probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"--logger {name}: cannot write {d} ({exc.strerror or exc})") from None
    return d


class Loggers:
    """The loggers of one run; :meth:`log` mirrors a metrics row, :meth:`close` ends the tracker runs."""

    def __init__(self, names: list[str], run_dir: Path, config: dict):
        self.sinks = []
        for n in names:
            self.sinks.append(getattr(self, f"_open_{n}")(Path(run_dir), config))

    @staticmethod
    def _open_tensorboard(run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter  # deferred: an optional dependency (the track extra)
        w = SummaryWriter(log_dir=str(logger_dir(run_dir, "tensorboard")))
        w.add_text("config", f"```\n{config}\n```")

        def write(row: dict, step: int) -> None:
            for k, v in scalars(row).items():
                w.add_scalar(k, v, step)
            w.flush()
        return write, w.close

    @staticmethod
    def _open_wandb(run_dir: Path, config: dict):
        import wandb  # deferred: an optional dependency (pip install wandb)
        run = wandb.init(name=run_dir.name, config=config, dir=str(run_dir), reinit=True)
        return (lambda row, step: run.log(scalars(row), step=step), run.finish)

    @staticmethod
    def _open_mlflow(run_dir: Path, config: dict):
        import mlflow  # deferred: an optional dependency (pip install mlflow)
        active = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({k: str(v)[:250] for k, v in config.items() if not isinstance(v, dict)})
        return (lambda row, step: mlflow.log_metrics(scalars(row), step=step),
                lambda: mlflow.end_run() if active else None)

    def log(self, row: dict, step: int) -> None:
        for write, _ in self.sinks:
            write(row, step)

    def close(self) -> None:
        for _, close in self.sinks:
            close()
