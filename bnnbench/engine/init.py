"""``--init-from PATH``: start a run from the weights of a file (a suite checkpoint or any torch state dict).

:func:`resolve_init` (at planning) records the file's path, sha256 (part of the run's identity) and, for a
suite checkpoint, the hash of the run that wrote it; :func:`init_from` (when the run starts) loads every
tensor whose name and shape match and reports the rest (``init.json`` in the run directory).
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from bnnbench.errors import ConfigError, RunError
from bnnbench.store import CKPT, unpack_checkpoint


def resolve_init(path: Path) -> dict:
    """``{"path", "sha256", "run"}`` for ``--init-from PATH``: a checkpoint file of this suite or any torch
    state dict (a run directory means its ``checkpoint.pt``); ``run`` is the spec hash of the run that
    wrote it, when it is a suite checkpoint. The sha256 enters the run's identity."""
    p = Path(path)
    if p.is_dir():
        p = p / CKPT
    if not p.is_file():
        raise ConfigError(f"--init-from {path}: no such file (a checkpoint file, or a run directory holding "
                          f"checkpoint.pt)")
    data = p.read_bytes()
    try:
        state = read_any(data)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a file it cannot read
        raise ConfigError(f"--init-from {p}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not state_dict_of(state):
        raise ConfigError(f"--init-from {p}: holds no tensors by name (a {type(state).__name__}); give a checkpoint "
                          f"of this suite or a state dict")
    run = state.get("spec_hash")
    return {"path": str(p.resolve()), "sha256": hashlib.sha256(data).hexdigest(), "run": run}


def check_matches(model: torch.nn.Module, init: dict, what: str) -> None:
    """Before any compute: ConfigError when no tensor of the ``--init-from`` file matches ``model`` (``what``:
    the method and backbone) by name and shape."""
    sd, own = state_dict_of(read_any(Path(init["path"]).read_bytes())), model.state_dict()
    if not any(k in own and own[k].shape == v.shape for k, v in sd.items()):
        raise ConfigError(f"--init-from {init['path']}: no tensor matches {what} by name and shape (its keys "
                          f"start {sorted(sd)[:3]}, the model's {sorted(own)[:3]})")


def read_any(data: bytes):
    """A suite checkpoint (integrity-checked) or any torch file of tensors and containers."""
    try:
        return unpack_checkpoint(data)
    except ValueError:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def state_dict_of(state) -> dict:
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

    data = Path(init["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != init["sha256"]:
        raise RunError(f"--init-from {init['path']}: the file changed since the run was planned (sha256 differs)")
    sd, own = state_dict_of(read_any(data)), model.state_dict()
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
