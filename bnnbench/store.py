"""The run store: one directory per run, named from its content, and atomic file writes.

    <out>/runs/<recipe>__<track>__<backbone>__<method>__s<seed>__<hash8>/
        config.yaml       the fully resolved run configuration (written first)
        metrics.jsonl     one JSON line per finished epoch (rewritten from the checkpoint on resume)
        checkpoint.pt     last epoch (atomic); checkpoint.prev.pt the one before (fallback if corrupt)
        init_weights.pt   initial latent weights of the binary layers (silent-weight histograms)
        flips.pt          final never-flipped masks
        init.json         what --init-from loaded (matched, missing, unexpected tensors)
        deploy.json       the trained model exported to 1-bit form, measured on this CPU
        robustness.json   top-1 under corruptions and attacks (bnnbench/engine/robustness.py), entry by entry
        rebuilt.json      when the weights were restored by retraining the run (bnnbench/tools/rebuild.py)
        result.json       written atomically, last: a run with a valid result.json is done
        lock              claim of the worker running it: an OS file lock while it runs (text: pid, host, time)
        error.log         traceback of an exception that failed the run

The name and hash come from the run's :class:`~bnnbench.config.spec.RunSpec` (its identity covers what
changes the numbers, not where or on what device the run executes). Checkpoints are plain ``torch.save``
files that ``torch.load(path, weights_only=True)`` opens; each holds a sha256 of its own tensors and
values (``integrity``), checked on load. Nothing is ever loaded with ``weights_only=False``.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bnnbench import faults
from bnnbench.config.spec import RunSpec
from bnnbench.config.yamlio import StrictLoader, load_yaml
from bnnbench.errors import ConfigError, RunError

#: the files of a run directory (this module is their only owner; the module docstring says what each holds)
RESULT, CONFIG, METRICS, CKPT, CKPT_PREV, LOCK = ("result.json", "config.yaml", "metrics.jsonl",
                                                  "checkpoint.pt", "checkpoint.prev.pt", "lock")
FLIPS, INIT_WEIGHTS, INIT_REPORT, DEPLOY, ERROR_LOG = ("flips.pt", "init_weights.pt", "init.json", "deploy.json",
                                                       "error.log")
ROBUSTNESS, REBUILT = "robustness.json", "rebuilt.json"
#: the weight files of a finished run (not committed with the evidence; ``rebuild-weights`` restores them)
WEIGHT_FILES = (CKPT, FLIPS, INIT_WEIGHTS)
# --- atomic writes -----------------------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and rename: all or nothing."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give, not mkstemp's owner-only 0600
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


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# --- integrity -------------------------------------------------------------------------------------------

_MAGIC = b"BNNCKPT1"  # the first checkpoint layout: MAGIC + sha256(payload) + torch.save payload
INTEGRITY = "integrity"


def content_digest(obj: Any) -> str:
    """sha256 over a nested structure of dicts, lists, tensors and plain values (dict order ignored)."""
    h = hashlib.sha256()

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=repr):
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(f"{type(o).__name__}:{o!r};".encode())
    walk(obj)
    return h.hexdigest()


def pack_checkpoint(state: dict) -> bytes:
    """torch.save({**state, "integrity": sha256 of the state's content})."""
    buf = io.BytesIO()
    torch.save({**state, INTEGRITY: content_digest(state)}, buf)
    return buf.getvalue()


def load_torch(path: Path) -> Any:
    """``torch.load`` of a file the suite wrote, tensors and plain containers only (``weights_only``)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def unpack_checkpoint(data: bytes) -> dict:
    """The state of a checkpoint; raises ValueError when it is truncated, corrupt or not the suite's."""
    if data.startswith(_MAGIC):
        digest, payload = data[len(_MAGIC):len(_MAGIC) + 32], data[len(_MAGIC) + 32:]
        if len(digest) < 32 or hashlib.sha256(payload).digest() != digest:
            raise ValueError("checksum mismatch (truncated or corrupted file)")
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or INTEGRITY not in state:
        raise ValueError("not a bnnbench checkpoint (no integrity digest)")
    digest = state.pop(INTEGRITY)
    if content_digest(state) != digest:
        raise ValueError("checksum mismatch (corrupted file)")
    return state


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


_REQUIRED = ("status", "recipe", "track", "dataset", "backbone", "method", "seed", "epochs",
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

    def create(self, spec) -> None:
        """Write the run's ``config.yaml`` (its RunSpec) unless a valid one for this spec is there."""
        self.path.mkdir(parents=True, exist_ok=True)
        if self.file(CONFIG).exists():
            try:
                if self.read_spec().hash == spec.hash:
                    return
            except RunError:
                pass  # unreadable or edited: rewritten below (the caller holds the run's claim)
        atomic_write_text(self.file(CONFIG), yaml.safe_dump(spec.to_dict(), sort_keys=True))

    def read_config(self) -> dict:
        """``config.yaml`` as written (RunError naming the file when it is unreadable or not a mapping)."""
        p = self.file(CONFIG)
        try:
            doc = load_yaml(p.read_text(), str(p), StrictLoader)  # no aliases (an alias bomb is refused)
        except (OSError, UnicodeError) as exc:
            raise RunError(f"{p} is unreadable ({type(exc).__name__}: {exc})") from None
        except ConfigError as exc:
            raise RunError(str(exc)) from None
        if not isinstance(doc, dict):
            raise RunError(f"{p} is not a run configuration (a YAML mapping), got {type(doc).__name__}")
        return doc

    def read_spec(self, doc: dict | None = None):
        """The run's RunSpec from ``config.yaml`` (RunError naming the file when it is unreadable); ``doc``: the
        file as :meth:`read_config` already read it."""
        doc = self.read_config() if doc is None else doc
        return self._with_dependency_groups(RunSpec.from_dict(doc, where=str(self.file(CONFIG))))

    def _with_dependency_groups(self, spec):
        """A run written before dependency references carried their run's group (bnnbench/config/spec.py
        ``reference``) gets it from the dependency's config.yaml beside it, when that is there and readable;
        the hash does not involve the group, only the leaderboard row does."""
        fixes = {}
        for name in ("init_from", "teacher"):
            ref = dict(getattr(spec, name))
            if not ref.get("run") or not ref.get("name") or ref.get("group"):
                continue
            try:
                dep = dependency_dir(self.path.parent, ref)
                if (dep / CONFIG).exists():
                    fixes[name] = {**ref, "group": RunDir(dep).read_spec().group}
            except RunError:
                continue
        return dataclasses.replace(spec, **fixes) if fixes else spec

    def prepare(self, spec, force: bool = False, since: float | None = None) -> str:
        """Claim this run for training and write its config: "run", or the reason it is not run here.

        ``force`` reruns a run that is done, unless its result was written after ``since`` (the sweep's start:
        another ``--force`` worker has just rerun it). An unfinished run always resumes from its checkpoint.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.claim():
            return "claimed by another worker, skipped"
        self.remove_temp_files()  # half writes of a killed worker; the claim makes them ours to remove
        if self.is_done(spec.hash):
            fresh = since is not None and self.file(RESULT).stat().st_mtime >= since
            if not force or fresh:
                self.release()
                return "finished by another worker"
            self.clear()
        self.create(spec)
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

    def is_done(self, spec_hash: str | None = None) -> bool:
        """A valid result.json is there, of the RunSpec in ``config.yaml`` (an edited or damaged config is not
        done: the runner reruns it, the report leaves it out) and, given ``spec_hash``, of that RunSpec."""
        result = self.read_result()
        if result is None:
            return False
        done = result.get("spec_hash", result.get("config_hash"))
        return (spec_hash is None or done == spec_hash) and self.config_matches(done)

    def config_matches(self, spec_hash: str | None) -> bool:
        """Whether ``config.yaml`` is readable and describes the run ``spec_hash``: it records that hash and
        (for configurations with a ``schema``, i.e. written by this layout) its content hashes to it."""
        try:
            doc = self.read_config()  # read once; the hash does not involve the dependencies' groups
            return doc.get("hash") == spec_hash and (
                doc.get("schema") is None or RunSpec.from_dict(doc, where=str(self.file(CONFIG))).hash == spec_hash)
        except (RunError, KeyError, TypeError, ValueError):
            return False

    def write_text(self, name: str, text: str) -> None:
        """A file of the run directory, written by atomic rename (never through a link); a symlink or special
        file in its place is refused with a RunError naming it, its target untouched."""
        p = self.file(name)
        if p.is_symlink() or (p.exists() and not p.is_file()):
            raise RunError(f"{p} is a symbolic link or not a plain file; the run writes a plain file there: remove it")
        atomic_write_text(p, text)

    def adopt_weights(self, source: RunDir, note: dict) -> None:
        """Copy ``source``'s weight files (a retraining of this very run) here and record ``note`` in
        ``rebuilt.json``; the run's result and metrics stay as they are."""
        for name in WEIGHT_FILES:
            if source.file(name).exists():
                atomic_write_bytes(self.file(name), source.file(name).read_bytes())
        write_json(self.file(REBUILT), note)

    def read_robustness(self) -> dict | None:
        """The run's ``robustness.json``; None when absent or unreadable (then it is evaluated afresh)."""
        try:
            doc = read_json(self.file(ROBUSTNESS))
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def write_robustness(self, doc: dict) -> None:
        write_json(self.file(ROBUSTNESS), doc)

    def write_result(self, result) -> None:
        """Write a RunResult (or its dict), sealed with a checksum."""
        doc = result if isinstance(result, dict) else result.to_dict()
        write_json(self.file(RESULT), seal_result(doc))

    def clear(self) -> None:
        """Forget a previous attempt (``--force``): result, checkpoints, metrics, deploy and robustness figures,
        the record of rebuilt weights."""
        for name in (RESULT, METRICS, CKPT, CKPT_PREV, FLIPS, INIT_WEIGHTS, ERROR_LOG, DEPLOY, ROBUSTNESS,
                     REBUILT):
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
                if "epoch" not in state:
                    raise ValueError("not a bnnbench checkpoint")
                return state
            except Exception as exc:  # noqa: BLE001 - reported, then the older checkpoint is tried
                warn(f"checkpoint {p} is unreadable ({type(exc).__name__}: {exc}); trying an older one")
        return None

    def write_metrics(self, history: list[dict]) -> None:
        atomic_write_text(self.file(METRICS), "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))

    def metrics_digest(self) -> str | None:
        """sha256 of ``metrics.jsonl`` (None when there is none)."""
        p = self.file(METRICS)
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None

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

    # claim: one worker per run, held as an OS file lock (flock) on ``lock`` for as long as the worker runs
    # it. The kernel drops the lock when the process ends (kill -9 included), so there is no staleness to
    # guess, no half-written claim and no check-then-delete race; the file's text (pid, host, time) is
    # for people only. On NFS, Linux maps flock to POSIX locks, which lockd/NFSv4 share across hosts.
    def claim(self) -> bool:
        """Take this run's claim; False when a live worker (this process included) holds it."""
        lock = self.file(LOCK)
        for _ in range(5):
            if lock.is_dir():
                raise RunError(f"{lock} is a directory; a run's claim is a file: remove it and rerun")
            fd = _open_claim(lock)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as exc:
                os.close(fd)
                raise RunError(f"{lock}: this filesystem refuses file locks ({exc.strerror}); use an --out "
                               f"on a filesystem with flock support (e.g. Lustre mounted with -o flock)") from None
            try:  # the file may have been released and removed between our open and our lock: retry
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode())
            self._lock_fd = fd
            return True
        return False

    def heartbeat(self) -> None:
        """Touch the claim (its mtime shows people when the worker last finished an epoch)."""
        try:
            os.utime(self.file(LOCK))
        except OSError:
            pass

    def release(self) -> None:
        """Give the claim up: remove the file while still holding the lock, then unlock."""
        fd = getattr(self, "_lock_fd", None)
        if fd is None:
            return
        self._lock_fd = None
        try:
            os.unlink(self.file(LOCK))
        except OSError:
            pass
        os.close(fd)


def finished_run_dirs(paths: list[Path], warn, where: str) -> list[Path]:
    """The finished runs named by ``paths``, in order: a run directory (with ``result.json``) as itself, a
    results folder as every finished run under its ``runs/`` (unfinished ones passed to ``warn``); anything
    else is a ConfigError naming ``where`` (the command)."""
    found = []
    for p in map(Path, paths):
        if (p / RESULT).is_file():
            found.append(p)
        elif (p / "runs").is_dir():
            for d in sorted(q for q in (p / "runs").iterdir() if q.is_dir()):
                (found.append(d) if (d / RESULT).is_file() else warn(f"skipping {d}: not finished (no {RESULT})"))
        else:
            raise ConfigError(f"{where} {p}: neither a finished run directory (with {RESULT}) nor a results folder "
                              f"(with runs/)")
    return found


def dependency_dir(runs_dir: Path, ref: dict) -> Path:
    """``runs_dir / name`` of the dependency ``ref``; RunError when the name (read from a config.yaml) is not
    one plain directory name, so that it cannot point outside ``runs_dir``."""
    name = ref.get("name")
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\0" in name:
        raise RunError(f"dependency name {name!r} is not a run directory name (one path component, as the run "
                       f"directories under {runs_dir} are)")
    return Path(runs_dir) / name


def finished_dependency(runs_dir: Path, ref: dict, role: str) -> Path:
    """The directory of the finished run ``ref`` = ``{"run": hash, "name": dir name}``; raises naming why
    not (a dependent run is reported as failed, not started)."""
    d = RunDir(dependency_dir(runs_dir, ref))
    res = d.read_result()
    if res is None or res.get("spec_hash") != ref["run"] or res.get("status") != "done" \
            or not d.config_matches(ref["run"]):
        state = "missing" if res is None else res.get("status") if d.config_matches(ref["run"]) else \
            "its config.yaml does not describe it"
        raise RunError(f"its {role} run {ref['name']} is not done ({state}; {d.path}): dependencies run first in "
                       f"the same sweep, see that run's result.json")
    return d.path


def _open_claim(lock: Path) -> int:
    """The claim file, opened without following a symlink (its target is never written) and refused unless
    it is a plain file (a FIFO, a device or a link in its place is a RunError naming it)."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise RunError(f"{lock} is a symbolic link; a run's claim is a plain file: remove the link and rerun") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunError(f"{lock} is not a plain file (a FIFO or device); a run's claim is a plain file: remove it "
                       f"and rerun")
    return fd


def check_output_file(path: Path, flag: str) -> None:
    """Before any work: ``path`` (the file a command will write, named by ``flag``) must not be a directory,
    must not lie under a file, and its folder must take a new file (a probe is written and removed)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; give the path of a file to write")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: {folder} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".bnnbench-probe.")
        os.close(fd)
        os.unlink(probe)
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot be written here ({exc.strerror or exc}); choose another "
                          f"path") from None


def check_writable(out: Path) -> None:
    """Fail before any compute when the output folder cannot be written (or the disk is full)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / ".write_probe", b"\0" * 65536)
        (out / ".write_probe").unlink()
    except OSError as exc:
        raise RunError(f"--out {out} is not writable ({exc.strerror or exc}); choose another folder with "
                       f"--out or free some space") from None
