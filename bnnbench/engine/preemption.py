"""Preemption: the signals a cluster sends before it stops a job are recorded, never allowed to kill a write.

The loop checks :data:`PREEMPTION` between steps; on a signal the run checkpoints (mid-epoch included) and
raises :class:`Preempted`; the same command resumes it.
"""
from __future__ import annotations

import signal
import threading


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
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            self.signum = None
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for sig, old in self._old.items():
                signal.signal(sig, old)
            self._old.clear()
        return False


#: the process's one guard (the CLI, the Slurm job and the trainer all enter it)
PREEMPTION = PreemptionGuard()
