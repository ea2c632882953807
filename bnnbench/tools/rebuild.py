"""``run_bench.py rebuild-weights RUN_DIR... [--data-root D] [--device cpu] [--scratch DIR]``: restore the
weights of finished runs whose ``checkpoint.pt`` is not on this machine (checkpoints are not committed with
the evidence), so that ``evaluate``, ``export`` and ``robustness`` can use them.

Each such run is trained again from its own ``config.yaml`` (the same RunSpec, so the same seed, data order
and code path) in a scratch folder (default ``<results>/.rebuild``; resumable like any run), and its weights
are installed only when **every epoch's training loss equals the recorded one bit for bit**: then the
retraining followed the original trajectory and its weights are the run's. Otherwise the first epoch that
differs is named and nothing is installed. ``rebuilt.json`` records the check and how far the re-evaluated
test top-1 is from the recorded one (an evaluation path changed since the run only moves float rounding).
The run's ``result.json`` and ``metrics.jsonl`` are never touched.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bnnbench.engine import resolve_device
from bnnbench.errors import BnnBenchError, RunError
from bnnbench.paths import default_data_root
from bnnbench.runner import execute
from bnnbench.store import RunDir, finished_run_dirs
from bnnbench.tools import add_data_arguments, add_run_dirs_argument

EXIT_SOME_FAILED = 3


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_run_dirs_argument(p)
    p.add_argument("--scratch", type=Path, default=None,
                   help="where the retraining runs (default: .rebuild/ beside each run's runs/ folder)")
    return add_data_arguments(p, "the device the runs trained on (default cpu)")


def has_weights(rd: RunDir, epochs: int) -> bool:
    state = rd.load_checkpoint(warn=lambda _m: None)
    return state is not None and state.get("epoch") == epochs - 1 and not state.get("partial")


def compare(recorded: list[dict], again: list[dict]) -> dict:
    """Training losses equal epoch by epoch (else the first epoch that differs), and the largest test top-1
    difference."""
    if len(recorded) != len(again):
        return {"equal": False, "first_difference": f"{len(again)} epochs against {len(recorded)} recorded"}
    for a, b in zip(recorded, again):
        if a.get("train_loss") != b.get("train_loss"):
            return {"equal": False, "first_difference": f"epoch {a['epoch'] + 1}: train loss "
                                                        f"{b.get('train_loss')!r} against {a.get('train_loss')!r}"}
    diffs = [abs(a["test_top1"] - b["test_top1"]) for a, b in zip(recorded, again)
             if a.get("test_top1") is not None and b.get("test_top1") is not None]
    return {"equal": True, "epochs": len(recorded), "max_test_top1_difference": max(diffs, default=0.0)}


def rebuild(run_dir: Path, scratch: Path, device, data_root: Path, warn) -> dict | None:
    """Retrain ``run_dir`` in ``scratch`` and install its weights when the trajectory matches; None when the
    run already has its weights."""
    rd = RunDir(run_dir)
    spec = rd.read_spec()
    if has_weights(rd, spec.settings.epochs):
        return None
    again = RunDir(scratch / spec.name)
    out = execute(spec, again, device, data_root, warn=warn)
    if not again.is_done(spec.hash):
        raise RunError(f"{run_dir}: the retraining in {again.path} did not finish ({out.decision})")
    check = compare(rd.read_metrics(), again.read_metrics())
    if not check["equal"]:
        raise RunError(f"{run_dir}: the retraining did not follow the recorded run ({check['first_difference']}); "
                       f"its weights are not this run's and were not installed")
    rd.adopt_weights(again, {"source": str(again.path), **check})
    return check


def run(args, console) -> int:
    dirs = finished_run_dirs(args.paths, lambda m: console.print(f"[yellow]{m}[/yellow]", soft_wrap=True),
                             "rebuild-weights")
    device, data_root = resolve_device(args.device), args.data_root or default_data_root()
    failed = 0
    for d in dirs:
        scratch = args.scratch or d.parent.parent / ".rebuild"
        try:
            check = rebuild(d, scratch, device, data_root, lambda m: console.print(m, soft_wrap=True))
        except BnnBenchError as exc:
            failed += 1
            console.print(f"[red]{d.name}[/red]: {exc}", soft_wrap=True)
            continue
        console.print(f"{d.name}: " + ("has its weights" if check is None else
                      f"weights rebuilt ({check['epochs']} epochs, training loss equal in every one; test top-1 "
                      f"within {check['max_test_top1_difference']:.2f} of the recorded)"), soft_wrap=True)
    return EXIT_SOME_FAILED if failed else 0
