"""``run_bench.py deploy-bench``: measured 1-bit inference speed, per binary layer and end to end.

For each backbone (``--arch``) and batch size (``--batch``), on the CPU, eval mode, channels_last, with
the same thread count for every case (``--threads``, default torch's):

* **per binary conv**, on the input the trained model gives that layer: the packed layer (activation
  sign packing + XNOR-popcount conv + scale, ``bnnbench/deploy/kernels.py``) against torch FP32 ``conv2d`` of the
  same shape;
* **end to end**: the packed model (``bnnbench/deploy/packed.py``) with its binary blocks fused
  (``bnnbench/deploy/fusion.py``: BatchNorm, residual, activation and the next layer's sign packing in the
  kernel's epilogue) against the same topology with FP32 convs, against the simulated binary model (float
  convs of +-1 values, what training runs) and against the unfused packed model; ``--exact`` measures the
  unfused layer-by-layer path instead (the trained model's floats bit for bit);
* **exactness** (:func:`bnnbench.deploy.packed.check_exact`) on the same batch: integer outputs equal, logits
  within float tolerance (fused) or equal (``--exact``), top-1 compared one for one; with ``--run``, top-1 of
  the trained and the deployed model on every test image (:func:`bnnbench.deploy.measure.top1_agreement`);
  the command fails unless the integers are equal and the predictions differ only where they may
  (:func:`bnnbench.deploy.measure.agreement_ok`: images that gave some binary conv an input exactly at its
  threshold, where torch's sign is 0, which has no 1-bit form, and on the fused path at most 1 in 1,000
  images besides, whose pre-activation the folded epilogue rounds across a threshold).

Timing is round-robin (``bnnbench/deploy/timing.py``): one call of each case per round, ratios paired within a
round (median and quartiles). Models are the method's backbone at its initialisation (speed does not
depend on the weights' values). Every finished training run measures its own exported model the same way
at batch 1 (:func:`bnnbench.deploy.measure.record_run`, ``deploy.json`` in the run directory); the
leaderboard's "1-bit latency" and "speed-up vs FP32" columns read that file, ``report`` never times anything itself.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.table import Table
from torch import nn

from bnnbench.deploy import kernels
from bnnbench.deploy.measure import agreement_ok, machine, measure, record_run
from bnnbench.engine import trained_model
from bnnbench.errors import ConfigError
from bnnbench.nn import binary_layers
from bnnbench.plugins import ARCHITECTURES, METHODS, build_model

#: the targets per kernel path (speed-up over torch FP32 at 2 threads): every binary conv of ResNet-18 at
#: batch 1, the networks end to end at batch 1, and ResNet-18 at batch 32; none for the portable path
TARGETS = {"avx512": {"layer": 15.0, "resnet18": 5.0, "cresnet20": 3.0, "resnet18@32": 3.0},
           "avx2": {"layer": 8.0, "resnet18": 4.0, "cresnet20": 2.5, "resnet18@32": 2.0}}


def targets(cases: list[dict], isa: str) -> list[dict]:
    """The targets of the kernel path ``isa`` checked against the measured cases."""
    want = TARGETS.get(isa, {})
    out = []
    for c in cases:
        if c["batch"] == 1 and c["arch"] == "resnet18" and c.get("layers") and "layer" in want:
            worst = min(c["layers"], key=lambda r: r["speedup"])
            out.append({"target": f"every binary conv of resnet18 >= {want['layer']}x FP32 conv2d", "met":
                        worst["speedup"] >= want["layer"], "worst": worst["layer"], "worst_speedup": worst["speedup"]})
        key = c["arch"] if c["batch"] == 1 else f"{c['arch']}@{c['batch']}"
        if key in want:
            got = c["end_to_end"]["speedup_vs_fp32"]
            out.append({"target": f"{c['arch']} batch {c['batch']} end to end >= {want[key]}x FP32", "met":
                        got >= want[key], "speedup": got})
    return out


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--arch", nargs="+", default=["cresnet20"], help="backbones (default cresnet20)")
    p.add_argument("--method", default="ovsw", help="method whose binary conv builds the model (default ovsw)")
    p.add_argument("--batch", nargs="+", type=int, default=[1], help="batch sizes (default 1)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every case (default torch's)")
    p.add_argument("--rounds", type=int, default=30, help="timed rounds per case (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per case first (default 5)")
    p.add_argument("--run", type=Path, nargs="+", default=[], metavar="RUN_DIR",
                   help="finished runs: measure their exported models (final checkpoint) instead of random "
                        "backbones and (re)write deploy.json there; needs --data-root for the test images")
    p.add_argument("--data-root", type=Path, default=None, help="dataset root of the --run runs")
    p.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    p.add_argument("--isa", choices=kernels.ISAS, default=None,
                   help="force the kernels' instruction set (default: the best this CPU has)")
    p.add_argument("--exact", action="store_true",
                   help="measure the unfused packed model (bit-for-bit floats) instead of the fused one")
    return p


def _model(method: str, arch: str, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """The backbone at its initialisation (exact zeros nudged: sign 0 is not a 1-bit weight), BN statistics
    from one random batch, and a random batch of its input shape."""
    spec = ARCHITECTURES.get(arch, source="--arch")
    torch.manual_seed(0)
    model = build_model(METHODS.get(method, source="--method")(family=spec.family), arch, 10)
    for _, layer in binary_layers(model):
        with torch.no_grad():
            layer.weight[layer.weight == 0] = 1e-3
    with torch.no_grad():
        model(torch.randn(max(batch, 2), *spec.input_size))
    return model.eval(), torch.randn(batch, *spec.input_size)


def run(args, console) -> int:
    """Measure, print and (``--json``) write; see the module docstring."""
    reason = kernels.unavailable_reason()
    if reason:
        raise ConfigError(f"deploy-bench: {reason}")
    before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, console)
    finally:
        torch.set_num_threads(before)


def _run(args, console) -> int:
    if args.rounds < 1 or args.warmup < 0 or min(args.batch) < 1:
        raise ConfigError(f"deploy-bench: --rounds {args.rounds} must be >= 1, --warmup {args.warmup} >= 0, "
                          f"--batch {args.batch} >= 1")
    try:
        kernels.isa_index(args.isa)
    except ValueError as e:   # a path this CPU lacks
        raise ConfigError(f"deploy-bench --isa: {e}") from None
    console.print(f"deploy-bench on {machine()['cpu']} ({args.isa or kernels.best_isa()} kernels, "
                  f"{torch.get_num_threads()} "
                  f"threads): median of {args.rounds} round-robin rounds after {args.warmup} warm-up calls")
    if args.run:
        return _run_stored(args, console)
    cases = [{"arch": a, "method": args.method,
              **measure(*_model(args.method, a, b), args.rounds, args.warmup, exact=args.exact, isa=args.isa)}
             for a in args.arch for b in args.batch]
    for c in cases:
        print_case(c, console)
    checked = targets(cases, args.isa or kernels.best_isa())
    for t in checked:
        console.print(f"target {t['target']}: {'met' if t['met'] else 'missed'} "
                      f"({t.get('speedup', t.get('worst_speedup')):.2f}x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(args.isa), "rounds": args.rounds, "warmup": args.warmup,
                                         "cases": cases, "targets": checked}, indent=1))
        console.print(f"figures written to {args.json}")
    return 0 if all(c["exact"]["exact"] for c in cases) else 1


def _run_stored(args, console) -> int:
    """deploy-bench --run: each run's exported model at batch 1, written to its deploy.json."""
    if args.data_root is None:
        raise ConfigError("deploy-bench --run needs --data-root (the test images the exactness check uses)")
    ok = True
    for d in args.run:
        _, model, test = trained_model(d, args.data_root)
        doc = record_run(d, model, lambda test=test: next(iter(test))[0][:16], args.rounds, args.exact, test,
                         args.isa)
        if doc["status"] != "measured":
            ok = False
            console.print(f"{d.name}: not measured: {doc['reason']}")
            continue
        e, x, a = doc["end_to_end"], doc["exact"], doc["agreement"]
        other, allowed = a["images"] - a["same"] - a["zero_sign"], agreement_ok(a, doc["path"])
        ok = ok and x["exact"] and allowed
        zeros = (f" ({a['zero_sign']} of the others with a binary input exactly 0, sign 0 when trained and +1 in 1 bit;"
                 f" {other} without" + ("" if allowed else ": more than the path allows") + ")"
                 if a["same"] < a["images"] else "")
        console.print(f"{d.name}: 1-bit ({doc['path']}) {1000 * e['packed']['median_s']:.3f} ms, FP32 "
                      f"{1000 * e['fp32']['median_s']:.3f} ms ({e['speedup_vs_fp32']:.2f}x); exact {x['exact']}, "
                      f"top-1 same on {a['same']}/{a['images']} test images{zeros} (trained "
                      f"{a['trained_top1']:.2f}%, deployed {a['deployed_top1']:.2f}%); "
                      f"{describe_conditions(e['conditions'])}")
    return 0 if ok else 1


def describe_conditions(c: dict) -> str:
    """One line on what a latency was measured under (``bnnbench.deploy.measure.conditions``)."""
    others = "other work unknown" if c["other_cores_busy"] is None else \
        f"other work kept {c['other_cores_busy']:.2f} of {c['cpus']} cores busy"
    verdict = "not a latency figure: re-measure on a quiet machine" if c["contended"] or c["wide_spread"] else "steady"
    return f"{others}, rounds spread {100 * c['spread']:.0f}% (IQR/median), {c['threads']} threads: {verdict}"


def print_case(c: dict, console) -> None:
    e = c["end_to_end"]
    if c.get("layers"):
        t = Table(title=f"{c['arch']} batch {c['batch']}: binary convs, packed vs FP32 conv2d")
        for col in ("layer", "input", "c_out", "stride", "1-bit ms", "FP32 ms", "speed-up", "IQR"):
            t.add_column(col, justify="right")
        for r in c["layers"]:
            t.add_row(r["layer"], "x".join(map(str, r["input"][1:])), str(r["out_channels"]), str(r["stride"]),
                      f"{1000 * r['packed']['median_s']:.3f}", f"{1000 * r['fp32']['median_s']:.3f}",
                      f"{r['speedup']:.1f}x", f"{r['speedup_q1']:.1f}-{r['speedup_q3']:.1f}")
        console.print(t)
    x = c["exact"]
    if c.get("fusion"):
        f = c["fusion"]
        gain = (f"unfused {1000 * e['unfused']['median_s']:.3f} ms ({e['speedup_vs_unfused']:.2f}x from fusion)"
                if "unfused" in e else f"so the packed model runs unfused (first reason: "
                f"{next((r['unfused'] for r in f['layers'] if r['unfused']), '-')})")
        console.print(f"{c['arch']}: {f['fused']} of {f['binary_convs']} binary convs fused, {f['packed_links']} "
                      f"hand their packed signs to the next; {gain}")
    console.print(f"{c['arch']} batch {c['batch']} end to end: 1-bit ({c['path']}) "
                  f"{1000 * e['packed']['median_s']:.3f} ms, "
                  f"FP32 {1000 * e['fp32']['median_s']:.3f} ms ({e['speedup_vs_fp32']:.2f}x, IQR "
                  f"{e['speedup_vs_fp32_q1']:.2f}-{e['speedup_vs_fp32_q3']:.2f}), simulated binary "
                  f"{1000 * e['simulated']['median_s']:.3f} ms ({e['speedup_vs_simulated']:.2f}x)")
    console.print(f"  measured with {describe_conditions(e['conditions'])}")
    mism = sum(layer["mismatches"] for layer in x["layers"])
    zeros = sum(layer["zero_inputs"] for layer in x["layers"])
    console.print(f"  exact: {x['exact']} ({mism} mismatching integer outputs, {zeros} zero activations), "
                  f"max |logit diff| {x['max_logit_diff']:.3g}, top-1 same {x['top1_same']}/{x['samples']}")
