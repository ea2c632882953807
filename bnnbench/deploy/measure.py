"""The measurement a finished run records: its model exported to 1-bit form, checked for exactness and timed
against FP32 on this CPU (``deploy.json`` in the run directory; the leaderboard's 1-bit columns read it).

:func:`measure` times the packed model (``bnnbench/deploy/packed.py``) end to end against the same topology
with FP32 convs and against the simulated binary model, and optionally every binary conv on the input the
model gives it; :func:`record_run` is the hook the runner hands the engine for every finished run.
``run_bench.py deploy-bench`` (``bnnbench/tools/deploy_bench.py``) uses the same functions.
"""
from __future__ import annotations

import copy
import json
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bnnbench.deploy import kernels
from bnnbench.deploy import packed as deploy
from bnnbench.deploy.timing import LoadProbe, paired_ratio, round_robin, spread
from bnnbench.nn.layers import binary_layers
from bnnbench.store import DEPLOY, atomic_write_text


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "isa": kernels.best_isa(), "threads": torch.get_num_threads(), "torch": torch.__version__}


#: a latency is not presented as a figure when other work kept more than this many cores busy while it was
#: timed, or its rounds spread wider than this (interquartile range over median); see :func:`conditions`
CONTENDED_CORES = 0.5
WIDE_SPREAD = 0.5   # a quiet 2-core machine shows up to ~0.3 at batch 1 (~1.5 ms per call)


def _summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "spread": spread(times)}


def conditions(load: dict, packed_times: list[float]) -> dict:
    """What the timing was measured under: other work on the CPUs, the spread of the rounds, and whether
    either makes the latency unreliable (``contended``: other work kept more than ``CONTENDED_CORES`` cores
    busy; ``wide_spread``: IQR / median above ``WIDE_SPREAD``). The paired speed-up stays meaningful: both
    sides of each round saw the same machine."""
    others, wide = load["other_cores_busy"], spread(packed_times)
    return {**load, "threads": torch.get_num_threads(), "spread": wide,
            "contended": others is not None and others > CONTENDED_CORES, "wide_spread": wide > WIDE_SPREAD}


def bench_layers(model: nn.Module, packed: nn.Module, x: torch.Tensor, rounds: int, warmup: int) -> list[dict]:
    """Each binary conv: packed (pack + popcount conv + scale) vs FP32 conv2d, on the layer's real input."""
    _, inputs = deploy.binary_inputs(model, x)
    packed_layers = dict(packed.named_modules())
    rows = []
    for name, layer in binary_layers(model):
        if name not in inputs:
            continue
        xin = inputs[name].float().contiguous(memory_format=torch.channels_last)
        weight = layer.weight.detach().float().contiguous(memory_format=torch.channels_last)
        p = packed_layers[name]
        with torch.no_grad():
            times = round_robin({
                "packed": lambda p=p, xin=xin: p(xin),
                "fp32": lambda layer=layer, xin=xin, weight=weight: F.conv2d(
                    xin, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)},
                rounds, warmup)
        ratio = paired_ratio(times["fp32"], times["packed"])
        rows.append({"layer": name, "input": list(xin.shape), "out_channels": layer.out_channels,
                     "kernel": list(layer.kernel_size), "stride": p.stride,
                     "packed": _summary(times["packed"]), "fp32": _summary(times["fp32"]),
                     "speedup": ratio["median"], "speedup_q1": ratio["q1"], "speedup_q3": ratio["q3"]})
    return rows


def bench_end_to_end(model: nn.Module, packed: nn.Module, x: torch.Tensor, rounds: int, warmup: int) -> dict:
    """Packed model vs the FP32 network of the same topology vs the simulated binary model."""
    fp32 = deploy.float_model(model)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), LoadProbe() as probe:
        times = round_robin({"packed": lambda: packed(x), "fp32": lambda: fp32(x), "simulated": lambda: model(x)},
                            rounds, warmup)
    vs_fp = paired_ratio(times["fp32"], times["packed"])
    vs_sim = paired_ratio(times["simulated"], times["packed"])
    return {"packed": _summary(times["packed"]), "fp32": _summary(times["fp32"]),
            "simulated": _summary(times["simulated"]), "speedup_vs_fp32": vs_fp["median"],
            "speedup_vs_fp32_q1": vs_fp["q1"], "speedup_vs_fp32_q3": vs_fp["q3"],
            "speedup_vs_simulated": vs_sim["median"], "conditions": conditions(probe.result(), times["packed"])}


def measure(model: nn.Module, x: torch.Tensor, rounds: int = 20, warmup: int = 3, layers: bool = True,
            timing_batch: int | None = None) -> dict:
    """Exactness on the batch ``x`` and timings on its first ``timing_batch`` images (default: all) of a copy of
    ``model`` (eval, CPU, channels_last) exported to the packed form; per-layer timings when ``layers``."""
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    packed = deploy.packed_model(model)
    x = x.cpu().float()
    timed = x[:timing_batch] if timing_batch else x
    out = {"batch": timed.shape[0], "input": list(x.shape[1:]), "machine": machine(),
           "exact": deploy.check_exact(model, packed, x).to_dict(),
           "end_to_end": bench_end_to_end(model, packed, timed, rounds, warmup)}
    if layers:
        out["layers"] = bench_layers(model, packed, timed, rounds, warmup)
    return out


def record_run(run_dir: Path, model: nn.Module, sample: Callable[[], torch.Tensor], rounds: int = 20) -> dict:
    """Measure a trained run's exported model (exactness on the images ``sample()`` returns, latency at
    batch 1) and write ``deploy.json``; when it cannot be measured (kernels not built, a layer that is not
    1-bit, no test batch) the file says why and the run stays done."""
    try:
        doc = {"status": "measured", **measure(model, sample(), rounds, 3, layers=False, timing_batch=1)}
    except Exception as e:  # noqa: BLE001 - recorded for the leaderboard, not a failed run
        doc = {"status": "unavailable", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    atomic_write_text(run_dir / DEPLOY, json.dumps(doc, indent=1))
    return doc
