"""One training loop for every method: the :class:`Run`, composed of its parts.

``Run(spec, run_dir, device, data_root)`` builds the run's state (:mod:`~bnnbench.engine.state`: seed,
data, method, model, optimizer, flip tracker), and :meth:`Run.fit` resumes it from its last good checkpoint
(:mod:`~bnnbench.engine.checkpointing`; the checkpoint must belong to the same
:class:`~bnnbench.config.spec.RunSpec`), trains epoch by epoch (:mod:`~bnnbench.engine.loop`), evaluates,
records a metrics row per epoch (:mod:`~bnnbench.engine.recorder`) and writes the
:class:`~bnnbench.config.spec.RunResult` (:mod:`~bnnbench.engine.result`). What a finished run does next
(the runner measures its 1-bit model) is passed in as ``on_done`` hooks: the engine imports no higher layer.

Per iteration: forward (autocast on CUDA when the recipe asks for AMP) -> loss -> backward through the
GradScaler -> ``scaler.unscale_`` -> ``method.after_backward`` (gradient editing in true units) ->
optional gradient clipping -> ``scaler.step`` -> ``scaler.update`` -> flip tracking. Per epoch:
``method.on_epoch_start`` first, then train, evaluate, append a metrics row, and checkpoint atomically.
Data order and augmentation depend only on (seed, epoch), so a resumed CPU run ends with the same weights
as an uninterrupted one. A signal (:mod:`~bnnbench.engine.preemption`) checkpoints and raises
:class:`~bnnbench.engine.preemption.Preempted`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnbench import faults
from bnnbench.config.spec import RunResult, RunSpec
from bnnbench.engine import distributed as ddp
from bnnbench.engine.checkpointing import Checkpointing
from bnnbench.engine.environment import environment, git_commit
from bnnbench.engine.evaluation import evaluate
from bnnbench.engine.host import keep_freed_memory, reset_peak_memory
from bnnbench.engine.loop import EpochLoop, sign0_counts
from bnnbench.engine.preemption import PREEMPTION, Preempted
from bnnbench.engine.progress import Progress
from bnnbench.engine.recorder import Recorder
from bnnbench.engine.result import summarize
from bnnbench.engine.state import build_state
from bnnbench.errors import RunError
from bnnbench.plugins import definition_site
from bnnbench.store import FLIPS, RunDir, atomic_torch_save

#: what a finished run hands a hook: its directory, its trained model, and a batch of test images on demand
OnDone = Callable[[Path, nn.Module, Callable[[], torch.Tensor]], Any]


class Run:
    """One run of the matrix: its state, checkpointing, loop and recorder (module docstring)."""

    def __init__(self, spec: RunSpec, run_dir: RunDir, device: torch.device, data_root: Path,
                 progress: Progress | None = None, warn: Callable[[str], None] = print, loggers: tuple = (),
                 on_done: Sequence[OnDone] = ()):
        self.spec, self.dir, self.device, self.st = spec, run_dir, device, spec.settings
        self.t0, self.commit = time.time(), git_commit()  # the code this process runs, read before training
        self.memory_scope = reset_peak_memory(device)
        self.state = build_state(spec, run_dir.path.parent, device, data_root)
        self.kept_memory = keep_freed_memory() if device.type == "cpu" else False
        self.main, self.on_done = ddp.is_main(), tuple(on_done)
        self.recorder = Recorder(run_dir, self.main, loggers)
        self.checkpointing = Checkpointing(spec, run_dir, self.state, self.recorder, self.main, warn)
        self.loop = EpochLoop(self.state, self.st, device, progress or Progress(), self.checkpointing, self.main,
                              run_dir.name)

    def evaluate(self) -> dict[str, Any]:
        """Test loss / top-1 / top-5, then the epoch's flip statistics and the method's own numbers.
        Under DDP the replicas are made to agree first (BN statistics averaged, the rest checked)."""
        s = self.state
        ddp.average_bn_stats(s.net)
        ddp.check_replicas(s.net, f"run {self.dir.name}")
        row = evaluate(s.model, s.test_loader, self.device, s.use_amp)
        zeros, inputs = sign0_counts(s.net)
        row["sign0_test"] = zeros / inputs if inputs else None
        flips = s.tracker.epoch_stats()
        row.update({k: flips[k] for k in ("silent", "flip_any", "flip_net", "net_change")})
        row["flip_layers"] = flips["layers"]
        row.update(method_stats(s.method, s.net))
        return row

    def fit(self) -> RunResult:
        """Train (or resume) to the end; writes and returns the result. Raises Preempted on a signal."""
        start, partial = self.checkpointing.resume()
        self.recorder.open(self.spec.to_dict())
        try:
            status, reason = self._epochs(start, partial)
        finally:
            self.recorder.close()
        return self.finish(status, reason)

    def _epochs(self, start: int, partial: dict | None) -> tuple[str, str | None]:
        """Epochs ``start`` .. end: ("done", None), or ("failed", why) on a non-finite loss."""
        with PREEMPTION as guard:
            for epoch in range(start, self.st.epochs):
                seconds, sums, finite = self.loop.train_epoch(epoch, guard, partial)
                partial = None
                row = self.recorder.epoch_row(epoch, seconds, sums, self.state.optimizer.param_groups[0]["lr"],
                                              sign0_counts(self.state.net))
                if not finite or not math.isfinite(row["train_loss"]):
                    return "failed", self.recorder.fail(
                        row, f"non-finite training loss ({row['train_loss']}) in epoch {epoch + 1}")
                row.update(self.evaluate())
                if not math.isfinite(row["test_loss"]):
                    return "failed", self.recorder.fail(
                        row, f"non-finite test loss ({row['test_loss']}) in epoch {epoch + 1}")
                self._end_epoch(epoch, row)
                if ddp.any_rank(guard.signum is not None, self.device) and epoch + 1 < self.st.epochs:
                    raise Preempted(f"signal {guard.signum}: checkpointed {self.dir.name} after epoch "
                                    f"{epoch + 1}; run the same command again to resume")
        return "done", None

    def _end_epoch(self, epoch: int, row: dict) -> None:
        self.recorder.end_epoch(epoch, row)
        if self.main:
            self.checkpointing.save(epoch)
            faults.point("after_checkpoint")
            self.dir.write_metrics(self.recorder.history)
            self.dir.heartbeat()
        self.loop.progress.end_epoch(row)

    def finish(self, status: str, reason: str | None) -> RunResult:
        """Write the final flip masks, run the ``on_done`` hooks and write ``result.json`` (rank 0); every
        rank returns the result."""
        result = self.result(status, reason)
        if self.main:
            if status == "done":
                atomic_torch_save(self.state.tracker.never_flipped(), self.dir.file(FLIPS))
                for hook in self.on_done:
                    hook(self.dir.path, self.state.net, lambda: next(iter(self.state.test_loader))[0][:16])
            faults.point("before_result")
            self.dir.write_result(result)
        ddp.barrier()
        return result

    def result(self, status: str, reason: str | None) -> RunResult:
        summary = summarize(self.recorder, self.t0, self.device, self.memory_scope, self.state.ops,
                            self.dir.metrics_digest())
        env = environment(self.device, self.state.numerics, self.kept_memory, self.commit)
        return RunResult.assemble(self.spec, status, reason, summary, env)


def method_stats(method, net: nn.Module) -> dict[str, Any]:
    """The method's ``epoch_stats`` (its extra per-epoch numbers), each a number, text or None that
    ``metrics.jsonl`` can hold; anything else is a RunError naming the hook, the key and the plugin's line."""
    stats = method.epoch_stats(net)
    where = f"method {method.name!r}: epoch_stats at {definition_site(type(method).epoch_stats)}"
    if not isinstance(stats, dict):
        raise RunError(f"{where} returned {type(stats).__name__}; it must return a dict of numbers")
    for key, value in stats.items():
        if not isinstance(key, str) or not isinstance(value, (int, float, str, type(None))):
            raise RunError(f"{where}: key {key!r} = {str(value)[:60]!r} ({type(value).__name__}) is not a number, "
                           f"text or None (metrics.jsonl holds JSON; use float(...) for a tensor)")
    return stats


def train_run(spec: RunSpec, run_dir: RunDir, device: torch.device, data_root: Path,
              progress: Progress | None = None, warn: Callable[[str], None] = print, loggers: tuple = (),
              on_done: Sequence[OnDone] = ()) -> RunResult:
    """Train (or resume) one run in ``run_dir``; returns and writes its result."""
    return Run(spec, run_dir, device, data_root, progress=progress, warn=warn, loggers=loggers,
               on_done=on_done).fit()
