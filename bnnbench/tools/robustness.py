"""``run_bench.py robustness RUN_DIR... [--corruptions ...] [--severities ...] [--epsilons ...] [--subset N]
[--transfer-source RUN_DIR]``: finished runs under the 15 common corruptions and under FGSM / PGD.

Each RUN_DIR is a finished run's directory or a results folder (every finished run under its ``runs/``).
Writes ``robustness.json`` in each run directory entry by entry (``bnnbench/engine/robustness.py``), so an
interrupted command resumes where it stopped; the corrupted images are made once per dataset and shared by
every run of the command. ``run_bench.py report`` then shows mCA and PGD top-1 columns.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bnnbench.config.evaluation import DEFAULT_EPSILONS, PGD_STEPS, RobustnessRequest
from bnnbench.data.corruptions import CORRUPTIONS, SEVERITIES
from bnnbench.engine import resolve_device
from bnnbench.engine.robustness import evaluate_many
from bnnbench.paths import default_data_root
from bnnbench.store import finished_run_dirs
from bnnbench.tools import add_data_arguments, add_run_dirs_argument

EXIT_SOME_FAILED = 3


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_run_dirs_argument(p)
    p.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), metavar="NAME",
                   help=f"corruptions to apply (default: all 15: {', '.join(CORRUPTIONS)})")
    p.add_argument("--severities", nargs="+", type=int, default=list(SEVERITIES), metavar="S",
                   help="severities 1..5 (default: all)")
    p.add_argument("--epsilons", nargs="+", type=float, default=list(DEFAULT_EPSILONS), metavar="EPS",
                   help="FGSM/PGD L-inf radii in pixel levels, EPS/255 of the [0, 1] scale (default: 1 2 8)")
    p.add_argument("--pgd-steps", type=int, default=PGD_STEPS, help="PGD iterations (default 10)")
    p.add_argument("--subset", type=int, default=None, metavar="N",
                   help="evaluate the first N test images (default: the run's whole test set)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions and PGD's random start (default 0)")
    p.add_argument("--transfer-source", type=Path, metavar="RUN_DIR",
                   help="a finished full-precision run (binarize: none) of the same dataset and backbone: PGD "
                        "examples crafted on it are evaluated on each run (the transfer attack)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace figures a run's robustness.json holds for another subset, seed or PGD steps "
                        "(without it, that is an error naming them)")
    return add_data_arguments(p)


def request_of(args) -> RobustnessRequest:
    req = RobustnessRequest(corruptions=tuple(args.corruptions), severities=tuple(args.severities),
                            epsilons=tuple(args.epsilons), pgd_steps=args.pgd_steps, subset=args.subset,
                            seed=args.seed, transfer_source=args.transfer_source, overwrite=args.overwrite)
    req.check("robustness flags")
    return req


def summary_table(docs: list[tuple[Path, dict]]) -> Table:
    table = Table(title="robustness (top-1 %)")
    for col in ("run", "clean", "mCA", "rel. drop", "FGSM", "PGD", "transfer PGD"):
        table.add_column(col, overflow="fold")
    for path, doc in docs:
        s = doc.get("summary", {})
        table.add_row(path.name, f"{doc['clean_top1']:.2f}",
                      "-" if s.get("mca") is None else f"{s['mca']:.2f} ({s['conditions']})",
                      "-" if s.get("relative_drop") is None else f"{100 * s['relative_drop']:.1f}%",
                      _by_eps(doc.get("fgsm")), _by_eps(doc.get("pgd")),
                      _by_eps((doc.get("transfer") or {}).get("pgd")))
    return table


def _by_eps(d: dict | None) -> str:
    return " ".join(f"{k}:{v:.1f}" for k, v in d.items()) if d else "-"


def _stepper(bar: Progress, task, total: int, console):
    """Advances the progress bar; where the console is no terminal (a log file), whose bar shows only at the
    end, also prints a line at every tenth of the work, so that a background log shows progress."""
    done = [0]

    def step(label: str) -> None:
        bar.update(task, description=label, advance=1)
        done[0] += 1
        if not console.is_terminal and done[0] * 10 // total > (done[0] - 1) * 10 // total:
            console.print(f"robustness: {done[0]}/{total} steps ({label})", soft_wrap=True)
    return step


def run(args, console) -> int:
    request = request_of(args)
    dirs = finished_run_dirs(args.paths, lambda m: console.print(f"[yellow]{m}[/yellow]", soft_wrap=True),
                             "robustness")
    device, data_root = resolve_device(args.device), args.data_root or default_data_root()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    per_run = len(request.corruptions) * len(request.severities) + 3 * len(request.epsilons)
    total = per_run * len(dirs)
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("robustness", total=total)
        evals, failed = evaluate_many(
            dirs, data_root, device, request, _stepper(bar, task, total, console),
            lambda d, exc: console.print(f"[red]{d}[/red]: {exc}", soft_wrap=True))
    console.print(summary_table([(ev.rd.path, ev.doc) for ev in evals]))
    console.print(f"{len(evals)} runs evaluated, robustness.json in each run directory"
                  + (f"; {len(failed)} failed (above)" if failed else ""), soft_wrap=True)
    return EXIT_SOME_FAILED if failed else 0
