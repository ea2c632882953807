"""Planning: a typed sweep request -> the ordered list of RunSpecs, stages and teachers included.

:class:`SweepRequest` says what to run (methods, backbones, recipe, track, seeds, overrides, ``--init-from``,
plugins); :func:`plan` validates all of it first (unknown names, out-of-range values and bad overrides are
errors before any compute) and returns the runs, dependencies before the runs that need them. The command
line only parses flags into a request (``bnnbench/cli/main.py``); ``gpu_check``, the tests and a Python user
call :func:`plan` directly::

    from bnnbench.runner import SweepRequest, plan
    specs, recipe = plan(SweepRequest(methods=["ovsw", "recu"], seeds=3, sets=[("epochs", 2)]))

Settings are resolved in this order: the recipe's ``train`` (after the track), a stage's own changes, the
request's ``sets`` / ``epochs`` / ``deterministic`` (every run), then scoped sets ``SCOPE.KEY`` (one stage or
the teacher; :func:`bnnbench.runner.stages.split_scoped`). Method hyperparameters: the method's defaults,
its dataset-family preset, the recipe's ``method_hparams``, then ``hps``.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from bnnbench.config.recipes import Recipe, load_recipe
from bnnbench.config.settings import check_train
from bnnbench.config.spec import UNHASHED_SETTINGS, RunSpec, settings_from
from bnnbench.config.yamlio import parse_scalar
from bnnbench.data.catalog import check_loader
from bnnbench.engine.init import check_matches, resolve_init
from bnnbench.engine.rebuild import run_model
from bnnbench.errors import ConfigError
from bnnbench.plugins import ARCHITECTURES, METHODS, load_plugins, provenance
from bnnbench.runner.stages import expand, split_scoped


@dataclass(frozen=True)
class SweepRequest:
    """What to run. ``sets`` and ``hps`` are (key, value) pairs with values already parsed (``("lr", 0.05)``,
    ``("teacher.epochs", 16)``, ``("ovsw.delta", 0.02)``); :func:`parse_assignments` turns ``KEY=VALUE``
    text into them."""
    methods: Sequence[str]
    archs: Sequence[str] = ()
    recipe: str | None = None
    track: str = "unified"
    seeds: int = 1
    epochs: int | None = None
    sets: Sequence[tuple[str, Any]] = ()
    hps: Sequence[tuple[str, Any]] = ()
    deterministic: bool = False
    init_from: Path | None = None
    download: bool = True
    plugins: Sequence[str] = field(default_factory=tuple)


class Plan(NamedTuple):
    specs: list[RunSpec]
    recipe: Recipe


def parse_assignments(items: Sequence[str], flag: str) -> list[tuple[str, object]]:
    """KEY=VALUE pairs of ``flag``; a key given twice is an error (the earlier one would be lost)."""
    out, seen = [], set()
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key in seen:
            raise ConfigError(f"{flag} {key}: given twice; give each key once")
        seen.add(key)
        out.append((key, parse_scalar(raw)))
    return out


def plan(req: SweepRequest) -> Plan:
    """Resolve the run matrix (method x backbone x seed, each expanded into its stages and teacher) into
    RunSpecs, validating everything first. A teacher shared by every method is one run."""
    load_plugins(req.plugins)
    methods, recipe, archs = _check(req)
    sets, scoped = split_scoped(list(req.sets), recipe.stages, recipe.teacher, f"recipe {recipe.path}")
    hps = _hparams_by_method(req.hps, methods)
    init = resolve_init(req.init_from) if req.init_from else {}
    overrides = {**dict(sets), **({"epochs": req.epochs} if req.epochs is not None else {}),
                 **({"deterministic": True} if req.deterministic else {})}
    specs = []
    for arch in archs:
        for method in methods:
            specs += _method_runs(req, recipe, arch, method, sets, hps.get(method, {}), init, overrides, scoped)
    if init:
        _check_init(specs, init)
    return Plan(list({s.name: s for s in specs}.values()), recipe)


def _check_init(specs: list[RunSpec], init: dict) -> None:
    """``--init-from`` must fit every method x backbone it starts (checked on a freshly built model)."""
    for method, backbone in dict.fromkeys((s.method, s.backbone) for s in specs if s.init_from.get("sha256")):
        spec = next(s for s in specs if (s.method, s.backbone) == (method, backbone))
        classes = 1000 if ARCHITECTURES.get(backbone).family == "imagenet" else 10
        check_matches(run_model(spec, classes, spec.name)[1], init, f"{method} on {backbone}")


def _check(req: SweepRequest) -> tuple[list[str], Recipe, list[str]]:
    """(methods, recipe, backbones) of the request, every name and number checked."""
    if not req.methods:
        raise ConfigError("--methods is required (e.g. --methods ovsw recu, or --methods all); "
                          "see --list for what is registered")
    methods = METHODS.names() if list(req.methods) == ["all"] else list(dict.fromkeys(req.methods))
    for m in methods:
        METHODS.get(m, source="--methods")
    recipe = load_recipe(req.recipe)
    archs = list(dict.fromkeys(req.archs or [recipe.backbone]))
    for a in archs:
        ARCHITECTURES.get(a, source="--archs")
    if req.seeds < 1 or req.seeds > 10_000:
        raise ConfigError(f"--seeds {req.seeds}: must be between 1 and 10000")
    if req.epochs is not None and req.epochs < 1:
        raise ConfigError(f"--epochs {req.epochs}: must be at least 1")
    return methods, recipe, archs


def _hparams_by_method(hps: Sequence[tuple[str, Any]], methods: list[str]) -> dict[str, dict]:
    """METHOD.KEY=VALUE grouped by method; a method that is not being run is an error."""
    out: dict[str, dict] = {}
    for key, value in hps:
        if "." not in key:
            raise ConfigError(f"--hp {key}={value}: expected METHOD.KEY=VALUE, e.g. ovsw.delta=0.02")
        m, k = key.split(".", 1)
        METHODS.get(m, source="--hp")
        if m not in methods:
            raise ConfigError(f"--hp {key}={value}: method {m!r} is not among --methods ({', '.join(methods)}); "
                              f"add it there or drop the --hp")
        out.setdefault(m, {})[k] = value
    return out


def _method_runs(req: SweepRequest, recipe: Recipe, arch: str, method: str, sets, cli_hp: dict, init: dict,
                 overrides: dict, scoped: dict) -> list[RunSpec]:
    """The runs of one method x backbone, every seed, stages and teacher included."""
    family = ARCHITECTURES.get(arch).family
    train, note, changes, recipe_epochs = _settings(recipe, method, req, sets)
    hp, hp_changes = _method_hparams(method, family, train.pop("method_hparams"), cli_hp, recipe.path)
    plugins = {k: v for k, v in (("method", provenance(METHODS.get(method))),
                                 ("backbone", provenance(ARCHITECTURES.get(arch)))) if v}
    runs = []
    for seed in range(train["seed"], train["seed"] + req.seeds):
        base = dict(recipe=recipe.name, track=req.track, dataset=recipe.dataset, backbone=arch, method=method,
                    method_hparams=hp, seed=seed, recipe_epochs=recipe_epochs, track_note=note,
                    backbone_options=dict(recipe.backbone_options) if arch == recipe.backbone else {},
                    plugins=plugins, download=req.download, evaluation=dict(recipe.evaluation))
        make = functools.partial(_make_spec, base, hp_changes, init)
        runs += expand(recipe.stages, recipe.teacher, train, changes, make, f"recipe {recipe.path}", overrides,
                       scoped)
    return runs


def _settings(recipe: Recipe, method: str, req: SweepRequest, sets) -> tuple[dict, str, dict, int]:
    """(validated training settings, track note, changes from the recipe, the recipe's epochs)."""
    train, note = recipe.resolve(method, req.track)
    base = dict(train)
    for key, value in sets:
        if key == "method_hparams":
            raise ConfigError("--set method_hparams: use --hp METHOD.KEY=VALUE instead")
        train[key] = value
    if req.epochs is not None:
        train["epochs"] = req.epochs
    if req.deterministic:
        train["deterministic"] = True
    flags = " and ".join(f for f, used in (("--set", sets), ("--epochs", req.epochs is not None),
                                           ("--deterministic", req.deterministic)) if used)
    where = f"{flags} on recipe {recipe.path}" if flags else f"recipe {recipe.path}"
    hparams = train.pop("method_hparams")          # this method's own mapping, validated by the Method
    train = {**check_train(train, where, partial=False), "method_hparams": hparams}
    check_loader(train["loader"], recipe.dataset, where)
    changes = {k: train[k] for k in train
               if k != "method_hparams" and k not in UNHASHED_SETTINGS and train[k] != base.get(k)}
    return train, note, changes, base["epochs"]


def _method_hparams(method: str, family: str, recipe_hp: dict, cli_hp: dict, recipe_path: str) -> tuple[dict, dict]:
    """(resolved hyperparameters, those --hp changed from what the recipe gives)."""
    cls = METHODS.get(method)
    base = cls(family=family, overrides=recipe_hp, source=f"recipe {recipe_path}").hp
    hp = cls(family=family, overrides={**recipe_hp, **cli_hp}, source=f"recipe {recipe_path} and --hp").hp
    return hp, {f"{method}.{k}": hp[k] for k in sorted(cli_hp) if hp[k] != base[k]}


def _make_spec(base: dict, hp_changes: dict, init: dict, settings: dict, changed: dict, **fields) -> RunSpec:
    """One RunSpec of the matrix; ``--init-from`` (``init``) applies to a run that has no stage to start from."""
    if fields.get("method", base["method"]) != base["method"]:  # a teacher shared by every method
        family = ARCHITECTURES.get(base["backbone"]).family
        base = {**base, "method": fields["method"], "method_hparams": METHODS.get(fields["method"])(family=family).hp}
        hp_changes = {}
    fields.pop("method", None)
    cli_init = bool(init) and not fields.get("init_from") and fields.get("stage") != "teacher"
    extra = {"init_from": init} if cli_init else {}
    mark = {"init_from": init["sha256"][:8]} if cli_init else {}
    return RunSpec(**base, settings=settings_from(settings), changes={**changed, **hp_changes, **mark}, **extra,
                   **fields)
