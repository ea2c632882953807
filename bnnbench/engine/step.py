"""One optimisation step and the epoch's running sums (kept on the device: no host sync per step)."""
from __future__ import annotations

import torch
from torch import nn

from bnnbench.engine import distributed as ddp


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, optimizer, scaler, method,
               use_amp: bool, grad_clip: float | None = None,
               amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """forward (autocast) -> loss (+ ``method.penalty(model)``) -> backward through the GradScaler -> unscale ->
    ``method.after_backward``
    (gradient edits in true units) -> optional clipping -> step -> scaler update. ``amp_dtype``: autocast's
    dtype (default: the device's, fp16 on CUDA). Returns (loss, output), detached."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=use_amp):
        out = model(x)
        loss = criterion(out, y, x) if getattr(criterion, "needs_input", False) else criterion(out, y)
        penalty = method.penalty(model)
        if penalty is not None:
            loss = loss + penalty
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    method.after_backward(model)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), out.detach()


def global_sums(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> list[float]:
    """(loss sum, correct, images) of the epoch so far, summed over all ranks."""
    t = torch.stack([loss_sum, correct.double(),
                     torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64)])
    return ddp.all_reduce_sum(t).tolist()


class EpochSums:
    """Loss, correct predictions and images of the epoch so far, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device, loss: float = 0.0, correct: int = 0, seen: int = 0):
        self.loss = torch.tensor(loss, device=device, dtype=torch.float64)
        self.correct = torch.tensor(correct, device=device, dtype=torch.int64)
        self.seen = seen

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.double() * len(y)
        self.correct += (out.argmax(1) == y).sum()
        self.seen += len(y)

    def total(self) -> list[float]:
        return global_sums(self.loss, self.correct, self.seen)
