"""Checkpoint workflows: ``run_bench.py evaluate`` and ``run_bench.py export``.

* ``evaluate RUN_DIR_OR_EXPORT [--data-root D] [--device cpu]``: test loss, top-1 and top-5 of a finished
  run's final weights (``checkpoint.pt``) or of a 1-bit export (``bnnbench/deploy/export.py``), next to what the
  run recorded for its final epoch. The evaluation is the trainer's own (same loader, same memory
  layout, same autocast), so on the same device the figures are identical.
* ``export RUN_DIR --out FILE``: the trained model with 1 bit per binary weight (see ``bnnbench/deploy/export.py``);
  prints the file's size next to the float model's and the leaderboard's packed size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bnnbench.errors import ConfigError
from bnnbench.paths import default_data_root


def add_evaluate_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("path", type=Path, metavar="RUN_DIR_OR_EXPORT",
                   help="a finished run's directory, or a file written by 'run_bench.py export'")
    _common(p)
    return p


def add_export_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("path", type=Path, metavar="RUN_DIR", help="a finished run's directory")
    p.add_argument("--out", type=Path, required=True, help="the export file to write (e.g. model.1bit.pt)")
    _common(p)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default: $BNNBENCH_DATA or ./data)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                   help="load the third-party plugin the run used first (repeatable)")


def _load_plugins(args) -> None:
    from bnnbench.plugins.registry import ensure_builtins, load_plugin
    ensure_builtins()
    for spec in args.plugin:
        load_plugin(spec)


def _recorded(run_dir: Path) -> dict:
    from bnnbench.store import RunDir
    rows = [r for r in RunDir(run_dir).read_metrics() if r.get("test_top1") is not None]
    return {k: rows[-1][k] for k in ("epoch", "test_loss", "test_top1", "test_top5")} if rows else {}


def evaluate(path: Path, data_root: Path, device: torch.device) -> tuple[dict, dict, object]:
    """(figures now, figures the run recorded for its final epoch, spec) of a run directory or an export."""
    from bnnbench.deploy import export
    from bnnbench.engine.run import evaluate as run_eval
    from bnnbench.engine.run import make_loaders, trained_model
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
    from bnnbench.engine.run import resolve_device
    _load_plugins(args)
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
    from bnnbench.deploy import export
    from bnnbench.engine.run import trained_model
    from bnnbench.nn.ops import count_ops
    from bnnbench.plugins.registry import ARCHITECTURES
    from bnnbench.store import RunDir
    _load_plugins(args)
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


# --- --init-from ------------------------------------------------------------------------------------------

def resolve_init(path: Path) -> dict:
    """``{"path", "sha256", "run"}`` for ``--init-from PATH``: a checkpoint file of this suite or any torch
    state dict (a run directory means its ``checkpoint.pt``); ``run`` is the spec hash of the run that
    wrote it, when it is a suite checkpoint. The sha256 enters the run's identity."""
    import hashlib
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise ConfigError(f"--init-from {path}: no such file (a checkpoint file, or a run directory holding "
                          f"checkpoint.pt)")
    data = p.read_bytes()
    try:
        state = _read(data)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a file it cannot read
        raise ConfigError(f"--init-from {p}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    run = state.get("spec_hash") if isinstance(state, dict) else None
    return {"path": str(p.resolve()), "sha256": hashlib.sha256(data).hexdigest(), "run": run}


def _read(data: bytes):
    """A suite checkpoint (integrity-checked) or any torch file of tensors and containers."""
    import io

    from bnnbench.store import unpack_checkpoint
    try:
        return unpack_checkpoint(data)
    except ValueError:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _state_dict_of(state) -> dict:
    """The model weights inside a checkpoint: a suite checkpoint's ``model``, a ``state_dict`` entry, or the
    dict itself; a DataParallel ``module.`` prefix on every key is removed."""
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    sd = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def init_from(model: torch.nn.Module, init: dict) -> dict:
    """Load ``init`` (from :func:`resolve_init`) into ``model``: every tensor whose name and shape match.
    Returns the report (loaded, missing, unexpected, shape mismatches); raises when nothing matches or the
    file changed since the run was planned."""
    import hashlib

    from bnnbench.errors import RunError
    data = Path(init["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != init["sha256"]:
        raise RunError(f"--init-from {init['path']}: the file changed since the run was planned (sha256 differs)")
    sd, own = _state_dict_of(_read(data)), model.state_dict()
    take = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    report = {"loaded": len(take), "missing": sorted(k for k in own if k not in take),
              "unexpected": sorted(k for k in sd if k not in own),
              "shape_mismatch": sorted(f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd
                                       if k in own and own[k].shape != sd[k].shape)}
    if not take:
        raise RunError(f"--init-from {init['path']}: no tensor matches the model by name and shape (its keys "
                       f"start {sorted(sd)[:3]}, the model's {sorted(own)[:3]})")
    model.load_state_dict(take, strict=False)
    return report


def describe_init(init: dict, report: dict) -> str:
    def some(keys):
        return f"{len(keys)} ({', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''})" if keys else "none"
    return (f"initialised from {init['path']}: {report['loaded']} tensors loaded; missing (kept as built): "
            f"{some(report['missing'])}; unexpected (ignored): {some(report['unexpected'])}; shape mismatch "
            f"(kept as built): {some(report['shape_mismatch'])}")
