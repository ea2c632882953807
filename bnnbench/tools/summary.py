"""``run_bench.py summary``: the per-layer model summary (larq's ``lq.models.summary``, for bnnbench backbones).

For a backbone built with a method's binary convs: every conv and linear layer and every module with
parameters of its own (name, kind, input and output shape for one image, parameters and binary parameters,
MACs (BOPs for a binary conv), memory with binary weights at 1 bit and everything at 32 bit), then the
totals. The counts come from :func:`bnnbench.nn.ops.layer_rows`, the counter behind the leaderboard's OPs and
size columns, and the totals are printed as those columns print them.
"""
from __future__ import annotations

import argparse

import torch
from rich import box
from rich.table import Table

from bnnbench.errors import ConfigError
from bnnbench.nn.ops import LayerRow, count_ops, layer_rows
from bnnbench.plugins import ARCHITECTURES, METHODS, build_model
from bnnbench.report.tables import fmt_si, fmt_size


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``run_bench.py summary`` flags."""
    p.add_argument("--arch", required=True, help="backbone (run_bench.py list shows them)")
    p.add_argument("--method", default="ovsw", help="method whose binary convs build it (default ovsw)")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=None,
                   help="input of one image (default: the backbone's)")
    p.add_argument("--num-classes", type=int, default=None, help="classes (default 10; 1000 for ImageNet backbones)")
    return p


def summarize(arch: str, method: str = "ovsw", input_size: tuple[int, int, int] | None = None,
              num_classes: int | None = None) -> tuple[list[LayerRow], dict]:
    """(rows, totals) of ``arch`` built with ``method``'s binary convs; totals hold the leaderboard's
    ``ops`` and ``packed_bytes`` exactly as a run of that configuration records them."""
    spec = ARCHITECTURES.get(arch, source="--arch")
    size = tuple(input_size or spec.input_size)
    classes = num_classes or (1000 if spec.family == "imagenet" else 10)
    torch.manual_seed(0)
    model = build_model(METHODS.get(method, source="--method")(family=spec.family), spec, classes,
                        in_channels=size[0], source="summary")
    try:
        rows = layer_rows(model, size)
    except RuntimeError as exc:
        raise ConfigError(f"summary --input-size {' '.join(map(str, size))}: {arch} cannot run on it "
                          f"({str(exc).splitlines()[0]})") from None
    return rows, count_ops(model, size).as_dict()


def _shape(s: tuple | None) -> str:
    return "-" if s is None else "x".join(map(str, s))


def print_summary(rows: list[LayerRow], totals: dict, title: str, console) -> None:
    """The per-layer table (numbers never cut; a long layer name wraps in its cell), then the totals."""
    body = [[r.name, r.kind, _shape(r.input_shape), _shape(r.output_shape), f"{r.params:,}", f"{r.binary_params:,}",
             fmt_si(r.macs) if r.macs else "-", f"{r.bytes_1bit / 1024:.1f}", f"{r.bytes_32bit / 1024:.1f}"]
            for r in rows]
    total = ["total", "", "", "", f"{totals['params']:,}", f"{totals['binary_params']:,}",
             fmt_si(totals["bops"] + totals["flops"]), f"{sum(r.bytes_1bit for r in rows) / 1024:.1f}",
             f"{sum(r.bytes_32bit for r in rows) / 1024:.1f}"]
    head = ["layer", "kind", "input", "output", "params", "binary", "MACs", "1-bit KiB", "32-bit KiB"]
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
                  show_edge=False)
    for i, h in enumerate(head):
        width = max(len(r[i]) for r in [head, *body, total])
        if h == "layer":
            table.add_column(h, overflow="fold", min_width=min(width, 12), ratio=1)
        else:
            table.add_column(h, justify="left" if h == "kind" else "right", no_wrap=True, min_width=width)
    for r in body:
        table.add_row(*r)
    table.add_section()
    table.add_row(*total)
    console.print(table)
    console.print(f"MACs: {fmt_si(totals['bops'])} binary (BOPs) + {fmt_si(totals['flops'])} full precision (FLOPs). "
                  f"Leaderboard columns: OPs {fmt_si(totals['ops'])} (FLOPs + BOPs / 64), size "
                  f"{fmt_size(totals['packed_bytes'])} (binary weights at 1 bit, the rest at 32); binary share of the "
                  f"parameters {100 * totals['binary_param_ratio']:.1f}%.")


def run(args, console) -> int:
    rows, totals = summarize(args.arch, args.method, args.input_size, args.num_classes)
    size = "x".join(map(str, totals["input_size"]))
    print_summary(rows, totals, f"{args.arch} with {args.method}'s binary convs, input {size}", console)
    return 0
