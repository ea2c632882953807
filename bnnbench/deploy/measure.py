"""The measurement a finished run records: its model exported to 1-bit form, checked for exactness and timed
against FP32 on this CPU (``deploy.json`` in the run directory; the leaderboard's 1-bit columns read it).

:func:`measure` times the packed model (``bnnbench/deploy/packed.py``) with its binary blocks fused
(``bnnbench/deploy/fusion.py``, run as a TorchScript trace; ``exact=True``: the unfused layer-by-layer path,
bit for bit the trained model's floats) end to end against the same topology with FP32 convs, against the
simulated binary model and (fused) against the unfused packed model, and optionally every binary conv on the
input the model gives it;
:func:`record_run` is the hook the runner hands the engine for every finished run.
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

from bnnbench.deploy import fusion, kernels
from bnnbench.deploy import packed as deploy
from bnnbench.deploy.timing import LoadProbe, paired_ratio, round_robin, spread
from bnnbench.nn.layers import binary_layers
from bnnbench.store import DEPLOY, atomic_write_text


def machine(isa: str | None = None) -> dict:
    """What the figures were measured on: ``isa`` the kernels' path (None: the CPU's best, which it then names)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "isa": isa or kernels.best_isa(), "best_isa": kernels.best_isa(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


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
    """Each binary conv: packed (pack + popcount conv + scale) vs FP32 conv2d, on the layer's real input; each
    timed call primed by an untimed call of the same layer (:func:`~bnnbench.deploy.timing.round_robin`)."""
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
                rounds, warmup, primed=True)
        ratio = paired_ratio(times["fp32"], times["packed"])
        rows.append({"layer": name, "input": list(xin.shape), "out_channels": layer.out_channels,
                     "kernel": list(layer.kernel_size), "stride": p.stride,
                     "packed": _summary(times["packed"]), "fp32": _summary(times["fp32"]),
                     "speedup": ratio["median"], "speedup_q1": ratio["q1"], "speedup_q3": ratio["q3"]})
    return rows


def bench_end_to_end(model: nn.Module, packed: nn.Module, x: torch.Tensor, rounds: int, warmup: int,
                     unfused: nn.Module | None = None) -> dict:
    """Packed model vs the FP32 network of the same topology vs the simulated binary model (and, given the
    ``unfused`` packed model that ``packed`` was fused from, vs that)."""
    fp32 = deploy.float_model(model)
    x = x.contiguous(memory_format=torch.channels_last)
    cases = {"packed": lambda: packed(x), "fp32": lambda: fp32(x), "simulated": lambda: model(x)}
    if unfused is not None:
        cases["unfused"] = lambda: unfused(x)
    with torch.no_grad(), LoadProbe() as probe:
        times = round_robin(cases, rounds, warmup)
    vs_fp = paired_ratio(times["fp32"], times["packed"])
    out = {name: _summary(t) for name, t in times.items()}
    out.update({"speedup_vs_fp32": vs_fp["median"], "speedup_vs_fp32_q1": vs_fp["q1"],
                "speedup_vs_fp32_q3": vs_fp["q3"],
                "speedup_vs_simulated": paired_ratio(times["simulated"], times["packed"])["median"],
                "conditions": conditions(probe.result(), times["packed"])})
    if unfused is not None:
        out["speedup_vs_unfused"] = paired_ratio(times["unfused"], times["packed"])["median"]
    return out


def deployed(model: nn.Module, exact: bool = False, isa: str | None = None) -> tuple[nn.Module, nn.Module, dict | None]:
    """(the model as deployed, the unfused packed model, the fusion summary): fused unless ``exact``; ``isa``
    forces the kernels' instruction set (None: the CPU's best)."""
    packed = deploy.packed_model(model, isa)
    if exact:
        return packed, packed, None
    fused, records = fusion.fuse(packed)
    return fused, packed, fusion.summary(records)


def measure(model: nn.Module, x: torch.Tensor, rounds: int = 20, warmup: int = 3, layers: bool = True,
            timing_batch: int | None = None, exact: bool = False, isa: str | None = None, test=None) -> dict:
    """Exactness on the batch ``x`` and timings on its first ``timing_batch`` images (default: all) of a copy of
    ``model`` (eval, CPU, channels_last) exported to the packed form, its blocks fused unless ``exact``;
    per-layer timings (each binary conv with its input packing, unfused) when ``layers``; with ``test``
    batches also :func:`top1_agreement` of the same deployed model on all of them (``agreement``)."""
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    net, packed, fused = deployed(model, exact, isa)
    exact = exact or net is packed   # nothing fused (fusion.fuse: the records say why): the unfused path
    x = x.cpu().float()
    timed = x[:timing_batch] if timing_batch else x
    run = net if exact else fusion.Traced(net)   # the fused graph without a Python frame per layer
    exactness = deploy.check_exact(model, net, x).to_dict()
    if not exact:
        with torch.no_grad():
            cl = timed.contiguous(memory_format=torch.channels_last)
            exactness["traced_equal"] = bool(torch.equal(run(cl), net(cl)))
    out = {"batch": timed.shape[0], "input": list(x.shape[1:]), "machine": machine(isa),
           "path": "exact" if exact else "fused", "fusion": fused, "exact": exactness,
           "end_to_end": bench_end_to_end(model, run, timed, rounds, warmup, None if exact else packed)}
    if layers:
        out["layers"] = bench_layers(model, packed, timed, rounds, warmup)
    if test is not None:
        out["agreement"] = top1_agreement(model, net, test)
    return out


def top1_agreement(model: nn.Module, net: nn.Module, batches) -> dict:
    """Top-1 of the trained ``model`` and of its deployed form ``net`` on every image of ``batches``
    ((images, labels) pairs): how many predictions agree, both accuracies, and ``zero_sign``: how many of the
    disagreeing images gave some binary conv of the trained model an input exactly at its threshold. There
    torch's sign is 0, which has no 1-bit form (the export packs +1, as :func:`bnnbench.deploy.packed.check_layer`
    says), so such an image may change its prediction; any other disagreement is a fault of the export."""
    images = same = zero_sign = right_trained = right_net = 0
    for x, y in batches:
        x = x.cpu().float().contiguous(memory_format=torch.channels_last)
        logits, inputs = deploy.binary_inputs(model, x)
        with torch.no_grad():
            a, b = logits.argmax(1), net(x).argmax(1)
        differ = a != b
        if differ.any():
            zero_sign += int((differ & _zero_sign_images(model, inputs, len(differ))).sum())
        images += len(y)
        same += int((~differ).sum())
        right_trained += int((a == y).sum())
        right_net += int((b == y).sum())
    return {"images": images, "same": same, "zero_sign": zero_sign,
            "trained_top1": 100 * right_trained / max(images, 1), "deployed_top1": 100 * right_net / max(images, 1)}


FUSED_ROUNDING_SHARE = 1e-3   # of the test images: the most whose top-1 the fused epilogue's rounding may change


def agreement_ok(agreement: dict, path: str) -> bool:
    """Whether the deployed model's top-1 differs from the trained model's only where it may
    (:func:`top1_agreement`): on images with a binary input exactly at its threshold (sign 0), and on the fused
    path (``bnnbench/deploy/fusion.py``, BatchNorm and scale folded into one multiply-add that rounds
    differently, so a pre-activation within rounding of its threshold may change sign) on at most
    ``FUSED_ROUNDING_SHARE`` of the images besides. The unfused path computes the trained model's floats: no
    other image may differ."""
    other = agreement["images"] - agreement["same"] - agreement["zero_sign"]
    return other <= (FUSED_ROUNDING_SHARE * agreement["images"] if path == "fused" else 0)


def _zero_sign_images(model: nn.Module, inputs: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """Per image of the batch of ``n``: whether any binary conv's input sign is 0 (the input exactly at its
    threshold)."""
    hit = torch.zeros(n, dtype=torch.bool)
    for name, layer in binary_layers(model):
        if name in inputs:
            hit |= (layer.inference_form().input_signs(inputs[name].float()) == 0).flatten(1).any(1)
    return hit


def record_run(run_dir: Path, model: nn.Module, sample: Callable[[], torch.Tensor], rounds: int = 20,
               exact: bool = False, test=None, isa: str | None = None) -> dict:
    """Measure a trained run's exported model (exactness on the images ``sample()`` returns, latency at
    batch 1, fused unless ``exact``; with ``test`` batches also :func:`top1_agreement` on all of them) and
    write ``deploy.json``; when it cannot be measured (kernels not built, a layer that is not 1-bit, no test
    batch) the file says why and the run stays done."""
    try:
        doc = {"status": "measured", **measure(model, sample(), rounds, 3, layers=False, timing_batch=1,
                                               exact=exact, isa=isa, test=test)}
    except Exception as e:  # noqa: BLE001 - recorded for the leaderboard, not a failed run
        doc = {"status": "unavailable", "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    atomic_write_text(run_dir / DEPLOY, json.dumps(doc, indent=1))
    return doc
