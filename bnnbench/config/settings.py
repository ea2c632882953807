"""The training-settings schema: every key a recipe's ``train`` section may hold, its type, default and
allowed values, and the checks every value goes through (recipe files, ``--set``, stages, teachers).

A leaf of :mod:`bnnbench.config`: read by the recipes, by :class:`~bnnbench.config.spec.RunSpec` (whose
settings are exactly these keys) and by the runner's planning.
"""
from __future__ import annotations

import copy
import math
import numbers
import re
from typing import Any

from bnnbench.data.catalog import NORMALIZATIONS
from bnnbench.errors import ConfigError, did_you_mean

#: names that become parts of run-directory names (recipes, stages): one safe path component
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

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
               "ImageFolder loading: torchvision DataLoader, or NVIDIA DALI (optional extra; "
               "see bnnbench/data/dali.py)"),
    "seed": ((int,), 0, ("in [0, 2^31 - 10000]", lambda v: 0 <= v <= 2**31 - 10_000),
             "first seed; --seeds N runs seed .. seed + N - 1"),
    "grad_clip": ((numbers.Real, type(None)), None, _POS, "clip the global gradient norm (off by default)"),
    "method_hparams": ((dict,), {}, None, "per-method hyperparameter overrides {method: {key: value}}"),
}
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


#: the sources of pretrained full-precision teachers a recipe may name (``teacher: {torchvision: resnet34}``)
PRETRAINED_TEACHERS = ("torchvision", "timm")


def pretrained_teacher(ref) -> tuple[str, str] | None:
    """(source, model name) of a pretrained teacher reference such as ``{"timm": "resnet34.a1_in1k"}``, or None
    for a teacher that is a run of the suite."""
    for source in PRETRAINED_TEACHERS:
        if source in ref:
            return source, ref[source]
    return None
