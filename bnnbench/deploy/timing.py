"""Round-robin timing with paired ratios (``bench`` and ``deploy-bench``).

Cases are called in turn, one call each per round, so that drifts of the machine's speed (frequency,
other processes) affect every case alike; a ratio between two cases is the median over rounds of the
ratio within each round, reported with its quartiles.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
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
                device: torch.device | None = None, primed: bool = False) -> dict[str, list[float]]:
    """Per-call seconds of every case, ``rounds`` rounds after ``warmup`` untimed calls of each. ``primed``: each
    timed call directly follows an untimed call of the same case, so that a short case is timed with its own
    operands in cache and the thread pool awake, as inside a network, not just after another case (measured on
    a 75 us binary conv after a 2 ms FP32 conv: 0.12 ms unprimed, 0.075 ms primed; the FP32 conv, 30 times
    longer, hardly changes)."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            if primed:
                fn()
            times[name].append(time_call(fn, device))
    return times


def paired_ratio(num: list[float], den: list[float]) -> dict[str, float]:
    """Median and quartiles of num[i] / den[i] over rounds."""
    ratios = [a / b for a, b in zip(num, den)]
    q1, med, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3}


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (``/proc/stat``), None where that is not readable."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError, IndexError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class LoadProbe:
    """How busy the CPUs were with other work while a block ran: ``with LoadProbe() as probe: ...`` then
    ``probe.result()`` = {"other_cores_busy": (busy CPU seconds of every process - this process's) / wall
    seconds, i.e. how many cores other work kept busy on average, "cpus": logical CPUs}; the other-work
    figure is None where ``/proc/stat`` is not readable."""

    def __enter__(self) -> LoadProbe:
        self.start = (time.monotonic(), busy_cpu_seconds(), own_cpu_seconds())
        return self

    def __exit__(self, *exc) -> None:
        self.end = (time.monotonic(), busy_cpu_seconds(), own_cpu_seconds())

    def result(self) -> dict:
        (t0, b0, o0), (t1, b1, o1) = self.start, self.end
        others = None if b0 is None or b1 is None or t1 <= t0 else max(0.0, ((b1 - b0) - (o1 - o0)) / (t1 - t0))
        return {"other_cores_busy": others, "cpus": os.cpu_count()}


def spread(times: list[float]) -> float:
    """Interquartile range over the median of the timing rounds (0 for fewer than two rounds)."""
    if len(times) < 2:
        return 0.0
    q1, med, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / med if med > 0 else 0.0
