"""A run that raises fails alone: its ``result.json`` says ``failed`` with the exception and the file and
line it came from (a plugin's code, when it raised), ``error.log`` holds the traceback; the sweep goes on."""
from __future__ import annotations

import errno
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bnnbench.config.spec import RunResult, RunSpec, Summary
from bnnbench.engine import distributed as ddp
from bnnbench.engine.environment import environment
from bnnbench.engine.preemption import Preempted
from bnnbench.engine.progress import Progress
from bnnbench.engine.run import OnDone, train_run
from bnnbench.errors import RunError, describe_exception
from bnnbench.store import ERROR_LOG, RunDir

#: frames in these files are the engine's or torch's own: a failure names the first frame outside them
ENGINE_FRAMES = (str(Path(__file__).resolve().parent.parent), "/torch/")


def run_or_fail(spec: RunSpec, run_dir: RunDir, device: torch.device, data_root: Path,
                progress: Progress | None = None, warn: Callable[[str], None] = print,
                loggers: tuple = (), on_done: Sequence[OnDone] = ()) -> RunResult:
    """:func:`~bnnbench.engine.run.train_run`, but an exception raised by the run fails this run only.
    Preemption and Ctrl-C pass through; a full or read-only disk stops the sweep (the checkpoint is intact)."""
    t0 = time.time()
    try:
        return train_run(spec, run_dir, device, data_root, progress=progress, warn=warn, loggers=loggers,
                         on_done=on_done)
    except (Preempted, KeyboardInterrupt):
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):  # the disk, not the run
            raise RunError(f"cannot write to {getattr(exc, 'filename', None) or run_dir.path} ({exc.strerror}); "
                           f"the run's last checkpoint is intact: free space or fix permissions, then run the "
                           f"same command again to resume") from None
        return record_failure(spec, run_dir, device, exc, t0)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - recorded in the run, the sweep goes on
        return record_failure(spec, run_dir, device, exc, t0)


def record_failure(spec: RunSpec, run_dir: RunDir, device: torch.device, exc: BaseException,
                   t0: float) -> RunResult:
    """Write a failed result (exception, file and line) and the traceback in ``error.log``."""
    why = describe_exception(exc, skip=ENGINE_FRAMES, subject="the run")
    try:
        run_dir.write_text(ERROR_LOG, "".join(traceback.format_exception(exc)))
        where = f"traceback in {run_dir.file(ERROR_LOG)}"
    except RunError as refused:  # a link or special file where error.log belongs: said, not written through
        where = f"no traceback written: {refused}"
    result = RunResult.failed(spec, f"{why}; {where}",
                              Summary(wall_time_s=time.time() - t0), environment(device))
    if ddp.is_main():
        run_dir.write_result(result)
    return result
