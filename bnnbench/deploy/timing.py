"""Round-robin timing with paired ratios (``bench`` and ``deploy-bench``).

Cases are called in turn, one call each per round, so that drifts of the machine's speed (frequency,
other processes) affect every case alike; a ratio between two cases is the median over rounds of the
ratio within each round, reported with its quartiles.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds one call of ``fn`` takes (the device synchronised before and after)."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def round_robin(cases: dict[str, Callable[[], object]], rounds: int, warmup: int,
                device: torch.device | None = None) -> dict[str, list[float]]:
    """Per-call seconds of every case, ``rounds`` rounds after ``warmup`` untimed calls of each."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(time_call(fn, device))
    return times


def paired_ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Median and quartiles of num[i] / den[i] over rounds."""
    ratios = [a / b for a, b in zip(num, den)]
    q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3}
