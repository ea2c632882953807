"""Checkpointing and resume: what a checkpoint holds, how a run continues from its last good one (mid-epoch
included), and how a new run starts (``--init-from`` or a stage's dependency; the initial weights)."""
from __future__ import annotations

import json
from collections.abc import Callable

from bnnbench.config.spec import RunSpec
from bnnbench.engine.flips import FlipTracker
from bnnbench.engine.init import describe_init, init_from, resolve_init
from bnnbench.engine.recorder import Recorder
from bnnbench.engine.state import RunState
from bnnbench.errors import RunError
from bnnbench.store import CKPT, INIT_REPORT, INIT_WEIGHTS, RunDir, atomic_torch_save, finished_dependency, load_torch


class Checkpointing:
    """Saves and restores a run: the model, optimizer, scaler, flip tracker and the recorder's counters."""

    def __init__(self, spec: RunSpec, run_dir: RunDir, state: RunState, recorder: Recorder, main: bool,
                 warn: Callable[[str], None]):
        self.spec, self.dir, self.state, self.recorder = spec, run_dir, state, recorder
        self.main, self.warn = main, warn

    def state_dict(self, epoch_done: int, partial: dict | None = None) -> dict:
        s = self.state
        return {"epoch": epoch_done, "model": s.net.state_dict(), "optimizer": s.optimizer.state_dict(),
                "scaler": s.scaler.state_dict(), "flips": s.tracker.state_dict(), **self.recorder.state_dict(),
                "spec_hash": self.spec.hash, "partial": partial}

    def load_state_dict(self, state: dict) -> tuple[int, dict | None]:
        """Restore everything; returns (the epoch to continue at, the mid-epoch part or None)."""
        s = self.state
        s.net.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.scaler.load_state_dict(state["scaler"])
        s.tracker.load_state_dict(state["flips"])
        self.recorder.load_state_dict(state)
        partial = state.get("partial")
        return (partial["epoch"] if partial else state["epoch"] + 1), partial

    def save(self, epoch_done: int, partial: dict | None = None) -> None:
        """Write the checkpoint (rank 0; atomic, the previous one kept as a fallback)."""
        if self.main:
            self.dir.save_checkpoint(self.state_dict(epoch_done, partial))

    def resume(self) -> tuple[int, dict | None]:
        """Continue from the last good checkpoint of this run, or start a new one (its initial weights
        recorded); returns (the epoch to start at, the mid-epoch part to continue or None)."""
        state = self.dir.load_checkpoint(self.warn)
        if state is None:
            self.start()
            return 0, None
        if state.get("spec_hash") != self.spec.hash:
            raise RunError(f"{self.dir.file(CKPT)} belongs to run {state.get('spec_hash')!r}, not to "
                           f"this run ({self.spec.hash}); delete the run directory or rerun with --force")
        start = self.load_state_dict(state)
        if self.main:
            self.dir.write_metrics(self.recorder.history)
        self._reload_init_weights()
        return start

    def start(self) -> None:
        """A new run: its starting weights (``--init-from`` or its stage's dependency), then the initial
        latent weights of the binary layers (for the silent-weight histograms)."""
        if self.spec.init_from:
            self._init_from()
        if self.main:
            atomic_torch_save(self.state.tracker.init_weights, self.dir.file(INIT_WEIGHTS))

    def _reload_init_weights(self) -> None:
        init = self.dir.file(INIT_WEIGHTS)
        if not init.exists():
            return
        try:
            self.state.tracker.init_weights = load_torch(init)
        except Exception as exc:  # noqa: BLE001 - torch raises several types for a damaged file
            self.warn(f"{init} is unreadable ({type(exc).__name__}); the run continues without it, so it "
                      f"gets no silent-weight histogram")
            init.unlink()

    def _init_from(self) -> None:
        """Start from ``--init-from`` weights (name and shape matches), reported and kept in ``init.json``."""
        init = dict(self.spec.init_from)
        if "sha256" not in init:  # a stage: the final checkpoint of the stage before it, which must be done
            init = {**resolve_init(finished_dependency(self.dir.path.parent, init, "init")), "run": init["run"]}
        report = init_from(self.state.net, init)
        self.state.tracker = FlipTracker(self.state.net)  # flips count from the loaded weights
        if self.main:
            self.warn(describe_init(init, report))
            self.dir.write_text(INIT_REPORT, json.dumps({**init, **report}, indent=1) + "\n")
