"""The epoch loop: ``method.on_epoch_start``, the lr schedule, one :func:`~bnnbench.engine.step.train_step`
per batch, flip tracking, the periodic health/preemption check, and the mid-epoch checkpoint on a signal."""
from __future__ import annotations

import time

import torch

from bnnbench import faults
from bnnbench.engine import distributed as ddp
from bnnbench.engine.checkpointing import Checkpointing
from bnnbench.engine.optim import lr_at, set_lr
from bnnbench.engine.preemption import Preempted, PreemptionGuard
from bnnbench.engine.progress import Progress
from bnnbench.engine.rebuild import on_device
from bnnbench.engine.state import RunState
from bnnbench.engine.step import EpochSums, train_step
from bnnbench.nn.layers import binary_layers, take_sign0_counts


def sign0_counts(net: torch.nn.Module) -> tuple[int, int]:
    """The binary convs' sign(0) counters since the last call, summed over the ranks."""
    return take_sign0_counts(net, ddp.all_reduce_sum)


class EpochLoop:
    """Trains one epoch at a time; reads nothing from the device except at the periodic check."""

    def __init__(self, state: RunState, settings, device: torch.device, progress: Progress,
                 checkpointing: Checkpointing, main: bool, name: str):
        self.s, self.st, self.device, self.progress = state, settings, device, progress
        self.checkpointing, self.main, self.name = checkpointing, main, name

    def start_epoch(self, epoch: int, partial: dict | None) -> tuple[int, float, EpochSums]:
        """(first step, time already spent, sums) of ``epoch``: from the mid-epoch checkpoint, or fresh."""
        sign0_counts(self.s.net)  # from here on, the epoch's training steps are counted
        if partial is not None and partial["epoch"] == epoch:
            keep = 1 if self.main else 0  # sums are global: counted once, on rank 0
            if keep and partial.get("sign0"):
                first = binary_layers(self.s.net)[0][1]
                first.sign0 += torch.tensor(partial["sign0"], device=first.sign0.device)
            return partial["step"], partial["epoch_time"], EpochSums(
                self.device, keep * partial["loss_sum"], keep * partial["correct"], keep * partial["seen"])
        self.s.tracker.start_epoch()
        return 0, 0.0, EpochSums(self.device)

    def train_epoch(self, epoch: int, guard: PreemptionGuard,
                    partial: dict | None = None) -> tuple[float, EpochSums, bool]:
        """Train ``epoch``: (seconds, sums, loss stayed finite). Raises :class:`Preempted` (checkpointed)."""
        steps = len(self.s.train_loader)
        self.s.method.on_epoch_start(self.s.net, epoch, self.st.epochs)
        self.s.train_loader.set_epoch(epoch)
        self.s.model.train()
        self.progress.start_epoch(epoch, self.st.epochs, steps)
        first, elapsed, sums = self.start_epoch(epoch, partial)
        if self.st.lr_step != "iter":
            set_lr(self.s.optimizer, lr_at(self.st, epoch))
        te = time.time()
        for i, (x, y) in enumerate(on_device(self.s.train_loader.iter_from(first), self.device), start=first):
            finite, stop = self.step(epoch, i, steps, x, y, sums, guard)
            if not finite:
                return elapsed + time.time() - te, sums, False
            if stop and i + 1 < steps:
                self.preempt_mid_epoch(epoch, i + 1, elapsed + time.time() - te, sums, guard.signum)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return elapsed + time.time() - te, sums, True

    def step(self, epoch: int, i: int, steps: int, x: torch.Tensor, y: torch.Tensor, sums: EpochSums,
             guard: PreemptionGuard) -> tuple[bool, bool]:
        """Training step ``i`` of ``steps`` in ``epoch`` on one batch: (loss still finite, preempt now)."""
        s = self.s
        if self.st.lr_step == "iter":
            set_lr(s.optimizer, lr_at(self.st, epoch + i / steps, 1.0 / steps))
        loss, out = train_step(s.model, x, y, s.criterion, s.optimizer, s.scaler, s.method, s.use_amp,
                               self.st.grad_clip)
        s.tracker.step()
        faults.point("step")
        sums.add(loss, out, y)
        self.progress.advance(loss)
        return self.check(epoch * steps + i + 1, sums, guard)

    def check(self, step: int, sums: EpochSums, guard: PreemptionGuard) -> tuple[bool, bool]:
        """(loss still finite, preempt now) after global step ``step``. Device values are read only every
        ``ddp.CHECK_EVERY`` steps (one all-reduce under DDP); a single process sees its signal at once."""
        signalled = guard.signum is not None
        if step % ddp.CHECK_EVERY:
            return True, signalled and not ddp.active()
        return ddp.health(sums.loss, signalled)

    def preempt_mid_epoch(self, epoch: int, step: int, elapsed: float, sums: EpochSums, signum: int):
        """Checkpoint the epoch's partial sums over all ranks (rank 0 carries them on resume), then raise."""
        loss, correct, seen = sums.total()
        sign0 = list(sign0_counts(self.s.net))
        self.checkpointing.save(epoch - 1, {"epoch": epoch, "step": step, "loss_sum": loss, "correct": int(correct),
                                            "seen": int(seen), "epoch_time": elapsed, "sign0": sign0})
        ddp.barrier()
        raise Preempted(f"signal {signum}: checkpointed {self.name} at epoch {epoch + 1}, step {step}/"
                        f"{len(self.s.train_loader)}; run the same command again to resume")
