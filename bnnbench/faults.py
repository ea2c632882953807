"""Test-only fault injection at named points of a run, triggered by progress, never by time.

The trainer and the run store call :func:`point` at the moments where a crash matters::

    step                 after an optimiser step (and its flip tracking)
    eval                 after one evaluation batch
    after_checkpoint     the epoch's checkpoint is written, its metrics row not yet
    before_result        training is over, result.json not yet written
    after_result         result.json is written, the run's claim not yet released
    write:<file name>    inside an atomic write: the temp file is complete and fsynced, not yet renamed

``BNNBENCH_FAULT=POINT:N[:SIGNAL]`` (e.g. ``step:7``, ``write:checkpoint.pt:2``, ``step:3:SIGTERM``) makes
the process send itself SIGNAL (default SIGKILL) the N-th time it reaches POINT. Counts are per process,
so a fault lands at the same place whatever the machine's speed. With ``BNNBENCH_FAULT_ONCE=PATH`` the
fault fires only in the first process that reaches it (it creates PATH), e.g. in a job that is requeued.
Unset (always, outside tests), every call is one dictionary look-up.
"""
from __future__ import annotations

import functools
import os
import signal
from collections import Counter

ENV = "BNNBENCH_FAULT"
_hits: Counter = Counter()


@functools.cache
def _plan() -> tuple[str, int, int] | None:
    spec = os.environ.get(ENV, "")
    if not spec:
        return None
    parts = spec.rsplit(":", 2)
    if len(parts) == 3 and not parts[2].startswith("SIG"):  # "write:checkpoint.pt:2": no signal given
        parts = [f"{parts[0]}:{parts[1]}", parts[2]]
    sig = signal.SIGKILL
    if len(parts) == 3:
        sig = getattr(signal, parts[2], None)
        if not isinstance(sig, signal.Signals):
            raise ValueError(f"{ENV}={spec!r}: unknown signal {parts[2]!r}")
    if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected POINT:N[:SIGNAL] with N >= 1, e.g. step:7 or step:3:SIGTERM")
    return parts[0], int(parts[1]), int(sig)


def point(name: str) -> None:
    """Mark that the run reached ``name``; fire the configured fault when this is its N-th time."""
    plan = _plan()
    if plan is None or plan[0] != name:
        return
    _hits[name] += 1
    if _hits[name] == plan[1]:
        once = os.environ.get("BNNBENCH_FAULT_ONCE")
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return  # an earlier process fired it
        os.kill(os.getpid(), plan[2])
