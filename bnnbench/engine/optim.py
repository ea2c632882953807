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

A method may update some parameters itself (:meth:`~bnnbench.plugins.method.Method.optimizer`, e.g. Bop
for the binary weights, as larq's ``CaseOptimizer`` routes them): those leave the recipe's optimizer (no
weight decay, no momentum from it) and :class:`CompositeOptimizer` steps both and checkpoints both.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from bnnbench.plugins.method import Method


def param_groups(model: nn.Module, weight_decay: float, policy: str, method=None,
                 exclude: frozenset[int] = frozenset()) -> list[dict]:
    """[{decayed params, weight_decay}, {the rest, 0}, then one group per other (decay, lr_scale) pair];
    ``method.decays(name, param, policy)`` and ``method.lr_scale(name, param)`` decide (the
    :class:`~bnnbench.plugins.method.Method` defaults when ``method`` is None: every scale 1, so the first two
    groups are all there is); parameters whose id is in ``exclude`` (a method's own optimizer holds them) are
    left out. A group with a scale other than 1 carries ``lr_scale``, which :func:`set_lr` applies."""
    if method is None:
        method = Method()
    buckets: dict[tuple[bool, float], list] = {(True, 1.0): [], (False, 1.0): []}
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in exclude:
            key = (method.decays(name, p, policy), float(method.lr_scale(name, p)))
            buckets.setdefault(key, []).append(p)
    groups = [{"params": buckets.pop((True, 1.0)), "weight_decay": weight_decay}]
    rest = buckets.pop((False, 1.0))
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    for (decays, scale), params in buckets.items():
        groups.append({"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale})
    return groups


def make_optimizer(model: nn.Module, st, method=None, steps_per_epoch: int = 1):
    """The recipe's optimizer over ``model`` (``st``: the run's TrainSettings), or, when ``method`` updates
    some parameters itself, a :class:`CompositeOptimizer` of the recipe's over the rest and the method's."""
    own = method.optimizer(model, st, steps_per_epoch) if method is not None else None
    claimed = frozenset(id(p) for g in own.param_groups for p in g["params"]) if own is not None else frozenset()
    groups = param_groups(model, st.weight_decay, st.wd_policy, method, claimed)
    if st.optimizer == "sgd":
        recipe = torch.optim.SGD(groups, lr=st.lr, momentum=st.momentum, nesterov=st.nesterov)
    else:
        cls = torch.optim.Adam if st.optimizer == "adam" else torch.optim.AdamW
        recipe = cls(groups, lr=st.lr, betas=tuple(st.betas))
    set_lr(recipe, st.lr)  # the groups with an lr_scale
    return recipe if own is None else CompositeOptimizer(recipe, own)


class CompositeOptimizer:
    """The recipe's optimizer and a method's own, used as one: ``param_groups`` lists the recipe's groups
    first (the learning-rate schedule sets ``lr`` on every group; a method's optimizer that has no learning
    rate, such as Bop, ignores it), ``step`` and ``zero_grad`` act on both, and the state dict holds both,
    so a resumed run continues both (larq's ``CaseOptimizer`` in PyTorch form). GradScaler accepts it: it
    only reads ``param_groups`` and calls ``step``."""

    def __init__(self, recipe: torch.optim.Optimizer, own: torch.optim.Optimizer):
        self.recipe, self.own = recipe, own

    @property
    def param_groups(self) -> list[dict]:
        return self.recipe.param_groups + self.own.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.recipe.zero_grad(set_to_none=set_to_none)
        self.own.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = self.recipe.step(closure)
        self.own.step()
        return loss

    def state_dict(self) -> dict:
        return {"recipe": self.recipe.state_dict(), "method": self.own.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"recipe", "method"}:
            raise ValueError(f"optimizer state with keys {sorted(state)[:5]} is not a composite one "
                             f"(recipe + method): the checkpoint was written by another optimizer set-up")
        self.recipe.load_state_dict(state["recipe"])
        self.own.load_state_dict(state["method"])


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
    """The schedule's ``lr`` on every group, times the group's ``lr_scale`` where it has one."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
