"""``run_bench.py bench``: how much a training step costs, per method, on the current device.

For a backbone (default cresnet20) at a batch size (default 256) with input of the backbone's shape it
measures, as the median of repeated timed steps after warm-up:

* the full training step (forward, backward, method hook, optimizer step, flip tracking) of every
  registered method and of the full-precision version of the same backbone (plain convolutions);
* the part of the step spent in the method's gradient hook and in flip tracking;
* eval throughput (forward only, no grad);
* the CIFAR-path data loader (uint8 tensors, random crop + flip, normalisation) in images/s.

Cases are stepped round-robin (one step of each in turn); the ratio to full precision is the median over
rounds of each round's ratio, with its quartiles, so that drifts of the machine's speed cancel. Training
uses channels_last; ``--memory-format contiguous`` measures NCHW. On CPUs freed memory is kept in-process
(``bnnbench/engine/host.py``), as in training. It prints a table and writes JSON (``--json``). Timings
synchronise the device around each timed region.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.table import Table
from torch import nn

from bnnbench.data.catalog import CIFAR10_MEAN, CIFAR10_STD
from bnnbench.data.loaders import TensorLoader
from bnnbench.deploy.timing import paired_ratio, round_robin, sync, time_call
from bnnbench.engine import resolve_device, train_step
from bnnbench.engine.flips import FlipTracker
from bnnbench.engine.host import keep_freed_memory
from bnnbench.nn.layers import BinaryConv2d
from bnnbench.plugins import ARCHITECTURES, METHODS
from bnnbench.plugins.arch import build_model
from bnnbench.plugins.method import Method

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


class _PlainConv(BinaryConv2d):
    """Full-precision convolution with the BinaryConv2d constructor (the baseline of the ratios)."""

    def forward(self, x):
        return self._conv_forward(x, self.weight, self.bias)


class FullPrecision(Method):
    """The backbone with plain convolutions where the binary ones would be (not registered)."""

    name = "fp"
    conv_class = _PlainConv


def _median_time(fn, device, repeats: int, warmup: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = [time_call(fn, device) for _ in range(repeats)]
    return statistics.median(times), times


class Case:
    """One method on the backbone, ready to take timed training steps on a fixed batch."""

    def __init__(self, method: Method, arch: str, batch: int, device, track: bool,
                 memory_format: torch.memory_format = torch.channels_last):
        spec = ARCHITECTURES.get(arch)
        torch.manual_seed(0)
        self.method, self.device, self.batch = method, device, batch
        self.model = build_model(method, arch, 10).to(device).to(memory_format=memory_format)
        self.x = torch.randn(batch, *spec.input_size, device=device).contiguous(memory_format=memory_format)
        self.y = torch.randint(0, 10, (batch,), device=device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
        self.crit = nn.CrossEntropyLoss()
        self.tracker = FlipTracker(self.model, keep_init=False) if track else None
        method.on_epoch_start(self.model, 0, 100)
        self.edits = type(method).after_backward is not Method.after_backward

    def step(self) -> None:
        train_step(self.model, self.x, self.y, self.crit, self.opt, self.scaler, self.method,
                   use_amp=self.device.type == "cuda")
        if self.tracker is not None:
            self.tracker.step()

    def parts(self, steps: int) -> dict:
        """Time the gradient hook, flip tracking and eval separately (after the steps)."""
        out = {"hook_s": _median_time(lambda: self.method.after_backward(self.model), self.device, steps, 2)[0]
               if self.edits else 0.0,
               "flip_s": _median_time(self.tracker.step, self.device, steps, 2)[0] if self.tracker else 0.0}
        self.model.eval()
        with torch.no_grad():
            out["eval_images_per_s"] = self.batch / _median_time(lambda: self.model(self.x), self.device, steps, 2)[0]
        self.model.train()
        return out


def bench_methods(methods: dict[str, Method], arch: str, batch: int, device, steps: int, warmup: int,
                  memory_format: torch.memory_format = torch.channels_last) -> dict:
    """Step times of every case, measured round-robin (one step of each case in turn) so that drifts of
    the machine's speed affect all cases alike; medians, and the median and quartiles of the per-round
    ratio to the full-precision case (``methods`` must contain ``fp``)."""
    cases = {name: Case(m, arch, batch, device, track=name != "fp", memory_format=memory_format)
             for name, m in methods.items()}
    times = round_robin({name: case.step for name, case in cases.items()}, steps, warmup, device)
    results = {}
    for name, case in cases.items():
        med = statistics.median(times[name])
        ratio = paired_ratio(times[name], times["fp"])
        results[name] = {"step_s": med, "step_all_s": times[name], "images_per_s": batch / med,
                         "ratio_to_fp": ratio["median"], "ratio_q1": ratio["q1"], "ratio_q3": ratio["q3"],
                         **case.parts(steps)}
    for r in results.values():
        r["hook_flip_share"] = (r["hook_s"] + r["flip_s"]) / r["step_s"]
    return results


def bench_loader(batch: int, device, n: int = 20_000, epochs: int = 2) -> float:
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    loader = TensorLoader(x, y, batch, shuffle=True, drop_last=False, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                          device=device, crop_pad=4, flip=True, channels_last=True)
    loader.set_epoch(0)
    for _ in loader:  # warm-up
        pass
    sync(device)
    t = time.perf_counter()
    for e in range(epochs):
        loader.set_epoch(e + 1)
        for _ in loader:
            pass
    sync(device)
    return n * epochs / (time.perf_counter() - t)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``run_bench.py bench`` flags."""
    p.add_argument("--arch", default="cresnet20", help="backbone (default cresnet20)")
    p.add_argument("--batch", type=int, default=256, help="training batch size (default 256)")
    p.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    p.add_argument("--steps", type=int, default=15, help="timed steps per case (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per case first (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--memory-format", choices=sorted(MEMORY_FORMATS), default="channels_last",
                   help="activation and weight layout (training always uses channels_last)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p



def run(args, console) -> int:
    """Measure and print the figures (see the module docstring); ``args`` from :func:`add_arguments` (the
    command line loads ``--plugin`` first)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    kept = keep_freed_memory() if device.type == "cpu" else False
    ARCHITECTURES.get(args.arch, source="--arch")
    names = args.methods or METHODS.names()
    spec = ARCHITECTURES.get(args.arch)
    console.print(f"bench: {args.arch} batch {args.batch} on {device} ({torch.get_num_threads()} threads, "
                  f"{args.memory_format}), "
                  f"median of {args.steps} steps per case, taken round-robin after {args.warmup} warm-up"
                  + (", freed memory kept (bnnbench/engine/host.py)" if kept else ""))
    methods = {"fp": FullPrecision()}
    methods.update({name: METHODS.get(name, source="--methods")(family=spec.family) for name in names})
    results = bench_methods(methods, args.arch, args.batch, device, args.steps, args.warmup,
                            MEMORY_FORMATS[args.memory_format])
    loader_ips = bench_loader(args.batch, device)
    print_results(results, loader_ips, f"training step, {args.arch}, batch {args.batch}, {device}", console)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "arch": args.arch, "batch": args.batch, "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
            "steps": args.steps, "warmup": args.warmup, "memory_format": args.memory_format,
            "keep_freed_memory": kept, "methods": results,
            "loader_images_per_s": loader_ips}, indent=2) + "\n")
        console.print(f"written to {args.json}")
    return 0


def print_results(results: dict, loader_ips: float, title: str, console) -> None:
    """The per-method table and the loader's throughput against the fastest training step."""
    table = Table(title=title)
    for c in ("method", "step ms", "min-max ms", "img/s", "x FP", "x FP IQR", "hook ms", "flip ms", "hook+flip %",
              "eval img/s"):
        table.add_column(c, justify="right")
    for name, r in results.items():
        table.add_row(name, f"{1000 * r['step_s']:.1f}",
                      f"{1000 * min(r['step_all_s']):.0f}-{1000 * max(r['step_all_s']):.0f}",
                      f"{r['images_per_s']:.0f}", f"{r['ratio_to_fp']:.2f}",
                      f"{r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}", f"{1000 * r['hook_s']:.2f}",
                      f"{1000 * r['flip_s']:.2f}", f"{100 * r.get('hook_flip_share', 0.0):.2f}",
                      f"{r['eval_images_per_s']:.0f}")
    console.print(table)
    best_train = max(r["images_per_s"] for r in results.values())
    console.print(f"CIFAR loader (crop+flip+normalise): {loader_ips:.0f} img/s = "
                  f"{loader_ips / best_train:.1f}x the fastest training step")
