"""Multi-process training under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N run_bench.py ...`` starts N copies of the CLI. Each run of the matrix is
trained by all N processes together: the recipe's ``batch_size`` is the global batch (each rank takes its
share of every global batch) and the lr is the recipe's; gradients are averaged by DDP during backward,
so a method's ``after_backward`` hook (OvSW's AGS + SAD) and the flip tracker act on the synchronised
gradients and identical weights. Rank 0 alone claims runs, writes checkpoints, metrics, results and
reports; metrics are summed over ranks. Backend: ``nccl`` on CUDA, ``gloo`` on CPU.

BatchNorm statistics are per rank (as in plain DDP), so a run with BN layers is not numerically the
single-process run with the same global batch; everything without batch-coupled layers is.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device_name: str) -> torch.device | None:
    """Initialise the process group when started by torchrun; returns this rank's device (or None)."""
    if world_size() <= 1:
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
