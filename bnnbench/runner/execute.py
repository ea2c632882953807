"""The one run protocol, for local sweeps and Slurm jobs alike: claim -> train (or resume) -> release.

:func:`execute` claims a run directory (rank 0 decides, the other ranks follow), trains or resumes it with
the finished-run hooks of the suite (the 1-bit deployment measurement, ``deploy.json``), and always
releases the claim; a run that raises fails alone (:func:`bnnbench.engine.run_or_fail`), a signal
checkpoints and raises :class:`~bnnbench.engine.Preempted`. :func:`run_sweep` is the local loop over the
pending runs; ``bnnbench/runner/slurm.py`` calls :func:`execute` once per job.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.markup import escape

from bnnbench import faults
from bnnbench.config.evaluation import RobustnessRequest, robustness_request
from bnnbench.config.spec import RunResult, RunSpec
from bnnbench.deploy.measure import record_run
from bnnbench.engine import PREEMPTION, Preempted, run_or_fail
from bnnbench.engine import distributed as ddp
from bnnbench.engine.progress import Progress, RichProgress
from bnnbench.engine.robustness import evaluate_many, is_complete
from bnnbench.errors import describe_exception, warn_to
from bnnbench.store import RunDir

#: what every finished run of the runner does next: export to 1 bit and measure it (deploy.json)
ON_DONE = (record_run,)


@dataclass(frozen=True)
class Outcome:
    """``decision``: "run", or why the run was not run here (done by another worker, claimed); ``result``
    when it ran."""
    decision: str
    result: RunResult | None = None


def execute(spec: RunSpec, rd: RunDir, device: torch.device, data_root: Path, *, force: bool = False,
            since: float | None = None, progress: Progress | None = None, warn: Callable[[str], None] = print,
            loggers: Sequence[str] = (), announce: Callable[[], None] = lambda: None) -> Outcome:
    """Claim, train (or resume) and release one run. Raises Preempted (the state is checkpointed)."""
    decision = ddp.broadcast(rd.prepare(spec, force, since=since) if ddp.is_main() else None)
    if decision != "run":
        return Outcome(decision)
    try:
        announce()
        with PREEMPTION:
            result = run_or_fail(spec, rd, device, data_root, progress=progress, warn=warn, loggers=tuple(loggers),
                                 on_done=ON_DONE)
        return Outcome(decision, result)
    finally:
        if ddp.is_main():
            faults.point("after_result")
            rd.release()


def run_sweep(todo: list[tuple[RunSpec, RunDir]], device: torch.device, data_root: Path, force: bool, console,
              loggers: Sequence[str] = ()) -> int | None:
    """Run the pending runs here, one by one; returns the number of failed runs, or None when preempted."""
    started, failures = time.time(), 0
    warn = warn_to(console)
    for k, (spec, rd) in enumerate(todo, 1):
        if PREEMPTION.signum is not None:
            console.print(f"[yellow]preempted[/yellow]: signal {PREEMPTION.signum} before {rd.name}; "
                          f"rerun the same command to continue the sweep")
            return None
        line = (f"[{k}/{len(todo)}] [bold]{escape(spec.label)}[/bold] on {spec.backbone} seed {spec.seed} -> "
                f"{escape(str(rd.path))}")
        try:
            with RichProgress(console, spec.method) as progress:
                out = execute(spec, rd, device, data_root, force=force, since=started, progress=progress, warn=warn,
                              loggers=loggers, announce=lambda line=line: console.print(line))
        except Preempted as exc:
            console.print(f"[yellow]preempted[/yellow]: {exc}")
            return None
        if out.result is None:
            console.print(f"[{k}/{len(todo)}] {rd.name}: {out.decision}")
        else:
            failures += report_result(out.result, console)
    return failures


def report_result(result: RunResult, console) -> int:
    """Print a finished run's line; 1 when it failed, else 0."""
    if result.status != "done":
        console.print(f"[red]run failed:[/red] {escape(str(result.reason))}")
        return 1
    silent = "" if result.silent is None else f"silent {100 * result.silent:.1f}%  "
    console.print(f"  final top-1 {result.final_top1:.2f}  best {result.best_top1:.2f}  "
                  f"{silent}{result.wall_time_s:.0f}s")
    return 0



def evaluate_extras(runs: list[tuple[RunSpec, RunDir]], device: torch.device, data_root: Path, console) -> int:
    """The recipe's evaluation extras (``eval: {robustness: ...}``) for every finished run that asks for them
    and lacks a figure (an interrupted evaluation resumes); returns how many failed (each is printed)."""
    pending: dict[RobustnessRequest, list[Path]] = {}
    for spec, rd in runs:
        request = robustness_request(dict(spec.evaluation), f"recipe {spec.recipe}")
        if request is not None and rd.is_done(spec.hash) and not is_complete(rd.path, request):
            pending.setdefault(request, []).append(rd.path)
    failed = 0
    for request, dirs in pending.items():
        console.print(f"robustness of {len(dirs)} runs (the recipe's eval)")
        try:
            failed += len(evaluate_many(dirs, data_root, device, request, on_error=lambda d, exc: console.print(
                f"[red]robustness of {escape(d.name)} failed[/red]: {escape(str(exc))}", soft_wrap=True))[1])
        except Exception as exc:  # noqa: BLE001 - the runs stay done; the report shows '-' with the reason
            failed += len(dirs)
            console.print(f"[red]robustness failed[/red]: {escape(describe_exception(exc))}", soft_wrap=True)
    return failed
