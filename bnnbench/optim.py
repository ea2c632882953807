"""Optimizers with the recipe's weight-decay grouping, and the learning-rate schedules as formulas.

Schedules are written out (methods_spec pitfall 14: do not rely on a scheduler class's stepping order).
With t the (fractional) epoch, E the epochs, W the warmup epochs and u = 1 (per-epoch) or 1/iters
(per-iteration):

* warmup (all schedules), t < W:  lr = lr0 * (t + u) / W
* cosine: lr = 0.5 * (1 + cos(pi * (t - W) / (E - W))) * lr0 + min_lr      (OvSW utils/schedulers.py)
* linear: lr = lr0 * (1 - (t + u) / E)                                       (Bi-Real PyTorch LambdaLR)
* step:   lr = lr0 * lr_gamma ** #{m in milestones : t >= m}
* constant: lr = lr0
"""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, policy: str) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if policy == "all":
            use = True
        elif policy == "no_1d":
            use = p.dim() > 1
        elif policy == "by_name":
            leaf = name.split(".")
            use = any("conv" in part or part == "fc" for part in leaf)
        else:
            raise ValueError(f"unknown wd_policy {policy!r}")
        (decay if use else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, tr: dict) -> torch.optim.Optimizer:
    groups = param_groups(model, tr["weight_decay"], tr["wd_policy"])
    if tr["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=tr["lr"], momentum=tr["momentum"], nesterov=tr["nesterov"])
    cls = torch.optim.Adam if tr["optimizer"] == "adam" else torch.optim.AdamW
    return cls(groups, lr=tr["lr"], betas=tuple(tr["betas"]))


def lr_at(tr: dict, t: float, unit: float = 1.0) -> float:
    """Learning rate at fractional epoch ``t`` (see the module docstring)."""
    lr0, E, W = tr["lr"], tr["epochs"], tr["warmup_epochs"]
    if t < W:
        return lr0 * min(1.0, (t + unit) / W)
    kind = tr["schedule"]
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (t - W) / (E - W))) * lr0 + tr["min_lr"]
    if kind == "linear":
        return lr0 * max(0.0, 1 - (t + unit) / E)
    if kind == "step":
        return lr0 * tr["lr_gamma"] ** sum(t >= m for m in tr["milestones"])
    return lr0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
