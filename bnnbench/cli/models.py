"""Checkpoint workflows: ``run_bench.py evaluate`` and ``run_bench.py export`` (flags in ``bnnbench/cli/main.py``).

* ``evaluate RUN_DIR_OR_EXPORT [--data-root D] [--device cpu]``: test loss, top-1 and top-5 of a finished
  run's final weights (``checkpoint.pt``) or of a 1-bit export (``bnnbench/deploy/export.py``), next to what the
  run recorded for its final epoch. The evaluation is the trainer's own (same loader, same memory
  layout, same autocast), so on the same device the figures are identical.
* ``export RUN_DIR --out FILE``: the trained model with 1 bit per binary weight (see ``bnnbench/deploy/export.py``);
  prints the file's size next to the float model's and the leaderboard's packed size.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bnnbench.deploy import export
from bnnbench.engine import evaluate as run_eval
from bnnbench.engine import make_loaders, resolve_device, trained_model
from bnnbench.errors import ConfigError
from bnnbench.nn.ops import count_ops
from bnnbench.paths import default_data_root
from bnnbench.plugins import ARCHITECTURES
from bnnbench.store import RunDir


def _recorded(run_dir: Path) -> dict:
    rows = [r for r in RunDir(run_dir).read_metrics() if r.get("test_top1") is not None]
    return {k: rows[-1][k] for k in ("epoch", "test_loss", "test_top1", "test_top5")} if rows else {}


def evaluate(path: Path, data_root: Path, device: torch.device) -> tuple[dict, dict, object]:
    """(figures now, figures the run recorded for its final epoch, spec) of a run directory or an export."""
    if path.is_dir():
        spec, model, test = trained_model(path, data_root, device)
        recorded = _recorded(path)
    elif path.is_file():
        spec, model = export.load_exported(path)
        model = model.to(device)
        _, test, _ = make_loaders(spec, device, data_root)
        recorded = export.recorded(path)
    else:
        raise ConfigError(f"evaluate {path}: no such run directory or export file")
    amp = bool(spec.settings.amp) and device.type == "cuda"
    return run_eval(model, test, device, amp), recorded, spec


def cmd_evaluate(args, console) -> int:
    now, recorded, spec = evaluate(args.path, args.data_root or default_data_root(), resolve_device(args.device))
    console.print(f"{args.path}: {spec.method} on {spec.backbone} ({spec.dataset}), seed {spec.seed}")
    console.print(f"  test top-1 {now['test_top1']:.2f}  top-5 {now['test_top5']:.2f}  loss {now['test_loss']:.4f}")
    if recorded:
        same = all(now[k] == recorded[k] for k in ("test_top1", "test_top5"))
        console.print(f"  recorded at epoch {recorded['epoch'] + 1}: top-1 {recorded['test_top1']:.2f}  top-5 "
                      f"{recorded['test_top5']:.2f}  loss {recorded['test_loss']:.4f}  "
                      + ("(identical)" if same else "[yellow](differs: another device, layout or data?)[/yellow]"),
                      soft_wrap=True)
    return 0


def cmd_export(args, console) -> int:
    if not args.path.is_dir():
        raise ConfigError(f"export {args.path}: not a run directory")
    spec, model, test = trained_model(args.path, args.data_root or default_data_root(), torch.device("cpu"))
    with torch.no_grad():
        num_classes = model(next(iter(test))[0][:1]).shape[1]
    doc = export.export_model(model, RunDir(args.path).read_spec().to_dict(), num_classes)
    doc["recorded"] = _recorded(args.path)
    size = export.save(doc, args.out)
    float_bytes = sum(p.numel() * 4 for p in model.parameters())
    packed = count_ops(model, ARCHITECTURES.get(spec.backbone).input_size).packed_bytes
    mib = 2 ** 20
    console.print(f"wrote {args.out}: {size / mib:.3f} MiB ({len(doc['binary'])} binary convs at 1 bit per "
                  f"weight); its parameters in float32: {float_bytes / mib:.3f} MiB ({float_bytes / size:.1f}x); "
                  f"the leaderboard's packed size: {packed / mib:.3f} MiB", soft_wrap=True)
    return 0
