"""Result assembly: the :class:`~bnnbench.config.spec.Summary` of a run from its recorded history."""
from __future__ import annotations

import time

import torch

from bnnbench.config.spec import Summary
from bnnbench.engine.host import peak_memory
from bnnbench.engine.recorder import Recorder


def summarize(recorder: Recorder, t0: float, device: torch.device, memory_scope: str, ops: dict,
              metrics_sha256: str | None) -> Summary:
    """Final epoch, best epoch (by test top-1), the final flip figures, time, throughput and peak memory."""
    done = [h for h in recorder.history if h.get("test_top1") is not None]
    final = done[-1] if done else {}
    best = max(done, key=lambda h: h["test_top1"]) if done else {}
    return Summary(
        epochs_run=len(done), final_top1=final.get("test_top1"), final_top5=final.get("test_top5"),
        final_test_loss=final.get("test_loss"), best_top1=best.get("test_top1"),
        best_top5_at_best=best.get("test_top5"), best_epoch=best.get("epoch"), silent=final.get("silent"),
        flip_any=final.get("flip_any"), flip_net=final.get("flip_net"), net_change=final.get("net_change"),
        wall_time_s=time.time() - t0, train_time_s=recorder.train_time,
        images_per_s=recorder.images / recorder.train_time if recorder.train_time else None,
        peak_memory_bytes=peak_memory(device), peak_memory_scope=memory_scope, ops=ops,
        metrics_sha256=metrics_sha256)
