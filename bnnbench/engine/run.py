"""One training loop for every method: the :class:`Run` object.

``Run(spec, run_dir, device, data_root)`` sets a run up (seed, data, method, model, optimizer, flip
tracker), ``resume()`` restores it from its last good checkpoint (which must belong to the same
:class:`~bnnbench.config.spec.RunSpec`), ``train_epoch`` / ``evaluate`` do one epoch and one evaluation,
``state_dict`` / ``load_state_dict`` are the checkpoint (mid-epoch state included), ``result`` the
:class:`~bnnbench.config.spec.RunResult`, and ``fit`` runs all of it.

Per iteration: forward (autocast on CUDA when the recipe asks for AMP) -> loss -> backward through the
GradScaler -> ``scaler.unscale_`` -> ``method.after_backward`` (gradient editing in true units) ->
optional gradient clipping -> ``scaler.step`` -> ``scaler.update`` -> flip tracking. Per epoch:
``method.on_epoch_start`` first, then train, evaluate, append a metrics row, and checkpoint atomically.
A run resumes automatically from its last good checkpoint; data order and augmentation depend only on
(seed, epoch), so a resumed CPU run ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import errno
import functools
import math
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bnnbench import __version__, faults
from bnnbench.config.spec import RunResult, RunSpec
from bnnbench.data.catalog import (
    NORMALIZATIONS,
    TensorLoader,
    dataset_kind,
    imagenet_loaders,
    load_tensor_dataset,
    subset,
)
from bnnbench.engine import distributed as ddp
from bnnbench.engine import numerics
from bnnbench.engine.flips import FlipTracker
from bnnbench.engine.host import keep_freed_memory, peak_memory, reset_peak_memory
from bnnbench.engine.optim import lr_at, make_optimizer, set_lr
from bnnbench.engine.progress import Progress
from bnnbench.errors import ConfigError, RunError
from bnnbench.nn.layers import binary_layers, take_sign0_counts
from bnnbench.nn.ops import count_ops
from bnnbench.paths import ROOT
from bnnbench.plugins import ARCHITECTURES, METHODS
from bnnbench.plugins.arch import build_model
from bnnbench.plugins.method import Method
from bnnbench.store import ERROR_LOG, FLIPS, INIT_REPORT, INIT_WEIGHTS, RunDir, atomic_torch_save, load_torch


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


def checked_data(spec: RunSpec, data_root: Path):
    """The run's in-memory dataset (subset applied), after checking the batch size against it."""
    st = spec.settings
    data = load_tensor_dataset(spec.dataset, data_root, download=spec.download)
    data = subset(data, st.train_subset, st.test_subset)
    if st.batch_size > len(data.train_y):
        raise ConfigError(f"batch_size = {st.batch_size} is larger than the {len(data.train_y)} training "
                          f"images of {data.name} (recipe {spec.recipe}); lower it")
    return data


def run_model(spec: RunSpec, num_classes: int, run_name: str) -> tuple[Method, nn.Module]:
    """The run's method (its resolved hyperparameters) and its freshly built backbone."""
    arch = ARCHITECTURES.get(spec.backbone)
    method = METHODS.get(spec.method)(family=arch.family, overrides=dict(spec.method_hparams),
                                      source=f"run config of {run_name}")
    model = build_model(method, arch, num_classes, options=dict(spec.backbone_options), source=f"recipe {spec.recipe}")
    method.set_binarize(model, spec.settings.binarize)
    return method, model


def make_loaders(spec: RunSpec, device: torch.device, data_root: Path):
    """(train_loader, test_loader, num_classes) for the run's dataset and settings (this rank's share)."""
    st = spec.settings
    shard = (ddp.rank(), ddp.world_size() if ddp.active() else 1)
    if st.batch_size % shard[1]:
        raise ConfigError(f"batch_size = {st.batch_size} (the global batch) must be divisible by the "
                          f"{shard[1]} processes of this torchrun job")
    folder = dataset_kind(spec.dataset) == "folder"
    if st.loader == "dali" and not folder:
        raise ConfigError(f"loader = 'dali' is for ImageFolder datasets (imagenet), not {spec.dataset}")
    if folder and st.loader == "dali":
        from bnnbench.data.dali import DaliLoader
        root = Path(data_root)
        per_rank = dict(seed=spec.seed, device=device, workers=st.workers, shard=shard)
        train = DaliLoader(root / "train", st.batch_size // shard[1], train=True, **per_rank)
        val = DaliLoader(root / "val", st.eval_batch_size, train=False, **per_rank)
        return train, val, len([p for p in (root / "train").iterdir() if p.is_dir()])
    if folder:
        return imagenet_loaders(data_root, st.batch_size // shard[1], st.eval_batch_size, st.workers, spec.seed,
                                shard=shard, augment=st.augment, normalize=st.normalize)
    data = checked_data(spec, data_root)
    mean, std = data.stats() if st.normalize == "dataset" else NORMALIZATIONS[st.normalize]
    if st.augment == "imagenet":
        raise ConfigError(f"augment = 'imagenet' needs an ImageFolder dataset, not {data.name}")
    common = dict(mean=mean, std=std, device=device, seed=spec.seed, channels_last=True, shard=shard)
    train = TensorLoader(data.train_x, data.train_y, st.batch_size, shuffle=True, drop_last=st.compile,
                         crop_pad=4 if st.augment in ("cifar", "crop") else 0, flip=st.augment == "cifar", **common)
    test = TensorLoader(data.test_x, data.test_y, st.eval_batch_size, shuffle=False, drop_last=False, **common)
    return train, test, data.num_classes


def on_device(batches, device: torch.device):
    """Batches of any loader on the training device, NHWC (a no-op for loaders that already deliver so)."""
    for x, y in batches:
        if x.device != device:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x.contiguous(memory_format=torch.channels_last), y


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: bool) -> dict:
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct1 = torch.zeros((), device=device, dtype=torch.int64)
    correct5 = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    for x, y in on_device(loader, device):
        with torch.autocast(device.type, enabled=amp):
            out = model(x)
        loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum")
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        hits = top == y[:, None]
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        n += len(y)
        faults.point("eval")
    model.train()
    totals = ddp.all_reduce_sum(torch.stack([loss_sum, correct1.double(), correct5.double(),
                                             torch.tensor(float(n), device=device, dtype=torch.float64)]))
    loss, c1, c5, n = totals.tolist()
    return {"test_loss": loss / n, "test_top1": 100.0 * c1 / n, "test_top5": 100.0 * c5 / n}


def compiled(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` with static shapes (training drops its last incomplete batch under ``compile``;
    evaluation compiles its last batch once) and no silent fallback: a model that recompiles past
    dynamo's limit (e.g. a schedule kept as a Python float that changes every epoch, instead of a
    buffer) raises instead of running eagerly from then on."""
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(model, backend=backend, dynamic=False)


class Preempted(Exception):
    """A SIGTERM/SIGUSR1/SIGUSR2 arrived; the run's full state is checkpointed and the next start resumes it."""


class PreemptionGuard:
    """Record SIGTERM / SIGUSR1 / SIGUSR2 (what Slurm sends before preemption or timeout; submitit asks
    Slurm for SIGUSR2) instead of dying mid-write.

    Re-entrant: the CLI holds it around a whole sweep and the trainer around a run; handlers are
    installed by the outermost ``with`` (main thread only) and restored when it exits.
    """

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}
        self._depth = 0

    def _handler(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        import signal
        import threading
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            self.signum = None
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        import signal
        self._depth -= 1
        if self._depth == 0:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            self._old.clear()
        return False


PREEMPTION = PreemptionGuard()


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion, optimizer, scaler, method,
               use_amp: bool, grad_clip: float | None = None,
               amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; the method's gradient edit sees unscaled (true-unit) gradients.
    ``amp_dtype``: autocast's dtype (default: the device's, fp16 on CUDA)."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=use_amp):
        out = model(x)
        loss = criterion(out, y, x) if getattr(criterion, "needs_input", False) else criterion(out, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    method.after_backward(model)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), out.detach()


def global_sums(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> list[float]:
    """(loss sum, correct, images) of the epoch so far, summed over all ranks."""
    t = torch.stack([loss_sum, correct.double(),
                     torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64)])
    return ddp.all_reduce_sum(t).tolist()


class EpochSums:
    """Loss, correct predictions and images of the epoch so far, kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device, loss: float = 0.0, correct: int = 0, seen: int = 0):
        self.loss = torch.tensor(loss, device=device, dtype=torch.float64)
        self.correct = torch.tensor(correct, device=device, dtype=torch.int64)
        self.seen = seen

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.double() * len(y)
        self.correct += (out.argmax(1) == y).sum()
        self.seen += len(y)

    def total(self) -> list[float]:
        return global_sums(self.loss, self.correct, self.seen)


class Run:
    """One run of the matrix: set-up, resume, train epoch by epoch, evaluate, result (module docstring)."""

    def __init__(self, spec: RunSpec, run_dir: RunDir, device: torch.device, data_root: Path,
                 progress: Progress | None = None, warn: Callable[[str], None] = print, loggers: tuple = ()):
        self.spec, self.dir, self.device = spec, run_dir, device
        self.progress, self.warn = progress or Progress(), warn
        self.st = spec.settings
        self.t0, self.commit = time.time(), git_commit()  # the code this process runs, read before training
        self.memory_scope = reset_peak_memory(device)
        self.numerics = numerics.configure(device, self.st.deterministic, self.st.amp, self.st.compile)
        seed_everything(spec.seed)
        arch = ARCHITECTURES.get(spec.backbone)
        self.train_loader, self.test_loader, num_classes = make_loaders(spec, device, data_root)
        self.method, net = run_model(spec, num_classes, run_dir.name)
        self.net = net.to(device, memory_format=torch.channels_last)
        self.ops = count_ops(self.net, arch.input_size).as_dict()
        self.model = self._wrap(self.net)
        self.optimizer = make_optimizer(self.net, self.st, self.method)
        self.use_amp = self.numerics["amp"] is not None
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.use_amp)
        self.criterion = self.method.loss(self.st)
        if self.st.distill_weight > 0:
            from bnnbench.engine.distill import DistillationLoss, load_teacher
            teacher = load_teacher(dict(spec.teacher), run_dir.path.parent, data_root, device, num_classes)
            self.criterion = DistillationLoss(self.criterion, teacher, self.st.distill_weight,
                                              self.st.distill_temperature)
        self.tracker = FlipTracker(self.net)
        self.kept_memory = keep_freed_memory() if device.type == "cpu" else False
        self.main = ddp.is_main()
        self.logger_names = tuple(loggers) if self.main else ()
        self.history: list[dict] = []
        self.start_epoch, self.train_time, self.images = 0, 0.0, 0
        self.partial: dict | None = None
        self.loggers = None

    def _wrap(self, net: nn.Module) -> nn.Module:
        """DDP under torchrun, torch.compile when ``numerics`` says so; hooks and checkpoints use ``net``."""
        model = net
        if ddp.active():  # buffers: averaged (BN) or checked once per epoch, not broadcast per forward
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(net, device_ids=ids, broadcast_buffers=False)
        if self.numerics["compile"]:
            model = compiled(model)
        return model

    # --- checkpoints ---------------------------------------------------------------------------------------
    def state_dict(self, epoch_done: int, partial: dict | None = None) -> dict:
        return {"epoch": epoch_done, "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "flips": self.tracker.state_dict(), "history": self.history,
                "train_time": self.train_time, "images": self.images, "spec_hash": self.spec.hash,
                "partial": partial}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.tracker.load_state_dict(state["flips"])
        self.history = state["history"]
        self.train_time, self.images = state["train_time"], state["images"]
        self.partial = state.get("partial")
        self.start_epoch = self.partial["epoch"] if self.partial else state["epoch"] + 1

    def resume(self) -> None:
        """Continue from the last good checkpoint of this run, or record the initial weights of a new one."""
        state = self.dir.load_checkpoint(self.warn)
        if state is None:
            if self.spec.init_from:
                self._init_from()
            if self.main:
                atomic_torch_save(self.tracker.init_weights, self.dir.file(INIT_WEIGHTS))
            return
        if state.get("spec_hash") != self.spec.hash:
            raise RunError(f"{self.dir.file('checkpoint.pt')} belongs to run {state.get('spec_hash')!r}, not to "
                           f"this run ({self.spec.hash}); delete the run directory or rerun with --force")
        self.load_state_dict(state)
        if self.main:
            self.dir.write_metrics(self.history)
        init = self.dir.file(INIT_WEIGHTS)
        if init.exists():
            try:
                self.tracker.init_weights = load_torch(init)
            except Exception as exc:  # noqa: BLE001 - torch raises several types for a damaged file
                self.warn(f"{init} is unreadable ({type(exc).__name__}); the run continues without it, so it "
                          f"gets no silent-weight histogram")
                init.unlink()

    def _init_from(self) -> None:
        """Start from ``--init-from`` weights (name and shape matches), reported and kept in ``init.json``."""
        import json

        from bnnbench.engine.init import describe_init, init_from, resolve_init
        init = dict(self.spec.init_from)
        if "sha256" not in init:  # a stage: the final checkpoint of the stage before it, which must be done
            from bnnbench.store import finished_dependency
            init = {**resolve_init(finished_dependency(self.dir.path.parent, init, "init")), "run": init["run"]}
        report = init_from(self.net, init)
        self.tracker = FlipTracker(self.net)  # flips count from the loaded weights
        if self.main:
            self.warn(describe_init(init, report))
            self.dir.file(INIT_REPORT).write_text(json.dumps({**init, **report}, indent=1) + "\n")

    # --- training ------------------------------------------------------------------------------------------
    def _epoch_start(self, epoch: int) -> tuple[int, float, EpochSums]:
        """(first step, time already spent, sums) of ``epoch``: from the mid-epoch checkpoint, or fresh."""
        p, self.partial = self.partial, None
        take_sign0_counts(self.net)  # from here on, the epoch's training steps are counted
        if p is not None and p["epoch"] == epoch:
            keep = 1 if self.main else 0  # sums are global: counted once, on rank 0
            if keep and p.get("sign0"):
                first = binary_layers(self.net)[0][1]
                first.sign0 += torch.tensor(p["sign0"], device=first.sign0.device)
            return p["step"], p["epoch_time"], EpochSums(self.device, keep * p["loss_sum"], keep * p["correct"],
                                                         keep * p["seen"])
        self.tracker.start_epoch()
        return 0, 0.0, EpochSums(self.device)

    def train_epoch(self, epoch: int, guard: PreemptionGuard) -> tuple[float, EpochSums, bool]:
        """Train ``epoch``: (seconds, sums, loss stayed finite). Raises :class:`Preempted` (checkpointed)."""
        steps = len(self.train_loader)
        self.method.on_epoch_start(self.net, epoch, self.st.epochs)
        self.train_loader.set_epoch(epoch)
        self.model.train()
        self.progress.start_epoch(epoch, self.st.epochs, steps)
        first, elapsed, sums = self._epoch_start(epoch)
        if self.st.lr_step != "iter":
            set_lr(self.optimizer, lr_at(self.st, epoch))
        te = time.time()
        for i, (x, y) in enumerate(on_device(self.train_loader.iter_from(first), self.device), start=first):
            finite, stop = self.step(epoch, i, steps, x, y, sums, guard)
            if not finite:
                return elapsed + time.time() - te, sums, False
            if stop and i + 1 < steps:
                self._preempt_mid_epoch(epoch, i + 1, elapsed + time.time() - te, sums, guard.signum)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return elapsed + time.time() - te, sums, True

    def step(self, epoch: int, i: int, steps: int, x: torch.Tensor, y: torch.Tensor, sums: EpochSums,
             guard: PreemptionGuard) -> tuple[bool, bool]:
        """Training step ``i`` of ``steps`` in ``epoch`` on one batch: (loss still finite, preempt now). It
        reads nothing from the device except at the periodic check (:meth:`_check`)."""
        if self.st.lr_step == "iter":
            set_lr(self.optimizer, lr_at(self.st, epoch + i / steps, 1.0 / steps))
        loss, out = train_step(self.model, x, y, self.criterion, self.optimizer, self.scaler, self.method,
                               self.use_amp, self.st.grad_clip)
        self.tracker.step()
        faults.point("step")
        sums.add(loss, out, y)
        self.progress.advance(loss)
        return self._check(epoch * steps + i + 1, sums, guard)

    def _check(self, step: int, sums: EpochSums, guard: PreemptionGuard) -> tuple[bool, bool]:
        """(loss still finite, preempt now) after global step ``step``. Device values are read only every
        ``ddp.CHECK_EVERY`` steps (one all-reduce under DDP); a single process sees its signal at once."""
        signalled = guard.signum is not None
        if step % ddp.CHECK_EVERY:
            return True, signalled and not ddp.active()
        return ddp.health(sums.loss, signalled)

    def _preempt_mid_epoch(self, epoch: int, step: int, elapsed: float, sums: EpochSums, signum: int):
        loss, correct, seen = sums.total()
        sign0 = list(take_sign0_counts(self.net))
        if self.main:  # the epoch's partial sums over all ranks; rank 0 carries them on resume
            self.dir.save_checkpoint(self.state_dict(epoch - 1, {
                "epoch": epoch, "step": step, "loss_sum": loss, "correct": int(correct), "seen": int(seen),
                "epoch_time": elapsed, "sign0": sign0}))
        ddp.barrier()
        raise Preempted(f"signal {signum}: checkpointed {self.dir.name} at epoch {epoch + 1}, step {step}/"
                        f"{len(self.train_loader)}; run the same command again to resume")

    def _epoch_row(self, epoch: int, seconds: float, sums: EpochSums) -> dict[str, Any]:
        loss, correct, seen = sums.total()
        self.train_time += seconds
        self.images += int(seen)
        zeros, inputs = take_sign0_counts(self.net)
        return {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": loss / max(seen, 1),
                "train_top1": 100.0 * correct / max(seen, 1), "epoch_time": seconds,
                "images_per_s": seen / seconds, "sign0_train": zeros / inputs if inputs else None}

    def evaluate(self) -> dict[str, Any]:
        """Test loss / top-1 / top-5, then the epoch's flip statistics and the method's own numbers.
        Under DDP the replicas are made to agree first (BN statistics averaged, the rest checked)."""
        ddp.average_bn_stats(self.net)
        ddp.check_replicas(self.net, f"run {self.dir.name}")
        row = evaluate(self.model, self.test_loader, self.device, self.use_amp)
        zeros, inputs = take_sign0_counts(self.net)
        row["sign0_test"] = zeros / inputs if inputs else None
        flips = self.tracker.epoch_stats()
        row.update({k: flips[k] for k in ("silent", "flip_any", "flip_net", "net_change")})
        row["flip_layers"] = flips["layers"]
        row.update(self.method.epoch_stats(self.net))
        return row

    def _end_epoch(self, epoch: int, row: dict) -> None:
        self.history.append(row)
        if self.loggers is not None:
            self.loggers.log(row, epoch)
        if self.main:
            self.dir.save_checkpoint(self.state_dict(epoch))
            faults.point("after_checkpoint")
            self.dir.write_metrics(self.history)
            self.dir.heartbeat()
        self.progress.end_epoch(row)

    def _fail(self, row: dict, reason: str) -> str:
        row.update({k: row.get(k) for k in ("test_loss", "test_top1", "test_top5")})
        self.history.append(row)
        if self.main:
            self.dir.write_metrics(self.history)
        return reason

    def fit(self) -> RunResult:
        """Train (or resume) to the end; writes and returns the result. Raises Preempted on a signal."""
        self.resume()
        from bnnbench.engine.loggers import Loggers
        names = list(self.logger_names)
        self.loggers = Loggers(names, self.dir.path, self.spec.to_dict()) if names else None
        try:
            return self._fit()
        finally:
            if self.loggers is not None:
                self.loggers.close()

    def _fit(self) -> RunResult:
        status, reason = "done", None
        with PREEMPTION as guard:
            for epoch in range(self.start_epoch, self.st.epochs):
                seconds, sums, finite = self.train_epoch(epoch, guard)
                row = self._epoch_row(epoch, seconds, sums)
                if not finite or not math.isfinite(row["train_loss"]):
                    status = "failed"
                    reason = self._fail(row, f"non-finite training loss ({row['train_loss']}) in epoch {epoch + 1}")
                    break
                row.update(self.evaluate())
                if not math.isfinite(row["test_loss"]):
                    status = "failed"
                    reason = self._fail(row, f"non-finite test loss ({row['test_loss']}) in epoch {epoch + 1}")
                    break
                self._end_epoch(epoch, row)
                if ddp.any_rank(guard.signum is not None, self.device) and epoch + 1 < self.st.epochs:
                    raise Preempted(f"signal {guard.signum}: checkpointed {self.dir.name} after epoch "
                                    f"{epoch + 1}; run the same command again to resume")
        return self.finish(status, reason)

    def finish(self, status: str, reason: str | None) -> RunResult:
        """Write the final flip masks and ``result.json`` (rank 0); every rank returns the result."""
        result = self.result(status, reason)
        if self.main:
            if status == "done":
                atomic_torch_save(self.tracker.never_flipped(), self.dir.file(FLIPS))
                self.record_deployment()
            faults.point("before_result")
            self.dir.write_result(result)
        ddp.barrier()
        return result

    def record_deployment(self) -> None:
        """Export the trained model to 1-bit form and measure it on this CPU (``deploy.json``; the
        leaderboard's 1-bit columns): exactness on the first test images, latency at batch 1."""
        from bnnbench.tools.deploy_bench import record_run
        record_run(self.dir.path, self.net, lambda: next(iter(self.test_loader))[0][:16])

    def result(self, status: str, reason: str | None) -> RunResult:
        done = [h for h in self.history if h.get("test_top1") is not None]
        final = done[-1] if done else {}
        best = max(done, key=lambda h: h["test_top1"]) if done else {}
        spec = self.spec
        return RunResult(
            status=status, reason=reason, spec_hash=spec.hash, group=spec.group, label=spec.label,
            recipe=spec.recipe, track=spec.track, dataset=spec.dataset, backbone=spec.backbone, method=spec.method,
            method_hparams=dict(spec.method_hparams), changes=dict(spec.changes), seed=spec.seed,
            epochs=self.st.epochs, epochs_run=len(done), epochs_overridden=spec.epochs_overridden,
            full_data=spec.full_data, final_top1=final.get("test_top1"), final_top5=final.get("test_top5"),
            final_test_loss=final.get("test_loss"), best_top1=best.get("test_top1"),
            best_top5_at_best=best.get("test_top5"), best_epoch=best.get("epoch"), silent=final.get("silent"),
            flip_any=final.get("flip_any"), flip_net=final.get("flip_net"), net_change=final.get("net_change"),
            wall_time_s=time.time() - self.t0, train_time_s=self.train_time,
            images_per_s=self.images / self.train_time if self.train_time else None,
            peak_memory_bytes=peak_memory(self.device), peak_memory_scope=self.memory_scope,
            numerics=dict(self.numerics), device=device_name(self.device), torch=torch.__version__,
            bnnbench=__version__, git_commit=self.commit, ops=self.ops,
            processes=ddp.world_size() if ddp.active() else 1, keep_freed_memory=self.kept_memory,
            plugins=dict(spec.plugins), metrics_sha256=self.dir.metrics_digest(), command=shlex.join(sys.argv),
            stage=spec.stage)


def trained_model(run_dir: Path, data_root: Path, device: torch.device | None = None):
    """(spec, model in eval mode with the run's final weights, test loader) of a finished run."""
    rd = RunDir(run_dir)
    spec = rd.read_spec()
    done = rd.read_result()
    if not done or done.get("status") != "done":
        raise RunError(f"{run_dir} is not a finished run (no result.json with status done)")
    state = rd.load_checkpoint()
    if state is None or state.get("epoch") != spec.settings.epochs - 1 or state.get("partial"):
        raise RunError(f"{run_dir}: no checkpoint of the final epoch {spec.settings.epochs} (checkpoint.pt)")
    device = device or torch.device("cpu")
    _, test, num_classes = make_loaders(spec, device, Path(data_root))
    _, model = run_model(spec, num_classes, rd.name)
    model.load_state_dict(state["model"])
    return spec, model.to(device, memory_format=torch.channels_last).eval(), test  # the layout it trained in


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def train_run(spec: RunSpec, run_dir: RunDir, device: torch.device, data_root: Path,
              progress: Progress | None = None, warn: Callable[[str], None] = print, loggers: tuple = ()) -> RunResult:
    """Train (or resume) one run in ``run_dir``; returns and writes its result."""
    return Run(spec, run_dir, device, data_root, progress=progress, warn=warn, loggers=loggers).fit()


def run_or_fail(spec: RunSpec, run_dir: RunDir, device: torch.device, data_root: Path,
                progress: Progress | None = None, warn: Callable[[str], None] = print,
                loggers: tuple = ()) -> RunResult:
    """:func:`train_run`, but an exception raised by the run (a plugin's code, data, a broken state) fails
    this run only: ``result.json`` says ``failed`` with the exception and the file and line it came from,
    ``error.log`` holds the traceback. Preemption and Ctrl-C pass through."""
    t0 = time.time()
    try:
        return train_run(spec, run_dir, device, data_root, progress=progress, warn=warn, loggers=loggers)
    except (Preempted, KeyboardInterrupt):
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):  # the disk, not the run
            raise RunError(f"cannot write to {getattr(exc, 'filename', None) or run_dir.path} ({exc.strerror}); "
                           f"the run's last checkpoint is intact: free space or fix permissions, then run the "
                           f"same command again to resume") from None
        return _record_failure(spec, run_dir, device, exc, t0)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - recorded in the run, the sweep goes on
        return _record_failure(spec, run_dir, device, exc, t0)


def _record_failure(spec: RunSpec, run_dir: RunDir, device: torch.device, exc: BaseException,
                    t0: float) -> RunResult:
    """Write a failed result (exception, file and line) and the traceback in ``error.log``."""
    import traceback
    run_dir.file(ERROR_LOG).write_text("".join(traceback.format_exception(exc)))
    result = RunResult.failed(spec, f"{describe_exception(exc)}; traceback in {run_dir.file(ERROR_LOG)}",
                              wall_time_s=time.time() - t0, device=device_name(device), torch=torch.__version__,
                              bnnbench=__version__, git_commit=git_commit())
    if ddp.is_main():
        run_dir.write_result(result)
    return result


def describe_exception(exc: BaseException) -> str:
    """'Type: message (at file:line)', naming the innermost frame outside torch and the engine (a plugin's
    code when it raised), or the innermost frame."""
    import traceback
    frames = traceback.extract_tb(exc.__traceback__)
    engine = str(Path(__file__).resolve().parent)
    outside = [f for f in frames if not f.filename.startswith(engine) and "/torch/" not in f.filename]
    frame = (outside or frames or [None])[-1]
    where = f" (at {frame.filename}:{frame.lineno}, in {frame.name})" if frame else ""
    if isinstance(exc, SystemExit):
        return f"the run called sys.exit({exc.code!r}){where}"
    if type(exc).__name__ == "FailOnRecompileLimitHit":
        return (f"torch.compile recompiled the model more than torch._dynamo.config.recompile_limit times "
                f"(compile: true){where}: a value the forward pass reads changes between steps as a Python number "
                f"(keep schedules in buffers, set with tensor.fill_; see README, Plugin API), or rerun with "
                f"compile: false")
    return f"{type(exc).__name__}: {exc}{where}"
