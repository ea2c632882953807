"""The metrics recorder: one row per epoch (training sums, then evaluation), the run's history and counters,
``metrics.jsonl`` and the optional trackers (TensorBoard, W&B, MLflow)."""
from __future__ import annotations

from typing import Any

from bnnbench.engine.loggers import Loggers
from bnnbench.engine.step import EpochSums
from bnnbench.store import RunDir


class Recorder:
    """History (one dict per epoch), training time and images so far; rank 0 writes them."""

    def __init__(self, run_dir: RunDir, main: bool, logger_names: tuple = ()):
        self.dir, self.main = run_dir, main
        self.logger_names = tuple(logger_names) if main else ()
        self.history: list[dict] = []
        self.train_time, self.images = 0.0, 0
        self.loggers: Loggers | None = None

    def open(self, config: dict) -> None:
        names = list(self.logger_names)
        self.loggers = Loggers(names, self.dir.path, config) if names else None

    def close(self) -> None:
        if self.loggers is not None:
            self.loggers.close()

    def state_dict(self) -> dict:
        return {"history": self.history, "train_time": self.train_time, "images": self.images}

    def load_state_dict(self, state: dict) -> None:
        self.history = state["history"]
        self.train_time, self.images = state["train_time"], state["images"]

    def epoch_row(self, epoch: int, seconds: float, sums: EpochSums, lr: float, sign0: tuple[int, int]) -> dict:
        """The training half of an epoch's row; adds the epoch's time and images to the run's counters."""
        loss, correct, seen = sums.total()
        self.train_time += seconds
        self.images += int(seen)
        zeros, inputs = sign0
        return {"epoch": epoch, "lr": lr, "train_loss": loss / max(seen, 1),
                "train_top1": 100.0 * correct / max(seen, 1), "epoch_time": seconds,
                "images_per_s": seen / seconds, "sign0_train": zeros / inputs if inputs else None}

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """Append the finished row, mirror it to the trackers and (rank 0) rewrite ``metrics.jsonl``."""
        self.history.append(row)
        if self.loggers is not None:
            self.loggers.log(row, epoch)
        if self.main:
            self.dir.write_metrics(self.history)

    def fail(self, row: dict, reason: str) -> str:
        """Record the row of an epoch that failed (no test figures) and return ``reason``."""
        row.update({k: row.get(k) for k in ("test_loss", "test_top1", "test_top5")})
        self.history.append(row)
        if self.main:
            self.dir.write_metrics(self.history)
        return reason
