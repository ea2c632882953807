"""Runs that depend on runs: a recipe's ``teacher`` and ``stages`` (the two-stage track, README "Two-stage
training and distillation").

A recipe may declare, next to ``train``::

    teacher:                    # a full-precision run trained first (binarize: none), or
      train: {epochs: 8}        #   teacher: {torchvision: resnet34}  (ImageNet, weights from the hub cache)
      method: xnor              # optional: one teacher for every method (else each method's own network)
    stages:
      - name: stage1            # binary activations, real weights
        train: {binarize: activations, epochs: 4}
      - name: stage2            # both binary, initialised from stage1's final checkpoint
        init: stage1
        train: {binarize: all, epochs: 4, distill_weight: 1.0}

Each stage's settings are the recipe's (after the track) with the stage's changes on top, then the
command line's ``--set KEY=VALUE`` / ``--epochs`` (every run), then ``--set SCOPE.KEY=VALUE`` (only the
runs of ``SCOPE``: ``teacher`` or a stage name, e.g. ``--set teacher.epochs=16``; see :func:`split_scoped`).
For every method x backbone x seed, :func:`expand` gives the teacher run (when a stage distils from it),
then the stages in order (leaderboard rows ``ovsw@teacher``, ``ovsw@stage1``, ...; stage settings come from
the recipe, so they are not "changes"); each run records what it depends on (``init_from`` and
``teacher``: the run's hash, directory and group), which is part of its identity; in its group (the
seed-free identity) the dependency's group stands instead, so that the seeds of one stage share a
leaderboard row. The runner runs them in that order, skips what is done and resumes what was interrupted;
a run whose dependency is not done fails with that reason and is not started. Under Slurm, dependent
runs are submitted after (``afterany``) the jobs they depend on.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from bnnbench.config.settings import check_train, pretrained_teacher
from bnnbench.config.spec import reference
from bnnbench.errors import ConfigError
from bnnbench.plugins import METHODS

TEACHER_FORCED = {"binarize": "none", "distill_weight": 0.0}   # a teacher is a full-precision run


def split_scoped(sets: list[tuple[str, Any]], stages: list[dict], teacher: dict | None,
                 where: str) -> tuple[list[tuple[str, Any]], dict[str, dict]]:
    """``--set`` pairs split into those for every run and ``{scope: {key: value}}`` for ``SCOPE.KEY=VALUE``,
    where SCOPE is ``teacher`` (a teacher run of the suite) or one of the recipe's stage names."""
    scopes = [s["name"] for s in stages] + (["teacher"] if teacher and "train" in teacher else [])
    plain, scoped = [], {}
    for key, value in sets:
        if "." not in key:
            plain.append((key, value))
            continue
        matches = [sc for sc in scopes if key.startswith(sc + ".")]   # stage names may contain '.'
        scope = max(matches, key=len) if matches else key.split(".", 1)[0]
        name = key[len(scope) + 1:]
        if not matches:
            hint = f"; for a method hyperparameter use --hp {key}={value}" if scope in METHODS.names() else ""
            raise ConfigError(f"--set {key}={value}: {scope!r} is not a stage or teacher of {where} "
                              f"(scopes: {', '.join(scopes) or 'none, the recipe has no stages or teacher run'})"
                              f"{hint}")
        if scope == "teacher" and name in TEACHER_FORCED:
            raise ConfigError(f"--set {key}={value}: the teacher is always a full-precision run "
                              f"({', '.join(f'{k}={v}' for k, v in TEACHER_FORCED.items())})")
        if name == "method_hparams":
            raise ConfigError(f"--set {key}: use --hp METHOD.KEY=VALUE for method hyperparameters")
        scoped.setdefault(scope, {})[name] = value
    return plain, scoped


def expand(stages: list[dict], teacher: dict | None, train: dict, changes: dict,
           make: Callable[..., Any], where: str, overrides: dict | None = None,
           scoped: dict[str, dict] | None = None) -> list:
    """The runs of one method x backbone x seed, dependencies first. ``make(train, changes, **fields)``
    builds a RunSpec from validated settings; ``train`` are the recipe's settings for this method,
    ``overrides`` the command line's for every run (``--set``, ``--epochs``), which win over a stage's own,
    and ``scoped`` the command line's per scope (``--set teacher.epochs=16``), which win over both; they are
    listed among that run's changes (``epochs``) and, prefixed, among the changes of the runs that depend on
    it (``teacher.epochs``), so their rows' labels tell them apart."""
    overrides, scoped = overrides or {}, scoped or {}

    def settings(extra: dict, scope: str, force: dict | None = None) -> dict:
        what = "teacher" if scope == "teacher" else f"stage {scope}" if scope else "train"
        mine = scoped.get(scope, {})
        flag = f" and --set {', '.join(f'{scope}.{k}' for k in mine)}" if mine else ""
        return check_train({**copy.deepcopy(train), **extra, **overrides, **mine, **(force or {})},
                           f"{where}, {what}{flag}", partial=False)

    stage_list = stages or [{"name": "", "train": {}, "init": None}]
    stage_train = [settings(st["train"], st["name"]) for st in stage_list]
    runs, ref, carried = [], {}, {}
    if any(t["distill_weight"] > 0 for t in stage_train):
        teacher_run, ref = _teacher(teacher, changes, scoped, make, lambda tr: settings(tr, "teacher", TEACHER_FORCED),
                                    where)
        if teacher_run is not None:
            runs.append(teacher_run)
            carried["teacher"] = _prefixed("teacher", scoped)
    for st, s_train in zip(stage_list, stage_train):
        fields = {"stage": st["name"], "teacher": ref if s_train["distill_weight"] > 0 else {}}
        inherited = dict(carried["teacher"]) if fields["teacher"] and "teacher" in carried else {}
        if st["init"]:
            fields["init_from"] = reference(next(r for r in runs if r.stage == st["init"]))
            inherited.update(carried[st["init"]])
        carried[st["name"]] = {**inherited, **_prefixed(st["name"], scoped)}
        runs.append(make(s_train, {**changes, **inherited, **scoped.get(st["name"], {})}, **fields))
    return runs


def _teacher(teacher: dict | None, changes: dict, scoped: dict[str, dict], make: Callable[..., Any],
             settings: Callable[[dict], dict], where: str) -> tuple[Any, dict]:
    """(the teacher run, or None for a pretrained teacher; how the students name it)."""
    if teacher is None:
        raise ConfigError(f"{where}: distill_weight > 0 needs a teacher section in the recipe")
    pretrained = pretrained_teacher(teacher)
    if pretrained:
        return None, dict([pretrained])
    shared = {"method": teacher["method"]} if teacher.get("method") else {}
    kept = {k: v for k, v in {**changes, **scoped.get("teacher", {})}.items() if k not in TEACHER_FORCED}
    run = make(settings(teacher["train"]), kept, stage="teacher", **shared)
    return run, reference(run)


def _prefixed(scope: str, scoped: dict[str, dict]) -> dict:
    """A scope's command-line changes as a dependent run lists them: ``{"teacher.epochs": 16}``."""
    return {f"{scope}.{k}": v for k, v in scoped.get(scope, {}).items()}
