"""One training loop for every method.

Per iteration: forward (autocast on CUDA when the recipe asks for AMP) -> loss -> backward through the
GradScaler -> ``scaler.unscale_`` -> ``method.after_backward`` (gradient editing in true units) ->
optional gradient clipping -> ``scaler.step`` -> ``scaler.update`` -> flip tracking. Per epoch:
``method.on_epoch_start`` first, then train, evaluate, append a metrics row, and checkpoint atomically.
A run resumes automatically from its last good checkpoint; data order and augmentation depend only on
(seed, epoch), so a resumed CPU run ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import math
import platform
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from . import distributed as ddp
from . import faults
from .arch import build_model
from .data import NORMALIZATIONS, TensorLoader, imagenet_loaders, load_tensor_dataset, subset
from .errors import ConfigError
from .flips import FlipTracker
from .host import keep_freed_memory
from .ops import count_ops
from .optim import lr_at, make_optimizer, set_lr
from .paths import ROOT
from .progress import Progress
from .registry import ARCHITECTURES, METHODS
from .store import RunDir, atomic_torch_save, config_hash


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ConfigError(f"--device {name!r} is not allowed; use auto, cpu, cuda or cuda:N")
    return torch.device(name)


def git_commit() -> str | None:
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


def checked_data(cfg: dict, data_root: Path):
    """The run's in-memory dataset (subset applied), after checking the batch size against it."""
    tr = cfg["train"]
    data = load_tensor_dataset(cfg["dataset"], data_root, download=cfg.get("download", True))
    data = subset(data, tr["train_subset"], tr["test_subset"])
    if tr["batch_size"] > len(data.train_y):
        raise ConfigError(f"batch_size = {tr['batch_size']} is larger than the {len(data.train_y)} training "
                          f"images of {data.name} (recipe {cfg['recipe']}); lower it")
    return data


def make_loaders(cfg: dict, device: torch.device, data_root: Path):
    """(train_loader, test_loader, num_classes) for the run's dataset and settings (this rank's share)."""
    tr = cfg["train"]
    shard = (ddp.rank(), ddp.world_size() if ddp.active() else 1)
    if tr["batch_size"] % shard[1]:
        raise ConfigError(f"batch_size = {tr['batch_size']} (the global batch) must be divisible by the "
                          f"{shard[1]} processes of this torchrun job")
    if cfg["dataset"] == "imagenet" and tr["loader"] == "dali":
        from .dali import DaliLoader
        root = Path(data_root)
        per_rank = dict(seed=cfg["seed"], device=device, workers=tr["workers"], shard=shard)
        train = DaliLoader(root / "train", tr["batch_size"] // shard[1], train=True, **per_rank)
        val = DaliLoader(root / "val", tr["eval_batch_size"], train=False, **per_rank)
        return train, val, len([p for p in (root / "train").iterdir() if p.is_dir()])
    if tr["loader"] == "dali":
        raise ConfigError(f"loader = 'dali' is for ImageFolder datasets (imagenet), not {cfg['dataset']}")
    if cfg["dataset"] == "imagenet":
        return imagenet_loaders(data_root, tr["batch_size"] // shard[1], tr["eval_batch_size"], tr["workers"],
                                cfg["seed"], shard=shard)
    data = checked_data(cfg, data_root)
    mean, std = data.stats() if tr["normalize"] == "dataset" else NORMALIZATIONS[tr["normalize"]]
    if tr["augment"] == "imagenet":
        raise ConfigError(f"augment = 'imagenet' needs an ImageFolder dataset, not {data.name}")
    common = dict(mean=mean, std=std, device=device, seed=cfg["seed"], channels_last=True,
                  shard=shard)
    train = TensorLoader(data.train_x, data.train_y, tr["batch_size"], shuffle=True, drop_last=False,
                         crop_pad=4 if tr["augment"] in ("cifar", "crop") else 0,
                         flip=tr["augment"] == "cifar", **common)
    test = TensorLoader(data.test_x, data.test_y, tr["eval_batch_size"], shuffle=False, drop_last=False,
                        **common)
    return train, test, data.num_classes


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp: bool) -> dict:
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct1 = torch.zeros((), device=device, dtype=torch.int64)
    correct5 = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    for x, y in loader:
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
               use_amp: bool, grad_clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; the method's gradient edit sees unscaled (true-unit) gradients."""
    with torch.autocast(x.device.type, enabled=use_amp):
        out = model(x)
        loss = criterion(out, y)
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


def train_run(cfg: dict, run: RunDir, device: torch.device, data_root: Path,
              progress: Progress | None = None, warn: Callable[[str], None] = print) -> dict:
    """Train (or resume) one run described by ``cfg`` in ``run``; returns and writes its result."""
    progress = progress or Progress()
    tr = cfg["train"]
    t0 = time.time()
    commit = git_commit()  # the code this process runs, read before training starts
    seed_everything(cfg["seed"])
    spec = ARCHITECTURES.get(cfg["backbone"])
    train_loader, test_loader, num_classes = make_loaders(cfg, device, data_root)
    method = METHODS.get(cfg["method"])(family=spec.family, overrides=cfg["method_hparams"],
                                        source=f"run config of {run.name}")
    model = build_model(method, spec, num_classes, options=cfg["backbone_options"],
                        source=f"recipe {cfg['recipe']}").to(device)
    # NHWC: oneDNN (CPU) and cuDNN (GPU) convolutions run without layout reorders; the cresnet20 step on
    # a 2-core CPU is ~17% faster than in NCHW (``run_bench.py bench``)
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    kept = keep_freed_memory() if device.type == "cpu" else False
    ops = count_ops(model, spec.input_size).as_dict()
    net = model  # the plain module: hooks, flip tracking and checkpoints use it; `model` may be DDP
    if ddp.active():
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    if tr["compile"] and device.type == "cuda":
        model = torch.compile(model)
    main = ddp.is_main()
    optimizer = make_optimizer(net, tr)
    use_amp = bool(tr["amp"]) and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=tr["label_smoothing"])
    tracker = FlipTracker(net)
    epochs = tr["epochs"]
    steps = len(train_loader)
    per_iter = tr["lr_step"] == "iter"

    history: list[dict] = []
    start_epoch, train_time, images = 0, 0.0, 0
    partial = None
    state = run.load_checkpoint(warn)
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        tracker.load_state_dict(state["flips"])
        history = state["history"]
        train_time, images = state["train_time"], state["images"]
        partial = state.get("partial")
        start_epoch = partial["epoch"] if partial else state["epoch"] + 1
        if main:
            run.write_metrics(history)
        if run.file("init_weights.pt").exists():
            tracker.init_weights = torch.load(run.file("init_weights.pt"), map_location="cpu")
    elif main:
        atomic_torch_save(tracker.init_weights, run.file("init_weights.pt"))

    def snapshot(epoch_done: int, partial_state: dict | None = None) -> dict:
        return {"epoch": epoch_done, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "flips": tracker.state_dict(), "history": history,
                "train_time": train_time, "images": images, "config_hash": config_hash(cfg),
                "partial": partial_state}

    status, reason = "done", None
    with PREEMPTION as guard:
        for epoch in range(start_epoch, epochs):
            method.on_epoch_start(net, epoch, epochs)
            train_loader.set_epoch(epoch)
            model.train()
            progress.start_epoch(epoch, epochs, steps)
            if partial is not None and partial["epoch"] == epoch:  # resume inside this epoch
                first, elapsed = partial["step"], partial["epoch_time"]
                keep = 1 if main else 0  # sums are global: counted once, on rank 0
                loss_sum = torch.tensor(keep * partial["loss_sum"], device=device, dtype=torch.float64)
                correct = torch.tensor(keep * partial["correct"], device=device, dtype=torch.int64)
                seen = keep * partial["seen"]
                partial = None
            else:
                tracker.start_epoch()
                first, seen, elapsed = 0, 0, 0.0
                loss_sum = torch.zeros((), device=device, dtype=torch.float64)
                correct = torch.zeros((), device=device, dtype=torch.int64)
            if not per_iter:
                set_lr(optimizer, lr_at(tr, epoch))
            te = time.time()
            finite = True
            for i, (x, y) in enumerate(train_loader.iter_from(first), start=first):
                if per_iter:
                    set_lr(optimizer, lr_at(tr, epoch + i / steps, 1.0 / steps))
                loss, out = train_step(model, x, y, criterion, optimizer, scaler, method, use_amp, tr["grad_clip"])
                tracker.step()
                faults.point("step")
                loss_sum += loss.double() * len(y)
                correct += (out.argmax(1) == y).sum()
                seen += len(y)
                progress.advance(loss)
                if i % 50 == 49 and not torch.isfinite(ddp.all_reduce_sum(loss_sum.clone())):
                    finite = False
                    break
                if ddp.any_rank(guard.signum is not None, device) and i + 1 < steps:
                    elapsed += time.time() - te
                    sums = global_sums(loss_sum, correct, seen)
                    if main:  # the epoch's partial sums over all ranks; rank 0 carries them on resume
                        run.save_checkpoint(snapshot(epoch - 1, {
                            "epoch": epoch, "step": i + 1, "loss_sum": sums[0], "correct": int(sums[1]),
                            "seen": int(sums[2]), "epoch_time": elapsed}))
                    ddp.barrier()
                    raise Preempted(f"signal {guard.signum}: checkpointed {run.name} at epoch {epoch + 1}, "
                                    f"step {i + 1}/{steps}; run the same command again to resume")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_time = elapsed + time.time() - te
            train_time += epoch_time
            loss_total, correct_total, seen_total = global_sums(loss_sum, correct, seen)
            images += int(seen_total)
            train_loss = loss_total / max(seen_total, 1)
            row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                                   "train_top1": 100.0 * correct_total / max(seen_total, 1), "epoch_time": epoch_time,
                                   "images_per_s": seen_total / epoch_time}
            if not finite or not math.isfinite(train_loss):
                status, reason = "failed", f"non-finite training loss ({train_loss}) in epoch {epoch + 1}"
                row.update(test_loss=None, test_top1=None, test_top5=None)
                history.append(row)
                if main:
                    run.write_metrics(history)
                break
            row.update(evaluate(model, test_loader, device, use_amp))
            flips = tracker.epoch_stats()
            row.update({k: flips[k] for k in ("silent", "flip_any", "flip_net", "net_change")})
            row["flip_layers"] = flips["layers"]
            row.update(method.epoch_stats(net))
            history.append(row)
            if main:
                run.save_checkpoint(snapshot(epoch))
                faults.point("after_checkpoint")
                run.write_metrics(history)
                run.heartbeat()
            progress.end_epoch(row)
            if guard.signum is not None and epoch + 1 < epochs:
                raise Preempted(f"signal {guard.signum}: checkpointed {run.name} after epoch {epoch + 1}; "
                                f"run the same command again to resume")

    result = summarize(cfg, history, status, reason, train_time, images, time.time() - t0, device, ops, commit)
    result["processes"] = ddp.world_size() if ddp.active() else 1
    result["keep_freed_memory"] = kept
    if main:
        if status == "done":
            atomic_torch_save(tracker.never_flipped(), run.file("flips.pt"))
        faults.point("before_result")
        run.write_result(result)
    ddp.barrier()
    return result


def summarize(cfg: dict, history: list[dict], status: str, reason: str | None, train_time: float,
              images: int, wall: float, device: torch.device, ops: dict, commit: str | None) -> dict:
    done = [h for h in history if h.get("test_top1") is not None]
    final = done[-1] if done else {}
    best = max(done, key=lambda h: h["test_top1"]) if done else {}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if platform.system() == "Darwin" else 1024)
    return {
        "status": status, "reason": reason, "config_hash": config_hash(cfg),
        "recipe": cfg["recipe"], "track": cfg["track"], "dataset": cfg["dataset"], "backbone": cfg["backbone"],
        "method": cfg["method"], "hp_cli": cfg.get("hp_cli", {}), "method_hparams": cfg["method_hparams"],
        "seed": cfg["seed"], "epochs": cfg["train"]["epochs"],
        "epochs_run": len(done), "epochs_overridden": cfg["epochs_overridden"],
        "full_data": cfg["train"]["train_subset"] is None and cfg["train"]["test_subset"] is None,
        "final_top1": final.get("test_top1"), "final_top5": final.get("test_top5"),
        "best_top1": best.get("test_top1"), "best_top5_at_best": best.get("test_top5"),
        "best_epoch": best.get("epoch"),
        "silent": final.get("silent"), "flip_any": final.get("flip_any"), "flip_net": final.get("flip_net"),
        "net_change": final.get("net_change"),
        "wall_time_s": wall, "train_time_s": train_time, "images_per_s": images / train_time if train_time else None,
        "peak_memory_bytes": int(peak),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "bnnbench": __version__, "git_commit": commit, "ops": ops,
    }
