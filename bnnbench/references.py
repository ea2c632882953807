"""Published results (``results/reference.yaml``) for the leaderboard's paper column.

A leaf: read by :meth:`bnnbench.plugins.Method.references` (a plugin adds its own ``published`` entries)
and by the report, which is given the plugins' entries by the command line and never imports a plugin."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from bnnbench.errors import ConfigError
from bnnbench.paths import reference_file

_KEYS = {"method", "dataset", "backbone", "top1", "top5", "epochs", "source"}


@functools.lru_cache(maxsize=1)
def _load(path: str) -> tuple[dict[str, Any], ...]:
    p = Path(path)
    if not p.is_file():
        return ()
    try:
        doc = yaml.safe_load(p.read_text()) or []
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(doc, list):
        raise ConfigError(f"{p}: expected a list of entries with keys {sorted(_KEYS)}")
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict) or set(entry) - {"stage"} != _KEYS:
            raise ConfigError(f"{p}: entry {i} must have exactly the keys {sorted(_KEYS)} (and optionally stage), "
                              f"got {entry!r}")
    return tuple(doc)


def load_references() -> list[dict[str, Any]]:
    return [dict(e) for e in _load(str(reference_file()))]


def find_reference(method: str, dataset: str, backbone: str, stage: str = "",
                   entries: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The published number for runs of ``method`` on ``dataset`` x ``backbone`` among ``entries`` (default:
    ``results/reference.yaml``); for a two-stage recipe's runs, the entry naming their ``stage`` (the
    two-stage numbers are those of the final stage)."""
    for r in load_references() if entries is None else entries:
        if (r["method"], r["dataset"], r["backbone"], r.get("stage") or "") == (method, dataset, backbone, stage):
            return r
    return None
