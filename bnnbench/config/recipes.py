"""Recipes: validated YAML files describing how every method is trained on one dataset x backbone.

A recipe file (``recipes/<name>.yaml``)::

    name: cifar10-cresnet20           # must equal the file name
    description: one line
    dataset: cifar10                  # see bnnbench.data.catalog.DATASETS
    backbone: cresnet20               # a registered architecture
    backbone_options: {}              # build options of the backbone (e.g. head_act for vgg_small)
    train:                            # the unified track: identical for every method
      epochs: 600
      ...                             # every key of bnnbench.config.settings.TRAIN_FIELDS (defaults fill the rest)
      method_hparams: {ovsw: {delta: 0.04, gamma: 9.0e-4}}
    eval: {robustness: {subset: 1000}} # optional extras after training (bnnbench/config/evaluation.py)
    paper:                            # the paper track: per method, changes to `train` (its own recipe)
      recu: {normalize: imagenet}
      irnet: {epochs: 400, batch_size: 128, method_hparams: {t_min: 1.0e-3}}
      ...                             # methods not listed train with `train` (recorded as such)

Unknown or mistyped keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
key, the file and the closest valid key.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnnbench.config.evaluation import parse_eval
from bnnbench.config.settings import PRETRAINED_TEACHERS, SAFE_NAME, check_train, pretrained_teacher
from bnnbench.config.yamlio import load_yaml
from bnnbench.data.catalog import DATASETS
from bnnbench.errors import ConfigError, did_you_mean
from bnnbench.paths import recipes_dir
from bnnbench.plugins import ARCHITECTURES, METHODS

DEFAULT_RECIPE = "digits-cresnet20"
TRACKS = ("unified", "paper")

TOP_FIELDS = {"name", "description", "dataset", "backbone", "backbone_options", "train", "paper", "stages",
              "teacher", "eval"}


@dataclass
class Recipe:
    name: str
    description: str
    dataset: str
    backbone: str
    backbone_options: dict
    train: dict
    paper: dict
    path: str
    #: the two-stage track (bnnbench/runner/stages.py): [{name, train, init}] and the teacher, or empty / None
    stages: list = field(default_factory=list)
    teacher: dict | None = None
    #: evaluation extras after training (``eval:``, bnnbench/config/evaluation.py), e.g. {"robustness": {...}}
    evaluation: dict = field(default_factory=dict)

    def resolve(self, method: str, track: str) -> tuple[dict, str]:
        """Training settings of ``method`` on ``track`` and a note saying where they came from."""
        if track not in TRACKS:
            raise ConfigError(f"--track {track!r} is not allowed{did_you_mean(track, TRACKS)}; "
                              f"use {' or '.join(TRACKS)}")
        cfg = copy.deepcopy(self.train)
        hparams = copy.deepcopy(cfg.pop("method_hparams").get(method, {}))
        note = "unified recipe"
        if track == "paper":
            if method in self.paper:
                over = copy.deepcopy(self.paper[method])
                hparams.update(over.pop("method_hparams", {}))
                cfg.update(over)
                note = f"{method}'s published recipe"
            else:
                note = f"no published {method} recipe for {self.dataset} {self.backbone}: unified recipe"
        cfg["method_hparams"] = hparams
        return cfg, note


def parse_recipe(doc: Any, where: str) -> Recipe:
    """Validate a loaded recipe document (``where`` names its file in every error)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: a recipe must be a YAML mapping, got {type(doc).__name__}")
    for key in doc:
        if key not in TOP_FIELDS:
            raise ConfigError(f"unknown key {key!r} in {where}{did_you_mean(str(key), TOP_FIELDS)}; "
                              f"allowed top-level keys: {', '.join(sorted(TOP_FIELDS))}")
    for key in ("name", "dataset", "backbone", "train"):
        if key not in doc:
            raise ConfigError(f"{where}: missing required key {key!r}")
    for key in ("name", "dataset", "backbone"):
        if not isinstance(doc[key], str):
            raise ConfigError(f"{where}: {key} = {doc[key]!r} must be a string")
    if not SAFE_NAME.match(doc["name"]) or ".." in doc["name"]:
        raise ConfigError(f"{where}: name = {doc['name']!r} is not allowed: it names run directories, so use "
                          f"letters, digits, '-', '_' and '.' only (no '..', '/' or spaces), at most 100")
    if doc["dataset"] not in DATASETS:
        raise ConfigError(f"{where}: dataset = {doc['dataset']!r} is unknown{did_you_mean(doc['dataset'], DATASETS)}; "
                          f"allowed: {', '.join(DATASETS)}")
    ARCHITECTURES.get(doc["backbone"], source=f"{where}, key 'backbone'")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description must be a string")
    options = doc.get("backbone_options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: backbone_options must be a mapping, got {options!r}")
    train = check_train(doc["train"], f"{where}, section 'train'", partial=False)
    paper = _parse_paper(doc.get("paper") or {}, train, where)
    return Recipe(doc["name"], description, doc["dataset"], doc["backbone"], options, train, paper, where,
                  stages=parse_stages(doc.get("stages"), where), teacher=parse_teacher(doc.get("teacher"), where),
                  evaluation=parse_eval(doc.get("eval"), where))


def _parse_paper(paper_doc: Any, train: dict, where: str) -> dict:
    """The paper track: per method, changes to ``train``, each checked alone and merged."""
    if not isinstance(paper_doc, dict):
        raise ConfigError(f"{where}: paper must be a mapping {{method: {{changes}}}}, got {paper_doc!r}")
    paper = {}
    for method, changes in paper_doc.items():
        paper[method] = check_train(changes or {}, f"{where}, section 'paper.{method}'", partial=True)
        merged = dict(train)
        merged.update(paper[method])
        merged["method_hparams"] = {}
        check_train({k: v for k, v in merged.items()}, f"{where}, section 'paper.{method}' (merged)",
                    partial=False)
    return paper


def parse_stages(doc: Any, where: str) -> list[dict]:
    """Validate a recipe's ``stages`` list: [{name, train (changes), init (an earlier stage or absent)}]."""
    if doc is None:
        return []
    if not isinstance(doc, list) or not doc:
        raise ConfigError(f"{where}: stages must be a non-empty list of {{name, train, init}} mappings")
    out, names = [], []
    for i, st in enumerate(doc):
        at = f"{where}, stages[{i}]"
        if not isinstance(st, dict) or set(st) - {"name", "train", "init"} or "name" not in st:
            raise ConfigError(f"{at}: expected a mapping with 'name', optional 'train' and 'init', got {st!r}")
        name = st["name"]
        if not isinstance(name, str) or not SAFE_NAME.match(name) or name in names or name == "teacher":
            raise ConfigError(f"{at}: name = {name!r} must be a new name of letters, digits, '-', '_', '.' "
                              f"(not 'teacher')")
        init = st.get("init")
        if init is not None and init not in names:
            raise ConfigError(f"{at}: init = {init!r} must name an earlier stage ({', '.join(names) or 'none'})")
        out.append({"name": name, "train": check_train(st.get("train") or {}, f"{at}, train", partial=True),
                    "init": init})
        names.append(name)
    return out


def parse_teacher(doc: Any, where: str) -> dict | None:
    """Validate a recipe's ``teacher``: {train: changes} (a full-precision run), {torchvision: model} or
    {timm: model} (pretrained weights from the local cache)."""
    if doc is None:
        return None
    if not isinstance(doc, dict) or not (set(doc) <= {"train", "method"}
                                         or len(doc) == 1 and set(doc) <= set(PRETRAINED_TEACHERS)):
        raise ConfigError(f"{where}: teacher must be {{train: {{...}}, method: M}} (a full-precision run of this "
                          f"recipe), {{torchvision: MODEL}} or {{timm: MODEL}}, got {doc!r}")
    pretrained = pretrained_teacher(doc)
    if pretrained:
        source, name = pretrained
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: teacher.{source} must be a model name such as resnet34, got {name!r}")
        return {source: name}
    method = doc.get("method")
    if method is not None:
        METHODS.get(method, source=f"{where}, teacher.method")
    return {"train": check_train(doc.get("train") or {}, f"{where}, teacher.train", partial=True), "method": method}


def recipe_names() -> list[str]:
    d = recipes_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_recipe(name_or_path: str | None) -> Recipe:
    """Load a recipe by name (``recipes/<name>.yaml``) or by path; None loads the default recipe."""
    spec = name_or_path or DEFAULT_RECIPE
    path = Path(spec)
    if not (spec.endswith((".yaml", ".yml")) or path.is_file()):
        path = recipes_dir() / f"{spec}.yaml"
        if not path.is_file():
            names = recipe_names()
            raise ConfigError(f"unknown recipe {spec!r} (from --recipe){did_you_mean(spec, names)}; "
                              f"available: {', '.join(names) or '(none)'}; or give a path to a .yaml file")
    if not path.is_file():
        raise ConfigError(f"--recipe {spec!r}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); a recipe is "
                          f"UTF-8 YAML") from None
    recipe = parse_recipe(load_yaml(text, str(path)), str(path))
    if recipe.name != path.stem and path.parent == recipes_dir():
        raise ConfigError(f"{path}: name {recipe.name!r} must equal the file name {path.stem!r}")
    return recipe
