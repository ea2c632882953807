"""Configuration: what a run is, before it runs.

* :mod:`~bnnbench.config.settings`: the training-settings schema (``TRAIN_FIELDS``: type, default, allowed
  values, help) and its checks; a leaf read by the recipes, the spec and the planner;
* :mod:`~bnnbench.config.recipes`: validated recipe YAML (tracks, stages, teacher; unknown keys are errors);
* :mod:`~bnnbench.config.spec`: :class:`RunSpec` (frozen; its hash is the run's identity),
  :class:`TrainSettings`, :class:`RunResult` (= the spec's part + :class:`Summary` + :class:`Environment`).

This package exports the schema and the spec (which the report reads without the plugins); import
:mod:`bnnbench.config.recipes` itself for recipes (it validates backbones and methods against the registries).
Layering: imports data, plugins and the leaves; never the store, the engine or anything above.
"""
from bnnbench.config.settings import SAFE_NAME, TRAIN_FIELDS, check_train, check_value
from bnnbench.config.spec import (
    SCHEMA,
    UNHASHED_SETTINGS,
    Environment,
    RunResult,
    RunSpec,
    Summary,
    TrainSettings,
    dependencies,
    reference,
    settings_from,
    variant_label,
)

__all__ = ["SAFE_NAME", "SCHEMA", "TRAIN_FIELDS", "UNHASHED_SETTINGS", "Environment", "RunResult", "RunSpec", "Summary",
           "TrainSettings", "check_train", "check_value", "dependencies", "reference", "settings_from",
           "variant_label"]
