"""Evaluation extras a recipe may ask for after training (``eval:``), and their typed requests.

    eval:
      robustness:                    # bnnbench/engine/robustness.py; every key optional
        corruptions: [gaussian_noise, fog]   # default: all 15 (bnnbench/data/corruptions.py)
        severities: [1, 3, 5]                # default: 1..5
        epsilons: [1, 2, 8]                  # FGSM/PGD radii in pixel levels (eps/255); default 1 2 8
        pgd_steps: 10
        subset: 1000                         # the first N test images; default: all
        seed: 0
        transfer_source: PATH                # a finished full-precision run (binarize: none)

Not part of a run's identity: asking for robustness never changes a run's hash.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnnbench.data.corruptions import CORRUPTIONS, SEVERITIES, check_corruptions
from bnnbench.errors import ConfigError, did_you_mean

PGD_STEPS = 10
DEFAULT_EPSILONS = (1.0, 2.0, 8.0)
EVAL_FIELDS = ("robustness",)


@dataclass(frozen=True)
class RobustnessRequest:
    """What to evaluate; the defaults are the full track (15 corruptions x 5 severities, eps 1, 2, 8)."""

    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    pgd_steps: int = PGD_STEPS
    subset: int | None = None
    seed: int = 0
    transfer_source: Path | None = None
    overwrite: bool = False   # replace a robustness.json made with another setup (subset, seed, pgd_steps)

    def check(self, where: str) -> None:
        check_corruptions(self.corruptions, self.severities, where)
        if any(not 0 <= e <= 255 for e in self.epsilons):
            raise ConfigError(f"{where}: epsilons {list(self.epsilons)} must lie in [0, 255] (pixel levels)")
        if self.pgd_steps < 1:
            raise ConfigError(f"{where}: pgd_steps = {self.pgd_steps} must be at least 1")
        if self.subset is not None and self.subset < 1:
            raise ConfigError(f"{where}: subset = {self.subset} must be a positive number of test images")

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> RobustnessRequest:
        """From a recipe's ``eval: {robustness: {...}}`` (``{}`` or ``true``: the defaults); unknown keys and
        wrong types are errors naming ``where``."""
        if doc is True or doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: robustness must be a mapping of settings or true, got {doc!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in doc.items():
            if k not in fields:
                raise ConfigError(f"{where}: unknown key robustness.{k}{did_you_mean(k, fields)}; allowed: "
                                  f"{', '.join(fields)}")
            if k in ("corruptions", "severities", "epsilons"):
                if not isinstance(v, list) or not v:
                    raise ConfigError(f"{where}: robustness.{k} must be a non-empty list, got {v!r}")
                v = tuple(float(e) for e in v) if k == "epsilons" else tuple(v)
            elif k == "transfer_source":
                v = None if v is None else Path(v)
            elif not isinstance(v, int) and not (k == "subset" and v is None):
                raise ConfigError(f"{where}: robustness.{k} must be an integer, got {v!r}")
            kw[k] = v
        req = cls(**kw)
        req.check(where)
        return req


def parse_eval(doc: Any, where: str) -> dict:
    """Validate a recipe's ``eval`` mapping (keys: :data:`EVAL_FIELDS`); returns it unchanged."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: eval must be a mapping such as {{robustness: {{subset: 1000}}}}, got {doc!r}")
    for k, v in doc.items():
        if k not in EVAL_FIELDS:
            raise ConfigError(f"{where}: unknown key eval.{k}{did_you_mean(k, EVAL_FIELDS)}; allowed: "
                              f"{', '.join(EVAL_FIELDS)}")
        RobustnessRequest.from_dict(v, f"{where}, eval")
    return dict(doc)


def robustness_request(evaluation: dict, where: str) -> RobustnessRequest | None:
    """The robustness request of a run's ``evaluation`` (its recipe's ``eval``), None when not asked for."""
    if not evaluation or "robustness" not in evaluation:
        return None
    return RobustnessRequest.from_dict(evaluation["robustness"], where)
