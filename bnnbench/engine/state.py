"""A run's training state, built from its spec: loaders, method, model (wrapped for DDP / compile),
optimizer, scaler, loss, flip tracker. The checkpoint is this state plus the recorder's counters."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnnbench.config.spec import RunSpec
from bnnbench.engine import distributed as ddp
from bnnbench.engine import numerics
from bnnbench.engine.distill import DistillationLoss, load_teacher
from bnnbench.engine.environment import seed_everything
from bnnbench.engine.flips import FlipTracker
from bnnbench.engine.optim import make_optimizer
from bnnbench.engine.rebuild import make_loaders, run_model
from bnnbench.nn.ops import count_ops
from bnnbench.plugins import ARCHITECTURES, Method


@dataclass
class RunState:
    """Everything a run trains with. ``net`` is the bare model (hooks and checkpoints use it), ``model`` the
    one the steps call (DDP and/or torch.compile around ``net``)."""
    train_loader: Any
    test_loader: Any
    num_classes: int
    method: Method
    net: nn.Module
    model: nn.Module
    ops: dict
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    criterion: nn.Module
    tracker: FlipTracker
    numerics: dict


def build_state(spec: RunSpec, runs_dir: Path, device: torch.device, data_root: Path) -> RunState:
    """Configure numerics, seed, then build the run's objects in a fixed order (the order fixes the RNG
    draws, so a resumed run is the same run)."""
    st = spec.settings
    nums = numerics.configure(device, st.deterministic, st.amp, st.compile)
    seed_everything(spec.seed)
    arch = ARCHITECTURES.get(spec.backbone)
    train_loader, test_loader, num_classes = make_loaders(spec, device, data_root)
    method, net = run_model(spec, num_classes, spec.name)
    net = net.to(device, memory_format=torch.channels_last)
    ops = count_ops(net, arch.input_size).as_dict()
    model = wrap(net, device, nums["compile"])
    optimizer = make_optimizer(net, st, method, len(train_loader))
    use_amp = nums["amp"] is not None
    criterion = method.loss(st)
    if st.distill_weight > 0:
        teacher = load_teacher(dict(spec.teacher), runs_dir, data_root, device, num_classes)
        criterion = DistillationLoss(criterion, teacher, st.distill_weight, st.distill_temperature)
    return RunState(train_loader, test_loader, num_classes, method, net, model, ops, optimizer,
                    torch.amp.GradScaler(device.type, enabled=use_amp), use_amp, criterion, FlipTracker(net), nums)


def wrap(net: nn.Module, device: torch.device, compile: bool) -> nn.Module:
    """DDP under torchrun, torch.compile when ``numerics`` says so; hooks and checkpoints use ``net``."""
    model = net
    if ddp.active():  # buffers: averaged (BN) or checked once per epoch, not broadcast per forward
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)
    if compile:
        model = compiled(model)
    return model


def compiled(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` with static shapes (training drops its last incomplete batch under ``compile``;
    evaluation compiles its last batch once) and no silent fallback: a model that recompiles past
    dynamo's limit (e.g. a schedule kept as a Python float that changes every epoch, instead of a
    buffer) raises instead of running eagerly from then on."""
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(model, backend=backend, dynamic=False)
