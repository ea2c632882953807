"""The run store: one directory per run, named from its content, and atomic file writes.

    <out>/runs/<recipe>__<track>__<backbone>__<method>__s<seed>__<hash8>/
        config.yaml       the fully resolved run configuration (written first)
        metrics.jsonl     one JSON line per finished epoch (rewritten from the checkpoint on resume)
        checkpoint.pt     last epoch (atomic); checkpoint.prev.pt the one before (fallback if corrupt)
        init_weights.pt   initial latent weights of the binary layers (silent-weight histograms)
        flips.pt          final never-flipped masks
        result.json       written atomically, last: a run with a valid result.json is done
        lock              claim of the worker running it (pid, host, time)

The hash covers everything that changes the numbers (recipe settings, method hyperparameters, seed,
epochs, data subset), not where or on what device the run executes.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from . import faults
from .errors import RunError

RESULT, CONFIG, METRICS, CKPT, CKPT_PREV, LOCK = ("result.json", "config.yaml", "metrics.jsonl",
                                                  "checkpoint.pt", "checkpoint.prev.pt", "lock")
#: config keys that do not change the numbers and stay out of the hash
UNHASHED = {"device", "data_root", "out", "hash", "track_note"}


def config_hash(cfg: dict) -> str:
    payload = json.dumps({k: v for k, v in cfg.items() if k not in UNHASHED}, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:8]


def run_name(cfg: dict) -> str:
    return (f"{cfg['recipe']}__{cfg['track']}__{cfg['backbone']}__{cfg['method']}__s{cfg['seed']}"
            f"__{config_hash(cfg)}")


# --- atomic writes -----------------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and rename: all or nothing."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# --- integrity -------------------------------------------------------------------------------------------

_MAGIC = b"BNNCKPT1"


def pack_checkpoint(state: dict) -> bytes:
    """MAGIC + sha256(payload) + payload, payload = torch.save(state)."""
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def unpack_checkpoint(data: bytes) -> dict:
    import io
    if not data.startswith(_MAGIC):  # a plain torch.save file (written without the integrity header)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if len(data) < len(_MAGIC) + 32:
        raise ValueError("truncated checkpoint")
    digest, payload = data[len(_MAGIC):len(_MAGIC) + 32], data[len(_MAGIC) + 32:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("checksum mismatch (truncated or corrupted file)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def _result_digest(result: dict) -> str:
    body = {k: v for k, v in result.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def seal_result(result: dict) -> dict:
    return {**result, "checksum": _result_digest(result)}


def verify_result(result) -> dict:
    """Raise ValueError unless ``result`` is a complete, unmodified result.json document."""
    if not isinstance(result, dict):
        raise ValueError("not a JSON object")
    if result.get("status") not in ("done", "failed"):
        raise ValueError(f"unknown status {result.get('status')!r}")
    if "checksum" in result:
        if result["checksum"] != _result_digest(result):
            raise ValueError("checksum mismatch")
    else:  # written without a checksum: accept only a complete document
        missing = [k for k in _REQUIRED if k not in result]
        if missing:
            raise ValueError(f"missing keys {missing}")
    return result


_REQUIRED = ("status", "config_hash", "recipe", "track", "dataset", "backbone", "method", "seed", "epochs",
             "epochs_run", "final_top1", "best_top1", "wall_time_s")


# --- run directory -----------------------------------------------------------------------------------------

class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    def create(self, cfg: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.file(CONFIG).exists():
            atomic_write_text(self.file(CONFIG), yaml.safe_dump(cfg, sort_keys=True))

    def prepare(self, cfg: dict, force: bool = False) -> str:
        """Claim this run for training and write its config: "run", or the reason it is not run here."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.claim():
            return "claimed by another worker, skipped"
        self.remove_temp_files()  # half writes of a killed worker; the claim makes them ours to remove
        if self.is_done() and not force:
            self.release()
            return "finished by another worker"
        if force:
            self.clear()
        self.create(cfg)
        return "run"

    def remove_temp_files(self) -> None:
        """Delete the temp files (``.<name>.*.tmp``) an atomic write killed before its rename left behind."""
        for p in self.path.glob(".*.tmp"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def tidy_finished(self) -> None:
        """For a finished run: drop a dead worker's claim and its temp files (a kill after the result)."""
        if self.file(LOCK).exists() and self.claim():
            self.remove_temp_files()
            self.release()

    def read_result(self, warn=None) -> dict | None:
        """The run's result, or None when it has none or it is unreadable/corrupt (then it is not done)."""
        p = self.file(RESULT)
        if not p.exists():
            return None
        try:
            return verify_result(read_json(p))
        except (OSError, ValueError) as exc:
            if warn:
                warn(f"{p} is corrupt ({exc}); the run is not counted as done")
            return None

    def is_done(self) -> bool:
        return self.read_result() is not None

    def write_result(self, result: dict) -> None:
        write_json(self.file(RESULT), seal_result(result))

    def clear(self) -> None:
        """Forget a previous attempt (``--force``): result, checkpoints, metrics."""
        for name in (RESULT, METRICS, CKPT, CKPT_PREV, "flips.pt", "init_weights.pt"):
            try:
                self.file(name).unlink()
            except FileNotFoundError:
                pass

    # checkpoints: keep the last two, each with a sha256 of its payload; fall back to the previous one
    # when the last is truncated, corrupt or unreadable
    def save_checkpoint(self, state: dict) -> None:
        ckpt, prev = self.file(CKPT), self.file(CKPT_PREV)
        data = pack_checkpoint(state)
        if ckpt.exists():
            os.replace(ckpt, prev)
        atomic_write_bytes(ckpt, data)

    def load_checkpoint(self, warn=print) -> dict | None:
        for p in (self.file(CKPT), self.file(CKPT_PREV)):
            if not p.exists():
                continue
            try:
                state = unpack_checkpoint(p.read_bytes())
                if not isinstance(state, dict) or "epoch" not in state:
                    raise ValueError("not a bnnbench checkpoint")
                return state
            except Exception as exc:  # noqa: BLE001 - reported, then the older checkpoint is tried
                warn(f"checkpoint {p} is unreadable ({type(exc).__name__}: {exc}); trying an older one")
        return None

    def write_metrics(self, history: list[dict]) -> None:
        atomic_write_text(self.file(METRICS), "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))

    def read_metrics(self) -> list[dict]:
        p = self.file(METRICS)
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                break
        return out

    # claim: one worker per run; a claim whose process is gone (same host) or is older than the stale
    # limit without a heartbeat is taken over
    def claim(self, stale_after: float = 6 * 3600) -> bool:
        lock = self.file(LOCK)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale(lock, stale_after):
                    return False
                try:
                    os.unlink(lock)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return True
        return False

    def heartbeat(self) -> None:
        try:
            os.utime(self.file(LOCK))
        except FileNotFoundError:
            pass

    def release(self) -> None:
        try:
            os.unlink(self.file(LOCK))
        except FileNotFoundError:
            pass

    @staticmethod
    def _stale(lock: Path, stale_after: float) -> bool:
        try:
            info = json.loads(lock.read_text())
            mtime = lock.stat().st_mtime
        except (OSError, ValueError):
            try:
                return time.time() - lock.stat().st_mtime > 60  # half-written claim of a crashed worker
            except OSError:
                return True
        if info.get("host") == socket.gethostname():
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, KeyError):
                pass
        return time.time() - mtime > stale_after


def check_writable(out: Path) -> None:
    """Fail before any compute when the output folder cannot be written (or the disk is full)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / ".write_probe", b"\0" * 65536)
        (out / ".write_probe").unlink()
    except OSError as exc:
        raise RunError(f"--out {out} is not writable ({exc.strerror or exc}); choose another folder with "
                       f"--out or free some space") from None
