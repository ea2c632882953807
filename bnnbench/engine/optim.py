"""Optimizers with the recipe's weight-decay grouping, and the learning-rate schedules as formulas.

Schedules are written out as formulas of the epoch, not left to a scheduler class, whose stepping order
(per epoch or per iteration, before or after the optimizer) would silently shift the schedule by a step.
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

from bnnbench.plugins.method import Method


def param_groups(model: nn.Module, weight_decay: float, policy: str, method=None) -> list[dict]:
    """[{decayed params, weight_decay}, {the rest, 0}]; ``method.decays(name, param, policy)`` decides
    (the :class:`~bnnbench.plugins.method.Method` default when ``method`` is None)."""
    if method is None:
        method = Method()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if method.decays(name, p, policy) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, st, method=None) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model`` (``st``: the run's TrainSettings)."""
    groups = param_groups(model, st.weight_decay, st.wd_policy, method)
    if st.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=st.lr, momentum=st.momentum, nesterov=st.nesterov)
    cls = torch.optim.Adam if st.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=st.lr, betas=tuple(st.betas))


def lr_at(st, t: float, unit: float = 1.0) -> float:
    """Learning rate at fractional epoch ``t`` (see the module docstring; ``st``: TrainSettings)."""
    lr0, E, W = st.lr, st.epochs, st.warmup_epochs
    if t < W:
        return lr0 * min(1.0, (t + unit) / W)
    kind = st.schedule
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (t - W) / (E - W))) * lr0 + st.min_lr
    if kind == "linear":
        return lr0 * max(0.0, 1 - (t + unit) / E)
    if kind == "step":
        return lr0 * st.lr_gamma ** sum(t >= m for m in st.milestones)
    return lr0


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
