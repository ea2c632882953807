"""Progress reporting for training: a no-op base the trainer calls, and a rich progress bar with ETA."""
from __future__ import annotations

import torch
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RP

from bnnbench.engine.distributed import CHECK_EVERY


class Progress:
    """No-op progress reporter (the CLI passes a rich one)."""

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None: ...
    def advance(self, loss: torch.Tensor | None = None) -> None: ...
    def end_epoch(self, row: dict) -> None: ...


class RichProgress(Progress):
    """Per-run progress bar with ETA (epochs) and a per-epoch line."""

    def __init__(self, console, label: str):
        self.console = console
        self.rp = RP(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console, transient=True)
        self.label = label
        self.run_task = None
        self.epoch_task = None
        self._n = 0

    def __enter__(self):
        self.rp.__enter__()
        return self

    def __exit__(self, *exc):
        self.rp.__exit__(*exc)

    def start_epoch(self, epoch, epochs, steps):
        if self.run_task is None:
            self.run_task = self.rp.add_task(f"{self.label} epochs", total=epochs, completed=epoch, info="")
        if self.epoch_task is not None:
            self.rp.remove_task(self.epoch_task)
        self.epoch_task = self.rp.add_task(f"epoch {epoch + 1}", total=steps, info="")
        self._n = 0

    def advance(self, loss=None):
        self._n += 1
        # the loss is read (a host sync on CUDA) only as often as the trainer's own checks read the device
        info = f"loss {loss.item():.3f}" if (loss is not None and self._n % CHECK_EVERY == 0) else None
        if info:
            self.rp.update(self.epoch_task, advance=1, info=info)
        else:
            self.rp.update(self.epoch_task, advance=1)

    def end_epoch(self, row):
        self.rp.update(self.run_task, advance=1, info=f"top-1 {row['test_top1']:.2f}")
        silent = "" if row.get("silent") is None else f"  silent {100 * row['silent']:.1f}%"
        self.console.print(f"  epoch {row['epoch'] + 1:3d}  loss {row['train_loss']:.4f}  "
                           f"test top-1 {row['test_top1']:6.2f}  top-5 {row['test_top5']:6.2f}  "
                           f"lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s{silent}")
