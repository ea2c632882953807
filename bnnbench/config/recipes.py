"""Recipes: validated YAML files describing how every method is trained on one dataset x backbone.

A recipe file (``recipes/<name>.yaml``)::

    name: cifar10-cresnet20           # must equal the file name
    description: one line
    dataset: cifar10                  # see bnnbench.data.catalog.DATASETS
    backbone: cresnet20               # a registered architecture
    backbone_options: {}              # build options of the backbone (e.g. head_act for vgg_small)
    train:                            # the unified track: identical for every method
      epochs: 600
      ...                             # every key of TRAIN_FIELDS below (defaults fill the rest)
      method_hparams: {ovsw: {delta: 0.04, gamma: 9.0e-4}}
    paper:                            # the paper track: per method, changes to `train` (its own recipe)
      recu: {normalize: imagenet}
      irnet: {epochs: 400, batch_size: 128, method_hparams: {t_min: 1.0e-3}}
      ...                             # methods not listed train with `train` (recorded as such)

Unknown or mistyped keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
key, the file and the closest valid key.
"""
from __future__ import annotations

import copy
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bnnbench.data.catalog import DATASETS, NORMALIZATIONS
from bnnbench.errors import ConfigError, did_you_mean
from bnnbench.paths import recipes_dir

DEFAULT_RECIPE = "digits-cresnet20"
TRACKS = ("unified", "paper")

_POS = ("> 0", lambda v: v > 0)
_NONNEG = (">= 0", lambda v: v >= 0)
_PROB = ("in [0, 1)", lambda v: 0 <= v < 1)


def _choice(*allowed):
    return (f"one of {', '.join(map(repr, allowed))}", lambda v: v in allowed)


NUM = (numbers.Real,)
# key: (types, default, (rule text, check) or None, help)
TRAIN_FIELDS: dict[str, tuple[tuple[type, ...], Any, Any, str]] = {
    "epochs": ((int,), 10, _POS, "training epochs"),
    "batch_size": ((int,), 256, _POS, "training batch size (global)"),
    "eval_batch_size": ((int,), 256, _POS, "test batch size"),
    "optimizer": ((str,), "sgd", _choice("sgd", "adam", "adamw"), "optimizer"),
    "lr": (NUM, 0.1, _POS, "base learning rate"),
    "momentum": (NUM, 0.9, _PROB, "SGD momentum"),
    "nesterov": ((bool,), False, None, "SGD Nesterov momentum"),
    "betas": ((list,), [0.9, 0.999], None, "Adam betas"),
    "weight_decay": (NUM, 5e-4, _NONNEG, "weight decay"),
    "wd_policy": ((str,), "all", _choice("all", "no_1d", "by_name"),
                  "which parameters get weight decay: all; no_1d (not 1-D params: BN, biases, PReLU); "
                  "by_name (only names containing 'conv' or 'fc', ReCU ImageNet)"),
    "schedule": ((str,), "cosine", _choice("cosine", "linear", "step", "constant"), "lr schedule"),
    "warmup_epochs": ((int,), 0, _NONNEG, "linear warmup: lr * (e + 1) / W for e < W"),
    "min_lr": (NUM, 0.0, _NONNEG, "cosine floor added to the decayed lr"),
    "lr_step": ((str,), "epoch", _choice("epoch", "iter"), "update the lr once per epoch or every iteration"),
    "milestones": ((list,), [], None, "epochs at which the step schedule multiplies lr by lr_gamma"),
    "lr_gamma": (NUM, 0.1, _POS, "step schedule factor"),
    "label_smoothing": (NUM, 0.0, _PROB, "label smoothing of the training loss"),
    "amp": ((bool,), True, None, "mixed precision on CUDA (ignored on CPU)"),
    "compile": ((bool,), False, None, "torch.compile the model on CUDA (ignored on CPU); training then drops "
                "the epoch's last incomplete batch, on every device, so every step has one shape"),
    "binarize": ((str,), "all", _choice("all", "activations", "none"),
                 "what is binary: all (1W1A), activations (binary activations, real weights: stage 1 of "
                 "two-stage training), none (full precision: a teacher); see Method.set_binarize"),
    "distill_weight": (NUM, 0.0, ("in [0, 1]", lambda v: 0 <= v <= 1),
                       "knowledge distillation: loss = (1 - w) CE + w T^2 softCE(student/T, teacher/T); "
                       "w > 0 needs the recipe's teacher (bnnbench/engine/distill.py)"),
    "distill_temperature": (NUM, 1.0, _POS, "knowledge distillation temperature T"),
    "deterministic": ((bool,), False, None, "reproducible GPU numerics: no TF32, no cuDNN autotuning, "
                      "deterministic algorithms, no torch.compile (see bnnbench/engine/numerics.py)"),
    "augment": ((str,), "cifar", _choice("cifar", "crop", "imagenet", "none"),
                "cifar: random crop (pad 4) + horizontal flip on tensors; crop: the crop only (digits); "
                "imagenet: RandomResizedCrop(224, scale 0.08-1.25) + flip + lighting 0.1; none"),
    "normalize": ((str,), "dataset", _choice("dataset", *NORMALIZATIONS),
                  "normalisation statistics: the dataset's own or a named set"),
    "train_subset": ((int, type(None)), None, _POS, "train on the first N training images only"),
    "test_subset": ((int, type(None)), None, _POS, "evaluate on the first N test images only"),
    "workers": ((int,), 8, _NONNEG, "data loader worker processes (ImageFolder datasets)"),
    "loader": ((str,), "torchvision", _choice("torchvision", "dali"),
               "ImageFolder loading: torchvision DataLoader, or NVIDIA DALI (optional extra; see bnnbench/data/dali.py)"),
    "seed": ((int,), 0, ("in [0, 2^31 - 10000]", lambda v: 0 <= v <= 2**31 - 10_000),
             "first seed; --seeds N runs seed .. seed + N - 1"),
    "grad_clip": ((numbers.Real, type(None)), None, _POS, "clip the global gradient norm (off by default)"),
    "method_hparams": ((dict,), {}, None, "per-method hyperparameter overrides {method: {key: value}}"),
}
TOP_FIELDS = {"name", "description", "dataset", "backbone", "backbone_options", "train", "paper", "stages",
              "teacher"}


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


def check_train(doc: Any, where: str, *, partial: bool) -> dict:
    """Validate a ``train`` mapping (``partial``: a paper-track change list, no defaults filled in)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a mapping of training settings, got {type(doc).__name__}")
    out = {} if partial else {k: copy.deepcopy(v[1]) for k, v in TRAIN_FIELDS.items()}
    for key, value in doc.items():
        out[key] = check_value(key, value, where)
    if not partial:
        if out["warmup_epochs"] >= out["epochs"] and out["warmup_epochs"] > 0:
            raise ConfigError(f"{where}: warmup_epochs = {out['warmup_epochs']} must be smaller than "
                              f"epochs = {out['epochs']} (e.g. --set warmup_epochs={out['epochs'] // 2})")
        for m, hp in out["method_hparams"].items():
            if not isinstance(hp, dict):
                raise ConfigError(f"{where}: method_hparams.{m} must be a mapping, got {hp!r}")
    return out


def check_value(key: Any, value: Any, where: str) -> Any:
    """Validate one training setting; returns it converted (ints accepted where a number is expected)."""
    if key not in TRAIN_FIELDS:
        raise ConfigError(f"unknown key {key!r} in {where}{did_you_mean(str(key), TRAIN_FIELDS)}; "
                          f"allowed keys: {', '.join(TRAIN_FIELDS)}")
    types, default, rule, _ = TRAIN_FIELDS[key]
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = " or ".join("null" if t is type(None) else ("number" if t is numbers.Real else t.__name__)
                            for t in types)
        raise ConfigError(f"{where}: {key} = {value!r} has the wrong type; expected {names}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key} = {value} is not allowed; give a finite number")
    if rule is not None and value is not None and not rule[1](value):
        raise ConfigError(f"{where}: {key} = {value!r} is out of range; allowed: {rule[0]}")
    if key == "milestones" and not all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in value):
        raise ConfigError(f"{where}: milestones = {value!r} must be a list of positive integers")
    if key == "betas" and not (len(value) == 2 and all(isinstance(b, numbers.Real) and not isinstance(b, bool)
                                                       and 0 <= b < 1 for b in value)):
        raise ConfigError(f"{where}: betas = {value!r} must be two numbers in [0, 1)")
    if isinstance(default, float) and isinstance(value, numbers.Real):
        value = float(value)
    return copy.deepcopy(value)


def parse_recipe(doc: Any, where: str) -> Recipe:
    """Validate a loaded recipe document (``where`` names its file in every error)."""
    from bnnbench.plugins.registry import ARCHITECTURES
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
    if not _SAFE_NAME.match(doc["name"]) or ".." in doc["name"]:
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
    paper_doc = doc.get("paper") or {}
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
    from bnnbench.runner.stages import parse_stages, parse_teacher
    return Recipe(doc["name"], description, doc["dataset"], doc["backbone"], options, train, paper, where,
                  stages=parse_stages(doc.get("stages"), where), teacher=parse_teacher(doc.get("teacher"), where))


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_FLOAT_12 = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class _RecipeLoader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 floats (``9e-4``, which YAML 1.1 reads as text) and no duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def parse_scalar(raw: str) -> Any:
    """A --set / --hp value read as a recipe would read it (YAML 1.2 floats included; bad YAML: the text)."""
    if raw == "":
        return None
    try:
        return yaml.load(raw, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError):
        return raw


def load_yaml(text: str, where: str) -> Any:
    """Parse a recipe document; aliases (``*name``) are refused before anything expands them."""
    try:
        for event in yaml.parse(text, Loader=_RecipeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{where}: YAML aliases (*{event.anchor}) are not allowed in recipes; "
                                  f"write the values out")
        return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a recipe") from None


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
