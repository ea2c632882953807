"""Command line: ``run_bench.py`` (also installed as the ``run_bench`` / ``bnnbench`` console scripts).

    run_bench.py --methods M [M ...] [--archs A ...] [--recipe R] [--track unified|paper] [--seeds N]
                 [--epochs E] [--set key=value ...] [--hp method.key=value ...] [--data-root DIR]
                 [--device auto|cpu|cuda] [--out DIR] [--plugin PATH_OR_MODULE] [--force] [--dry-run]
    run_bench.py list | report | evaluate | export | robustness | rebuild-weights | bench | deploy-bench | summary
                                                                                  (``run_bench.py --help``)

Without a command, ``run`` is meant. This module only parses flags and calls the suite: a sweep is planned
by :func:`bnnbench.runner.plan` from a :class:`~bnnbench.runner.SweepRequest` built here, run by
:func:`bnnbench.runner.run_sweep` (or submitted to Slurm), and published by :func:`bnnbench.report.publish`.
Nothing in the package imports this module.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bnnbench.cli import models
from bnnbench.config.recipes import load_recipe, recipe_names
from bnnbench.data.catalog import is_folder_dataset
from bnnbench.engine import PREEMPTION, checked_data, resolve_device
from bnnbench.engine import distributed as ddp
from bnnbench.engine.loggers import check_loggers
from bnnbench.errors import BnnBenchError, ConfigError
from bnnbench.paths import default_data_root
from bnnbench.plugins import ARCHITECTURES, METHODS, load_plugins
from bnnbench.report.console import CONSOLE_COLUMNS, check_columns
from bnnbench.report.console import DEFAULT as DEFAULT_COLUMNS
from bnnbench.report.publish import publish
from bnnbench.runner import SlurmOptions, SweepRequest, evaluate_extras, parse_assignments, plan, run_sweep, submit
from bnnbench.store import RunDir, check_output_file, check_writable
from bnnbench.tools import add_data_arguments, bench, deploy_bench, rebuild, robustness, summary

EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_PREEMPTED = 2, 3, 75


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal:  # logs and CI: wide enough for the leaderboard, no wrapping of long lines
        console = Console(highlight=False, width=220)
    return console


DESCRIPTION = "Train and compare 1-bit (1W1A) BNN methods on shared backbones under standardized recipes."
COMMANDS = ("run", "report", "evaluate", "export", "robustness", "rebuild-weights", "bench", "deploy-bench", "summary",
            "list")


def add_plugin_argument(p: argparse.ArgumentParser, why: str = "") -> None:
    """``--plugin PATH_OR_MODULE`` (repeatable): the one definition every command shares."""
    p.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                   help=f"load a third-party method/architecture plugin first (repeatable){why}")


def build_main_parser() -> argparse.ArgumentParser:
    """``run_bench.py COMMAND ...``; without a command, ``run`` is meant (``run_bench.py --methods ovsw recu``)."""
    p = argparse.ArgumentParser(prog="run_bench.py", description=DESCRIPTION,
                                epilog="Without a command, 'run' is meant: run_bench.py --methods ovsw recu is "
                                       "run_bench.py run --methods ovsw recu. 'run_bench.py COMMAND --help' "
                                       "lists a command's flags.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    build_parser(sub.add_parser("run", help="train the method x backbone x seed matrix, then write the "
                                "leaderboard and plots (the default command)", description=DESCRIPTION))
    add_report_arguments(sub.add_parser("report", help="rebuild the leaderboard and plots from run directories",
                                        description="Rebuild the leaderboard from run directories alone."))
    models_doc = models.__doc__.split("\n\n")[0]
    add_evaluate_arguments(sub.add_parser(
        "evaluate", help="test top-1/top-5 of a finished run or a 1-bit export, next to what the run recorded",
        description=models_doc))
    add_export_arguments(sub.add_parser(
        "export", help="write a finished run's model with 1 bit per binary weight (bnnbench/deploy/export.py)",
        description=models_doc))
    add_plugin_argument(robustness.add_arguments(sub.add_parser(
        "robustness", help="finished runs under the 15 common corruptions and FGSM/PGD attacks (robustness.json; "
        "the leaderboard's mCA and PGD columns)", description=robustness.__doc__.split("\n\n")[0])),
        " (the plugin the runs used)")
    add_plugin_argument(rebuild.add_arguments(sub.add_parser(
        "rebuild-weights", help="restore the weights of finished runs whose checkpoint.pt is missing here, by "
        "retraining each and checking every epoch's training loss", description=rebuild.__doc__.split("\n\n")[0])),
        " (the plugin the runs used)")
    add_plugin_argument(bench.add_arguments(sub.add_parser(
        "bench", help="measure training-step speed of every method against full precision",
        description=bench.__doc__.split("\n\n")[0])))
    add_plugin_argument(deploy_bench.add_arguments(sub.add_parser(
        "deploy-bench", help="measure 1-bit inference (bit-packed XNOR-popcount kernels) against FP32, per "
        "binary layer and end to end, with the exactness check", description=deploy_bench.__doc__.split("\n\n")[0])))
    add_plugin_argument(summary.add_arguments(sub.add_parser(
        "summary", help="per-layer model summary: shapes, parameters, MACs/BOPs, memory at 1 and 32 bit, totals",
        description=summary.__doc__.split("\n\n")[0])))
    add_plugin_argument(sub.add_parser("list", help="list methods, backbones and recipes"))
    return p


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``run`` command's flags (added to ``p``, or to a new parser)."""
    p = p or argparse.ArgumentParser(prog="run_bench.py run", description=DESCRIPTION)
    p.add_argument("--methods", nargs="+", metavar="M", help="methods to run, or 'all'")
    p.add_argument("--archs", nargs="+", metavar="A", help="backbones (default: the recipe's)")
    p.add_argument("--recipe", help="recipe name (recipes/<name>.yaml) or path (default: digits-cresnet20)")
    p.add_argument("--track", default="unified", help="unified (one recipe for all) or paper (each method's own)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds per method x backbone (default 1)")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (recorded, shown in tables)")
    p.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override recipe training settings, e.g. --set train_subset=10000 batch_size=128; "
                        "SCOPE.KEY=VALUE changes only a stage's or the teacher's runs, e.g. teacher.epochs=16")
    p.add_argument("--hp", nargs="+", action="extend", default=[], metavar="METHOD.KEY=VALUE",
                   help="override method hyperparameters, e.g. --hp ovsw.delta=0.02 recu.tau_max=0.98")
    p.add_argument("--data-root", type=Path, help="dataset folder (default: $BNNBENCH_DATA or ./data)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--logger", nargs="+", default=[], metavar="NAME", choices=["tensorboard", "wandb", "mlflow"],
                   help="mirror each run's metrics rows to tensorboard, wandb and/or mlflow (metrics.jsonl stays "
                        "the source of truth; see bnnbench/engine/loggers.py)")
    p.add_argument("--init-from", type=Path, metavar="PATH",
                   help="start every run from these weights (a checkpoint file or a run directory; tensors matched "
                        "by name and shape, the rest reported); part of the runs' identity")
    p.add_argument("--deterministic", action="store_true",
                   help="reproducible GPU numerics (no TF32, no cuDNN autotuning, deterministic algorithms, no "
                        "torch.compile); the same as --set deterministic=true, part of the runs' identity")
    p.add_argument("--out", type=Path, default=Path("results"), help="results folder (default: results)")
    add_plugin_argument(p)
    add_console_arguments(p)
    p.add_argument("--force", action="store_true", help="rerun runs that are already done")
    p.add_argument("--dry-run", action="store_true", help="show the run matrix and what would run")
    p.add_argument("--no-download", action="store_true", help="never try to download a missing dataset")
    p.add_argument("--list", action="store_true", help="list methods, backbones and recipes")
    add_cluster_arguments(p)
    return p



def add_cluster_arguments(p: argparse.ArgumentParser) -> None:
    """The ``run`` command's cluster flags (``--launcher slurm`` and its options)."""
    g = p.add_argument_group("cluster (see README, 'Running on a cluster')")
    g.add_argument("--launcher", default="local", choices=["local", "slurm"],
                   help="local: run here (default); slurm: one submitit job per pending run")
    g.add_argument("--slurm-partition", help="Slurm partition for --launcher slurm")
    g.add_argument("--gpus-per-run", type=int, default=1, help="GPUs per run (>1: DDP across them)")
    g.add_argument("--array-parallelism", type=int, default=64, help="max jobs of the array running at once")
    g.add_argument("--slurm-time", type=int, default=3 * 24 * 60, help="job time limit in minutes")
    g.add_argument("--slurm-cpus", type=int, default=10, help="CPUs per task (data loading)")
    g.add_argument("--slurm-executor", default="slurm", choices=["slurm", "local"],
                   help="local: the same submitit path as local processes (testing without a cluster)")
    g.add_argument("--wait", action="store_true", help="wait for the submitted jobs and print the leaderboard")


def add_console_arguments(p: argparse.ArgumentParser) -> None:
    """``--columns`` / ``--wide``: what the terminal's leaderboard shows (``run`` and ``report``)."""
    p.add_argument("--columns", nargs="+", metavar="ID", default=None,
                   help=f"the terminal's columns (default: {' '.join(DEFAULT_COLUMNS)}); ids: "
                        f"{', '.join(CONSOLE_COLUMNS)}. The files always hold every column")
    p.add_argument("--wide", action="store_true", help="show every column in the terminal")


def add_report_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``report`` command's flags."""
    add_console_arguments(p)
    p.add_argument("--out", type=Path, default=Path("results"),
                   help="results folder holding runs/ (default: results); the leaderboard files go here")
    p.add_argument("--format", default="rich", choices=["rich", "md", "csv", "latex", "json", "html"],
                   help="what to print (every format is also written to OUT/leaderboard.*, and the "
                        "self-contained page to OUT/report.html; html prints that page's path; default rich)")
    p.add_argument("--baseline", metavar="ROW",
                   help="a row label (e.g. ovsw, or 'ovsw[ags=False,sad=False]'): every row gets its difference "
                        "to it with a 95%% interval and a Holm-corrected p-value")
    add_plugin_argument(p, " (for report: only needed for its published numbers)")
    return p



def add_evaluate_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("path", type=Path, metavar="RUN_DIR_OR_EXPORT",
                   help="a finished run's directory, or a file written by 'run_bench.py export'")
    return _model_arguments(p)


def add_export_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("path", type=Path, metavar="RUN_DIR", help="a finished run's directory")
    p.add_argument("--out", type=Path, required=True, help="the export file to write (e.g. model.1bit.pt)")
    return _model_arguments(p)


def _model_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_data_arguments(p)
    add_plugin_argument(p, " (the plugin the run used)")
    return p


def sweep_request(args: argparse.Namespace) -> SweepRequest:
    """The typed request of the ``run`` flags (what :func:`bnnbench.runner.plan` takes)."""
    return SweepRequest(methods=list(args.methods or []), archs=list(args.archs or []), recipe=args.recipe,
                        track=args.track, seeds=args.seeds, epochs=args.epochs,
                        sets=parse_assignments(args.sets, "--set"), hps=parse_assignments(args.hp, "--hp"),
                        deterministic=args.deterministic, init_from=args.init_from, download=not args.no_download,
                        plugins=tuple(args.plugin))


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    return SlurmOptions(out=args.out, device=args.device, plugins=tuple(args.plugin), partition=args.slurm_partition,
                        executor=args.slurm_executor, gpus_per_run=args.gpus_per_run,
                        array_parallelism=args.array_parallelism, time_min=args.slurm_time, cpus=args.slurm_cpus,
                        wait=args.wait)


def cmd_list(console) -> int:
    console.print("[bold]methods[/bold]")
    for name in METHODS.names():
        console.print(f"  {name:12s} {METHODS.get(name)().describe()}")
    console.print("[bold]backbones[/bold]")
    for name in ARCHITECTURES.names():
        console.print(f"  {name:12s} {ARCHITECTURES.get(name).describe()}")
    console.print("[bold]recipes[/bold]")
    for name in recipe_names():
        console.print(f"  {name:20s} {load_recipe(name).description}")
    return 0


def published(method: str) -> list[dict]:
    """A method's published numbers: ``results/reference.yaml``'s and a plugin's own (``Method.published``)."""
    return METHODS.get(method).references() if method in METHODS else []


def cmd_run(args, console) -> int:
    check_columns(args.columns)
    specs, recipe = plan(sweep_request(args))
    check_loggers(args.logger)
    device = args.device if args.launcher == "slurm" else (ddp.setup(args.device) or resolve_device(args.device))
    if not ddp.is_main():
        console.quiet = True
    data_root = args.data_root or default_data_root()
    runs_dir = args.out / "runs"
    todo, skipped = [], []
    for spec in specs:
        rd = RunDir(runs_dir / spec.name)
        (skipped if rd.is_done(spec.hash) and not args.force else todo).append((spec, rd))
    if ddp.is_main() and not args.dry_run:
        for _, rd in skipped:
            rd.tidy_finished()
    console.print(f"recipe [bold]{recipe.name}[/bold] ({args.track} track), {len(specs)} runs: "
                  f"{len(todo)} to run, {len(skipped)} already done; device {device}; results in {args.out}")
    if args.dry_run:
        return _dry_run(todo, skipped, console)
    if ddp.is_main():
        check_writable(runs_dir)
    if not is_folder_dataset(recipe.dataset):
        for spec, _ in todo:  # missing data, bad subsets and oversized batches fail before any compute
            checked_data(spec, data_root)
    failures = _launch(todo, args, device, data_root, console)
    if failures is None:
        return EXIT_PREEMPTED
    if not ddp.is_main():
        return EXIT_RUN_FAILED if failures else 0
    if args.launcher == "local":
        failures += evaluate_extras(todo + skipped, device, data_root, console)
    files, plots = publish(args.out, console, "rich", published=published, columns=args.columns, wide=args.wide)
    console.print("leaderboard written to " + ", ".join(str(f) for f in files.values())
                  + f"; {len(plots)} plots in {args.out / 'plots'}")
    return EXIT_RUN_FAILED if failures else 0


def _dry_run(todo: list, skipped: list, console) -> int:
    for spec, rd in todo:
        console.print(f"  would run  {rd.name}  ({escape(spec.label)}: {spec.track_note})")
    for _, rd in skipped:
        console.print(f"  done       {rd.name}")
    return 0


def _launch(todo: list, args, device, data_root: Path, console) -> int | None:
    """Run the pending runs here or submit them to Slurm: failed runs, or None when preempted."""
    if args.launcher != "slurm":
        return run_sweep(todo, device, data_root, args.force, console, args.logger)
    if args.force:
        for _, rd in todo:
            rd.clear()
    failures = submit(todo, slurm_options(args), data_root, console)
    return failures if args.wait else 0


def cmd_report(args, console) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"report --out {args.out}: is a file; give the results folder (the one holding runs/)")
    if not (args.out / "runs").is_dir():
        raise ConfigError(f"report --out {args.out}: no runs/ folder there; give the --out of a run_bench.py run")
    publish(args.out, console, args.format, args.baseline, published=published, columns=args.columns,
            wide=args.wide)
    return 0


#: flags some commands take, with their smallest allowed value
MINIMUM = {"threads": 1, "batch": 1, "steps": 1, "pgd_steps": 1, "subset": 1, "warmup": 0, "rounds": 1,
           "num_classes": 2}


def check_arguments(args) -> None:
    """Numbers in range and output files writable, for every command, before any work (exit 2)."""
    for name, low in MINIMUM.items():
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v < low:
                raise ConfigError(f"--{name.replace('_', '-')} {v}: must be at least {low}")
    if getattr(args, "json", None) is not None:
        check_output_file(args.json, "--json")
    if args.command == "export":
        check_output_file(args.out, "export --out")


def _dispatch(args, console) -> int:
    check_arguments(args)
    load_plugins(args.plugin)
    if args.command == "report":
        return cmd_report(args, console)
    if args.command in ("evaluate", "export"):
        return (models.cmd_evaluate if args.command == "evaluate" else models.cmd_export)(args, console)
    if args.command == "robustness":
        return robustness.run(args, console)
    if args.command == "rebuild-weights":
        return rebuild.run(args, console)
    if args.command == "bench":
        return bench.run(args, console)
    if args.command == "deploy-bench":
        return deploy_bench.run(args, console)
    if args.command == "summary":
        return summary.run(args, console)
    if args.command == "list" or args.list:
        return cmd_list(console)
    try:
        with PREEMPTION:  # a SIGTERM/SIGUSR1/SIGUSR2 from here on checkpoints and exits with status 75
            return cmd_run(args, console)
    finally:
        ddp.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = _console()
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]  # the front door: run_bench.py --methods ovsw recu
    try:
        return _dispatch(build_main_parser().parse_args(argv), console)
    except BnnBenchError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished epochs are checkpointed; rerun the same command "
                      "to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
