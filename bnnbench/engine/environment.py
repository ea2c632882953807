"""Where and with what a run executes: seeding, the device, the code's commit, and the environment part of
its result (:class:`~bnnbench.config.spec.Environment`)."""
from __future__ import annotations

import functools
import random
import shlex
import subprocess
import sys

import numpy as np
import torch

from bnnbench import __version__
from bnnbench.config.spec import Environment
from bnnbench.engine import distributed as ddp
from bnnbench.errors import ConfigError
from bnnbench.paths import ROOT


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N, checked against what this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"--device {name!r} is not allowed; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    if name != "cuda" and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA devices "
                          f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the code this process runs: read once, the first time (a sweep's later runs run the
    code the process loaded, whatever the checkout has become since)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def environment(device: torch.device, numerics: dict | None = None, kept_memory: bool = False,
                commit: str | None = None) -> Environment:
    """The environment part of a run's result: device, versions, commit, numerics, processes, command."""
    return Environment(numerics=dict(numerics or {}), device=device_name(device), torch=torch.__version__,
                       bnnbench=__version__, git_commit=commit if commit is not None else git_commit(),
                       processes=ddp.world_size() if ddp.active() else 1, keep_freed_memory=kept_memory,
                       command=shlex.join(sys.argv))
