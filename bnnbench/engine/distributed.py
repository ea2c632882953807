"""Multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N run_bench.py ...`` starts N copies of the CLI. Each run of the matrix is
trained by all N processes together: the recipe's ``batch_size`` is the global batch (each rank takes its
share of every global batch) and the lr is the recipe's; gradients are averaged by DDP during backward,
so a method's ``after_backward`` hook (OvSW's AGS + SAD) and the flip tracker act on the synchronised
gradients and identical weights. Rank 0 alone claims runs, writes checkpoints, metrics, results and
reports; metrics are summed over ranks. Backend: ``nccl`` on CUDA, ``gloo`` on CPU.

BatchNorm statistics are per rank during an epoch (as in plain DDP), so a run with BN layers is not
numerically the single-process run with the same global batch; everything without batch-coupled layers is.
DDP runs with ``broadcast_buffers=False``: buffers are not sent from rank 0 before every forward (OvSW's
per-weight state alone is larger than the parameters). Instead, at the end of every epoch the BatchNorm
running statistics are averaged over the ranks (:func:`average_bn_stats`, timm's ``distribute_bn``
"reduce"), and every other buffer and every parameter is checked to be identical on all ranks
(:func:`check_replicas`): a method's per-rank state follows from the synchronised gradients, and a plugin
whose state diverges fails its run with the buffer's name instead of training on silently different
replicas.

The step loop reads nothing from the device under DDP except every :data:`CHECK_EVERY` steps, when one
all-reduce carries the loss sum (finite?) and the preemption flag (:func:`health`).
"""
from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """Started by torchrun (any number of processes, one included)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or world_size() > 1


def active() -> bool:
    """A process group is up: DDP, its collectives and the per-epoch replica checks are used (under
    ``torchrun --nproc_per_node 1`` too, so one GPU exercises the NCCL path)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device_name: str) -> torch.device | None:
    """Initialise the process group when started by torchrun; returns this rank's device (or None)."""
    if not launched():
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on some rank."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


#: steps between the checks that read device values (loss finite; under DDP also "some rank was signalled")
CHECK_EVERY = 25


def health(loss_sum: torch.Tensor, signalled: bool) -> tuple[bool, bool]:
    """(the loss sum over all ranks is finite, some rank was signalled): one all-reduce, one host read."""
    t = torch.stack([loss_sum.double(), loss_sum.new_tensor(1.0 if signalled else 0.0, dtype=torch.float64)])
    loss, flag = all_reduce_sum(t).tolist()
    return math.isfinite(loss), flag > 0


def average_bn_stats(model: torch.nn.Module) -> None:
    """Replace every BatchNorm's running mean and variance by their mean over the ranks."""
    if not active():
        return
    world = dist.get_world_size()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf.div_(world)


def check_replicas(model: torch.nn.Module, source: str) -> None:
    """Raise naming the first parameter or buffer that differs between ranks (compared by exact
    per-tensor sums of values and of absolute values, in float64)."""
    if not active():
        return
    transient = {f"{mn}.{b}" if mn else b for mn, m in model.named_modules() for b in m._non_persistent_buffers_set}
    named = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if n not in transient)]
    named = [(n, t) for n, t in named if t.is_floating_point() or t.dtype in (torch.int8, torch.int32, torch.int64)]
    if not named:
        return
    sig = torch.stack([torch.stack([t.detach().double().sum(), t.detach().double().abs().sum()]) for _, t in named])
    every = [torch.empty_like(sig) for _ in range(dist.get_world_size())]
    dist.all_gather(every, sig)
    for r, other in enumerate(every[1:], start=1):
        differ = (other != every[0]).any(dim=1).nonzero().flatten().tolist()
        if differ:
            name = named[differ[0]][0]
            raise RuntimeError(f"{source}: {name!r} differs between rank 0 and rank {r} ({len(differ)} tensors "
                               f"differ); per-rank state must follow from the synchronised gradients (DDP runs "
                               f"with broadcast_buffers=False, see bnnbench/engine/distributed.py)")


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
