"""Sweeps on Slurm through submitit: one job per pending run of the matrix.

``run_bench.py ... --launcher slurm --slurm-partition P --gpus-per-run G [--array-parallelism K]`` submits
the pending runs (runs already done are skipped, as locally) as one Slurm job array. Each job trains one
run with ``G`` GPUs (G > 1: one task per GPU, DDP through submitit's torch.distributed environment) and
resumes it from its last checkpoint when it starts, so a preempted or timed-out job that submitit requeues
continues where it stopped: the signal Slurm sends ahead of preemption or timeout (SIGUSR2, set by
submitit) makes the trainer checkpoint after the current step, mid-epoch included, and then passes the
signal on to submitit, which requeues the job. ``run_bench.py report --out DIR`` builds the leaderboard
from whatever has finished, at any time. ``--slurm-executor local`` runs the same submitit code path as
local processes (for testing without a cluster).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnbench.config.spec import dependencies
from bnnbench.engine import PREEMPTION, Preempted, resolve_device
from bnnbench.engine import distributed as ddp
from bnnbench.errors import ConfigError
from bnnbench.plugins import load_plugins
from bnnbench.runner.execute import execute
from bnnbench.store import RunDir


@dataclass(frozen=True)
class SlurmOptions:
    """How the pending runs are submitted (the command line's cluster flags)."""
    out: Path
    device: str = "auto"
    plugins: tuple[str, ...] = ()
    partition: str | None = None
    executor: str = "slurm"           # "slurm", or "local": the same submitit path as local processes
    gpus_per_run: int = 1
    array_parallelism: int = 64
    time_min: int = 3 * 24 * 60
    cpus: int = 10
    wait: bool = False


class RunJob:
    """The callable a submitit job executes: one run of the matrix through the run protocol
    (:func:`bnnbench.runner.execute.execute`)."""

    def __init__(self, out: str, data_root: str, device: str, plugins: list[str]):
        self.out, self.data_root, self.device, self.plugins = out, data_root, device, plugins

    def __call__(self, cfg) -> dict[str, Any]:
        import submitit  # deferred: an optional dependency (the slurm extra)
        load_plugins(self.plugins)
        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        device = ddp.setup(self.device) or resolve_device(self.device)
        rd = RunDir(Path(self.out) / "runs" / cfg.name)
        preempted = None
        try:
            out = execute(cfg, rd, device, Path(self.data_root))
        except Preempted as exc:
            preempted = exc
            print(f"preempted: {exc}", flush=True)
        finally:
            ddp.shutdown()
        if preempted is not None:
            # The run's state, mid-epoch included, is on disk. Hand the signal to submitit's own handler
            # (restored when the guard exited): it calls ``checkpoint`` below, requeues the job and exits.
            os.kill(os.getpid(), PREEMPTION.signum)
            time.sleep(5.0)  # the handler runs here; reached past only where it does not exit (SIGTERM)
            raise preempted
        return {"run": rd.name, "status": out.result.status if out.result else out.decision}

    def checkpoint(self, cfg):
        """Called by submitit on preemption/timeout: requeue; the new job resumes from the checkpoint."""
        import submitit  # deferred: an optional dependency (the slurm extra)
        return submitit.helpers.DelayedSubmission(RunJob(self.out, self.data_root, self.device, self.plugins), cfg)


def dependency_levels(todo: list[tuple[Any, Any]]) -> list[list[tuple[Any, Any]]]:
    """``todo`` in levels: level 0 depends on no pending run, level k + 1 on runs of level <= k (a run
    whose dependency is already done, or not in this sweep, starts at once and checks it itself)."""
    pending = {cfg.name: cfg for cfg, _ in todo}
    depth: dict[str, int] = {}

    def level(cfg) -> int:
        if cfg.name not in depth:
            deps = [pending[d["name"]] for d in dependencies(cfg) if d["name"] in pending]
            depth[cfg.name] = 1 + max(map(level, deps)) if deps else 0
        return depth[cfg.name]
    out: list[list] = [[] for _ in range(1 + max((level(c) for c, _ in todo), default=-1))]
    for item in todo:
        out[level(item[0])].append(item)
    return out


def submit(todo: list[tuple[Any, Any]], opts: SlurmOptions, data_root: Path, console) -> int:
    """Submit one job per pending run (runs that depend on runs: one job array per dependency level, after
    the level before); with ``wait`` wait for them and return the number that failed."""
    executor, folder = _executor(opts)
    job = RunJob(str(opts.out), str(data_root), opts.device, list(opts.plugins))
    jobs, before = [], []
    for level in dependency_levels(todo):
        if before and opts.executor == "slurm":
            executor.update_parameters(slurm_additional_parameters={
                "dependency": "afterany:" + ":".join(sorted({j.job_id.split("_")[0] for j in before}))})
        elif before:  # the local executor has no dependencies: the level before must have finished
            for j in before:
                j.wait()
        before = executor.map_array(job, [cfg for cfg, _ in level])
        for j, (_, rd) in zip(before, level):
            console.print(f"submitted job {j.job_id}: {rd.name}")
        jobs += before
    console.print(f"{len(jobs)} jobs submitted; logs in {folder.parent}; "
                  f"`run_bench.py report --out {opts.out}` builds the leaderboard as they finish")
    return _wait(jobs, console) if opts.wait else 0


def _executor(opts: SlurmOptions):
    """(a submitit executor set up from ``opts``, its log folder); bad options are errors naming the flag."""
    try:
        import submitit  # deferred: an optional dependency (the slurm extra)
    except ImportError:
        raise ConfigError("--launcher slurm needs submitit: pip install 'bnnbench[slurm]'") from None
    if opts.executor == "slurm" and not opts.partition:
        raise ConfigError("--launcher slurm needs --slurm-partition NAME")
    if opts.gpus_per_run < 0:
        raise ConfigError(f"--gpus-per-run {opts.gpus_per_run}: must be >= 0")
    folder = Path(opts.out) / "slurm" / "%j"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=opts.executor)
    params: dict[str, Any] = {"timeout_min": opts.time_min, "tasks_per_node": max(1, opts.gpus_per_run),
                              "nodes": 1, "cpus_per_task": opts.cpus}
    if opts.executor == "slurm":
        params.update(slurm_partition=opts.partition, slurm_gpus_per_node=opts.gpus_per_run,
                      slurm_array_parallelism=opts.array_parallelism, slurm_signal_delay_s=120)
    else:
        params["gpus_per_node"] = opts.gpus_per_run
    executor.update_parameters(name="bnnbench", **params)
    return executor, folder


def _wait(jobs: list, console) -> int:
    """Wait for every job and print its outcome; the number of runs that failed (or whose job failed)."""
    bad = 0
    for j in jobs:
        try:
            res = j.result()
            ok = res["status"] in ("done", "failed")
            bad += res["status"] == "failed"
            console.print(f"job {j.job_id}: {res['run']} {res['status']}" + ("" if ok else " (not run)"))
        except Exception as exc:  # noqa: BLE001 - reported per job
            bad += 1
            console.print(f"[red]job {j.job_id} failed[/red]: {type(exc).__name__}: {str(exc)[-500:]}")
    return bad
