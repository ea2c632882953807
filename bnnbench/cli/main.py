"""Command line: ``run_bench.py`` (also installed as the ``run_bench`` console script).

    run_bench.py --methods M [M ...] [--archs A ...] [--recipe R] [--track unified|paper] [--seeds N]
                 [--epochs E] [--set key=value ...] [--hp method.key=value ...] [--data-root DIR]
                 [--device auto|cpu|cuda] [--out DIR] [--plugin PATH_OR_MODULE] [--force] [--dry-run]
    run_bench.py list | report [--out DIR] [--format ...] | bench [...]     (``run_bench.py --help``)

Without a command, ``run`` is meant.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from bnnbench.errors import BnnBenchError, ConfigError, did_you_mean
from bnnbench.paths import default_data_root

EXIT_BAD_INPUT, EXIT_RUN_FAILED, EXIT_PREEMPTED = 2, 3, 75


def _console():
    from rich.console import Console
    console = Console(highlight=False)
    if not console.is_terminal:  # logs and CI: wide enough for the leaderboard, no wrapping of long lines
        console = Console(highlight=False, width=220)
    return console


def _warn_to(console):
    from rich.markup import escape
    return lambda msg: console.print(f"[yellow]warning:[/yellow] {escape(str(msg))}", soft_wrap=True)


DESCRIPTION = "Train and compare 1-bit (1W1A) BNN methods on shared backbones under standardized recipes."
COMMANDS = ("run", "report", "evaluate", "export", "bench", "deploy-bench", "list")


def build_main_parser() -> argparse.ArgumentParser:
    """``run_bench.py COMMAND ...``; without a command, ``run`` is meant (``run_bench.py --methods ovsw recu``)."""
    from bnnbench.cli import models as checkpoints
    from bnnbench.tools import bench, deploy_bench
    p = argparse.ArgumentParser(prog="run_bench.py", description=DESCRIPTION,
                                epilog="Without a command, 'run' is meant: run_bench.py --methods ovsw recu is "
                                       "run_bench.py run --methods ovsw recu. 'run_bench.py COMMAND --help' "
                                       "lists a command's flags.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    build_parser(sub.add_parser("run", help="train the method x backbone x seed matrix, then write the "
                                "leaderboard and plots (the default command)", description=DESCRIPTION))
    add_report_arguments(sub.add_parser("report", help="rebuild the leaderboard and plots from run directories",
                                        description="Rebuild the leaderboard from run directories alone."))
    checkpoints.add_evaluate_arguments(sub.add_parser(
        "evaluate", help="test top-1/top-5 of a finished run or a 1-bit export, next to what the run recorded",
        description=checkpoints.__doc__.split("\n\n")[0]))
    checkpoints.add_export_arguments(sub.add_parser(
        "export", help="write a finished run's model with 1 bit per binary weight (bnnbench/deploy/export.py)",
        description=checkpoints.__doc__.split("\n\n")[0]))
    bench.add_arguments(sub.add_parser("bench", help="measure training-step speed of every method against "
                                       "full precision", description=bench.__doc__.split("\n\n")[0]))
    deploy_bench.add_arguments(sub.add_parser(
        "deploy-bench", help="measure 1-bit inference (bit-packed XNOR-popcount kernels) against FP32, per "
        "binary layer and end to end, with the exactness check", description=deploy_bench.__doc__.split("\n\n")[0]))
    lp = sub.add_parser("list", help="list methods, backbones and recipes")
    lp.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                    help="load a third-party method/architecture plugin first (repeatable)")
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
    p.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                   help="load a third-party method/architecture plugin (repeatable)")
    p.add_argument("--force", action="store_true", help="rerun runs that are already done")
    p.add_argument("--dry-run", action="store_true", help="show the run matrix and what would run")
    p.add_argument("--no-download", action="store_true", help="never try to download a missing dataset")
    p.add_argument("--list", action="store_true", help="list methods, backbones and recipes")
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
    return p


def add_report_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``report`` command's flags."""
    p.add_argument("--out", type=Path, default=Path("results"),
                   help="results folder holding runs/ (default: results); the leaderboard files go here")
    p.add_argument("--format", default="rich", choices=["rich", "md", "csv", "latex", "json", "html"],
                   help="what to print (every format is also written to OUT/leaderboard.*, and the "
                        "self-contained page to OUT/report.html; html prints that page's path; default rich)")
    p.add_argument("--baseline", metavar="ROW",
                   help="a row label (e.g. ovsw, or 'ovsw[ags=False,sad=False]'): every row gets its difference "
                        "to it with a 95%% interval and a Holm-corrected p-value")
    p.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                   help="load a third-party plugin first (only needed for its published numbers)")
    return p


def parse_assignments(items: list[str], flag: str) -> list[tuple[str, object]]:
    """KEY=VALUE pairs of ``flag``; a key given twice is an error (the earlier one would be lost)."""
    from bnnbench.config.recipes import parse_scalar
    out, seen = [], set()
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key in seen:
            raise ConfigError(f"{flag} {key}: given twice; give each key once")
        seen.add(key)
        out.append((key, parse_scalar(raw)))
    return out


def cmd_list(console) -> int:
    from bnnbench.config.recipes import load_recipe, recipe_names
    from bnnbench.plugins import ARCHITECTURES, METHODS
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


def _cli_hparams(args, methods: list[str]) -> dict[str, dict]:
    """--hp METHOD.KEY=VALUE grouped by method; a method that is not being run is an error."""
    from bnnbench.plugins import METHODS
    hps: dict[str, dict] = {}
    for key, value in parse_assignments(args.hp, "--hp"):
        if "." not in key:
            raise ConfigError(f"--hp {key}={value}: expected METHOD.KEY=VALUE, e.g. ovsw.delta=0.02")
        m, k = key.split(".", 1)
        METHODS.get(m, source="--hp")
        if m not in methods:
            raise ConfigError(f"--hp {key}={value}: method {m!r} is not among --methods ({', '.join(methods)}); "
                              f"add it there or drop the --hp")
        hps.setdefault(m, {})[k] = value
    return hps


def _settings(recipe, method: str, args, sets) -> tuple[dict, str, dict, int]:
    """(validated training settings, track note, changes from the recipe, the recipe's epochs)."""
    from bnnbench.config.recipes import check_train
    train, note = recipe.resolve(method, args.track)
    base = dict(train)
    for key, value in sets:
        if key == "method_hparams":
            raise ConfigError("--set method_hparams: use --hp METHOD.KEY=VALUE instead")
        train[key] = value
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if getattr(args, "deterministic", False):
        train["deterministic"] = True
    flags = " and ".join(f for f, used in (("--set", sets), ("--epochs", args.epochs is not None),
                                           ("--deterministic", getattr(args, "deterministic", False))) if used)
    where = f"{flags} on recipe {recipe.path}" if flags else f"recipe {recipe.path}"
    hparams = train.pop("method_hparams")          # this method's own mapping, validated by the Method
    train = {**check_train(train, where, partial=False), "method_hparams": hparams}
    from bnnbench.data.catalog import dataset_kind
    if train["loader"] == "dali" and dataset_kind(recipe.dataset) != "folder":
        raise ConfigError(f"{where}: loader = 'dali' is for ImageFolder datasets (imagenet), not {recipe.dataset}")
    from bnnbench.config.spec import UNHASHED_SETTINGS
    changes = {k: train[k] for k in train
               if k != "method_hparams" and k not in UNHASHED_SETTINGS and train[k] != base.get(k)}
    return train, note, changes, base["epochs"]


def _method_hparams(method: str, family: str, recipe_hp: dict, cli_hp: dict, recipe_path: str) -> tuple[dict, dict]:
    """(resolved hyperparameters, those --hp changed from what the recipe gives)."""
    from bnnbench.plugins import METHODS
    cls = METHODS.get(method)
    base = cls(family=family, overrides=recipe_hp, source=f"recipe {recipe_path}").hp
    hp = cls(family=family, overrides={**recipe_hp, **cli_hp}, source=f"recipe {recipe_path} and --hp").hp
    return hp, {f"{method}.{k}": hp[k] for k in sorted(cli_hp) if hp[k] != base[k]}


def _make_spec(base: dict, hp_changes: dict, init: dict, settings: dict, changed: dict, **fields):
    """One RunSpec of the matrix; ``--init-from`` (``init``) applies to a run that has no stage to start from."""
    from bnnbench.config.spec import RunSpec, settings_from
    if fields.get("method", base["method"]) != base["method"]:  # a teacher shared by every method
        from bnnbench.plugins import ARCHITECTURES, METHODS
        family = ARCHITECTURES.get(base["backbone"]).family
        base = {**base, "method": fields["method"], "method_hparams": METHODS.get(fields["method"])(family=family).hp}
        hp_changes = {}
    fields.pop("method", None)
    cli_init = bool(init) and not fields.get("init_from") and fields.get("stage") != "teacher"
    extra = {"init_from": init} if cli_init else {}
    mark = {"init_from": init["sha256"][:8]} if cli_init else {}
    return RunSpec(**base, settings=settings_from(settings), changes={**changed, **hp_changes, **mark}, **extra,
                   **fields)


def plan(args) -> tuple[list, object]:
    """Resolve the run matrix (method x backbone x seed) into RunSpecs, validating everything first."""
    from bnnbench.config.recipes import load_recipe
    from bnnbench.plugins import ARCHITECTURES, METHODS, provenance
    if not args.methods:
        raise ConfigError("--methods is required (e.g. --methods ovsw recu, or --methods all); "
                          "see --list for what is registered")
    methods = METHODS.names() if args.methods == ["all"] else list(dict.fromkeys(args.methods))
    for m in methods:
        METHODS.get(m, source="--methods")
    recipe = load_recipe(args.recipe)
    archs = list(dict.fromkeys(args.archs or [recipe.backbone]))
    for a in archs:
        ARCHITECTURES.get(a, source="--archs")
    if args.seeds < 1 or args.seeds > 10_000:
        raise ConfigError(f"--seeds {args.seeds}: must be between 1 and 10000")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs}: must be at least 1")
    from bnnbench.engine.init import resolve_init
    from bnnbench.runner.stages import expand, split_scoped
    sets, scoped = split_scoped(parse_assignments(args.sets, "--set"), recipe.stages, recipe.teacher,
                                f"recipe {recipe.path}")
    hps = _cli_hparams(args, methods)
    init = resolve_init(args.init_from) if getattr(args, "init_from", None) else {}
    overrides = {**dict(sets), **({"epochs": args.epochs} if args.epochs is not None else {}),
                 **({"deterministic": True} if getattr(args, "deterministic", False) else {})}
    specs = []
    for arch in archs:
        family = ARCHITECTURES.get(arch).family
        for method in methods:
            train, note, changes, recipe_epochs = _settings(recipe, method, args, sets)
            hp, hp_changes = _method_hparams(method, family, train.pop("method_hparams"), hps.get(method, {}),
                                             recipe.path)
            plugins = {k: v for k, v in (("method", provenance(METHODS.get(method))),
                                         ("backbone", provenance(ARCHITECTURES.get(arch)))) if v}
            for seed in range(train["seed"], train["seed"] + args.seeds):
                base = dict(recipe=recipe.name, track=args.track, dataset=recipe.dataset, backbone=arch, method=method,
                            method_hparams=hp, seed=seed, recipe_epochs=recipe_epochs, track_note=note,
                            backbone_options=dict(recipe.backbone_options) if arch == recipe.backbone else {},
                            plugins=plugins, download=not args.no_download)
                make = functools.partial(_make_spec, base, hp_changes, init)
                specs.extend(expand(recipe.stages, recipe.teacher, train, changes, make, f"recipe {recipe.path}",
                                    overrides, scoped))
    return list({s.name: s for s in specs}.values()), recipe  # a shared teacher is one run


def cmd_run(args, console) -> int:
    from bnnbench.data.catalog import dataset_kind
    from bnnbench.engine import distributed as ddp
    from bnnbench.engine.run import checked_data, resolve_device
    from bnnbench.store import RunDir, check_writable
    configs, recipe = plan(args)
    from bnnbench.engine.loggers import check_loggers
    check_loggers(args.logger)
    if args.launcher == "slurm":
        device = args.device  # resolved inside each job, on the node that runs it
    else:
        device = ddp.setup(args.device) or resolve_device(args.device)
    if not ddp.is_main():
        console.quiet = True
    out = args.out
    data_root = args.data_root or default_data_root()
    runs_dir = out / "runs"
    todo, skipped = [], []
    for cfg in configs:
        rd = RunDir(runs_dir / cfg.name)
        (skipped if rd.is_done(cfg.hash) and not args.force else todo).append((cfg, rd))
    if ddp.is_main() and not args.dry_run:
        for _, rd in skipped:
            rd.tidy_finished()
    console.print(f"recipe [bold]{recipe.name}[/bold] ({args.track} track), {len(configs)} runs: "
                  f"{len(todo)} to run, {len(skipped)} already done; device {device}; results in {out}")
    if args.dry_run:
        for cfg, rd in todo:
            from rich.markup import escape
            console.print(f"  would run  {rd.name}  ({escape(cfg.label)}: {cfg.track_note})")
        for _, rd in skipped:
            console.print(f"  done       {rd.name}")
        return 0
    if ddp.is_main():
        check_writable(runs_dir)
    if dataset_kind(recipe.dataset) == "tensor":
        for cfg, _ in todo:  # missing data, bad subsets and oversized batches fail before any compute
            checked_data(cfg, data_root)
    if args.launcher == "slurm":
        from bnnbench.runner.slurm import submit
        if args.force:
            for _, rd in todo:
                rd.clear()
        failures = submit(todo, args, data_root, console)
        if not args.wait:
            return 0
    else:
        failures = run_matrix(todo, device, data_root, args.force, console, args.logger)
    if failures is None:
        return EXIT_PREEMPTED
    if not ddp.is_main():
        return EXIT_RUN_FAILED if failures else 0
    files, plots = publish(out, console, "rich")
    console.print("leaderboard written to " + ", ".join(str(f) for f in files.values())
                  + f"; {len(plots)} plots in {out / 'plots'}")
    return EXIT_RUN_FAILED if failures else 0


def publish(out: Path, console, fmt: str, baseline: str | None = None) -> tuple[dict, list]:
    """Collect the runs under ``out``, print the leaderboard in ``fmt`` and write its files and plots.

    The table is printed first; files that cannot be written (read-only folder, full disk) are reported as
    warnings, not tracebacks.
    """
    from bnnbench.report.plots import plot_all
    from bnnbench.report.tables import build_tables, collect, print_console, render, write_reports
    warn = _warn_to(console)
    runs = collect(out, warn)
    tables = build_tables(runs, baseline)
    if baseline and not any(r["method"] == baseline for t in tables for r in t["rows"]):
        labels = sorted({r["method"] for t in tables for r in t["rows"]})
        raise ConfigError(f"--baseline {baseline!r} is no row of the leaderboard{did_you_mean(baseline, labels)}; "
                          f"rows: {', '.join(labels) or '(none)'}")
    if fmt == "rich":
        print_console(tables, console)
    elif fmt != "html":
        sys.stdout.write(render(tables, fmt))
        sys.stdout.flush()
    files, plots = {}, []
    try:
        files = write_reports(out, tables)
        plots = plot_all(runs, out, warn)
        from bnnbench.report.html import render_html
        from bnnbench.store import atomic_write_text
        atomic_write_text(out / "report.html", render_html(tables, runs, out))
        files["html"] = out / "report.html"
    except OSError as exc:
        warn(f"could not write the leaderboard files or plots under {out} ({exc.strerror or exc}); the table "
             f"above is complete")
    if fmt == "html" and "html" in files:
        console.print(f"report page: {files['html']}")
    return files, plots


def run_matrix(todo: list, device, data_root: Path, force: bool, console, loggers=()) -> int | None:
    """Run the pending runs one by one; returns the number of failed runs, or None when preempted."""
    import time
    started = time.time()
    from rich.markup import escape

    from bnnbench import faults
    from bnnbench.engine import distributed as ddp
    from bnnbench.engine.progress import RichProgress
    from bnnbench.engine.run import PREEMPTION, Preempted, run_or_fail
    warn = _warn_to(console)
    failures = 0
    for k, (cfg, rd) in enumerate(todo, 1):
        if PREEMPTION.signum is not None:
            console.print(f"[yellow]preempted[/yellow]: signal {PREEMPTION.signum} before {rd.name}; "
                          f"rerun the same command to continue the sweep")
            return None
        # rank 0 claims and prepares the run directory; the other ranks follow its decision
        decision = ddp.broadcast(rd.prepare(cfg, force, since=started) if ddp.is_main() else None)
        if decision != "run":
            console.print(f"[{k}/{len(todo)}] {rd.name}: {decision}")
            continue
        try:
            console.print(f"[{k}/{len(todo)}] [bold]{escape(cfg.label)}[/bold] on {cfg.backbone} seed {cfg.seed}"
                          f" -> {escape(str(rd.path))}")
            try:
                with RichProgress(console, cfg.method) as progress:
                    result = run_or_fail(cfg, rd, device, data_root, progress=progress, warn=warn,
                                         loggers=tuple(loggers))
            except Preempted as exc:
                console.print(f"[yellow]preempted[/yellow]: {exc}")
                return None
            if result.status != "done":
                failures += 1
                console.print(f"[red]run failed:[/red] {escape(str(result.reason))}")
            else:
                silent = "" if result.silent is None else f"silent {100 * result.silent:.1f}%  "
                console.print(f"  final top-1 {result.final_top1:.2f}  best {result.best_top1:.2f}  "
                              f"{silent}{result.wall_time_s:.0f}s")
        finally:
            if ddp.is_main():
                faults.point("after_result")
                rd.release()
    return failures


def cmd_report(args, console) -> int:
    from bnnbench.plugins import load_plugin
    for spec in args.plugin:
        load_plugin(spec)
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"report --out {args.out}: is a file; give the results folder (the one holding runs/)")
    if not (args.out / "runs").is_dir():
        raise ConfigError(f"report --out {args.out}: no runs/ folder there; give the --out of a run_bench.py run")
    publish(args.out, console, args.format, args.baseline)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = _console()
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["run", *argv]  # the front door: run_bench.py --methods ovsw recu
    try:
        args = build_main_parser().parse_args(argv)
        if args.command == "report":
            return cmd_report(args, console)
        if args.command in ("evaluate", "export"):
            from bnnbench.cli import models as checkpoints
            return (checkpoints.cmd_evaluate if args.command == "evaluate" else checkpoints.cmd_export)(args, console)
        if args.command == "bench":
            from bnnbench.tools.bench import run as bench_run
            return bench_run(args, console)
        if args.command == "deploy-bench":
            from bnnbench.tools.deploy_bench import run as deploy_bench_run
            return deploy_bench_run(args, console)
        from bnnbench.plugins import ensure_builtins, load_plugin
        ensure_builtins()
        for spec in args.plugin:
            load_plugin(spec)
        if args.command == "list" or args.list:
            return cmd_list(console)
        from bnnbench.engine import distributed as ddp
        from bnnbench.engine.run import PREEMPTION
        try:
            with PREEMPTION:  # a SIGTERM/SIGUSR1/SIGUSR2 from here on checkpoints and exits with status 75
                return cmd_run(args, console)
        finally:
            ddp.shutdown()
    except BnnBenchError as exc:
        from rich.markup import escape
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: finished epochs are checkpointed; rerun the same command "
                      "to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
