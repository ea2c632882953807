"""The suite's own error type and the helpers that make its messages useful to people.

Every error raised on bad input is a :class:`BnnBenchError` (or a subclass). Its message names the bad
value, what is allowed, and where the value came from (flag, file, key). The CLI prints the message and
exits non-zero without a traceback.
"""
from __future__ import annotations

import difflib
import traceback
from collections.abc import Callable, Iterable

from rich.markup import escape


class BnnBenchError(Exception):
    """Base class of every error the suite raises on purpose (bad input, missing data, bad plugin)."""


class RegistryError(BnnBenchError):
    """Unknown or duplicate method/architecture name, or a plugin that failed to load."""


class ConfigError(BnnBenchError):
    """A recipe, override or CLI value that is unknown, mistyped or out of range."""


class DataError(BnnBenchError):
    """A dataset that is missing, malformed or cannot be downloaded."""


class RunError(BnnBenchError):
    """A run that cannot start or cannot continue (unwritable output, corrupt state)."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """Return the registered/allowed name closest to ``name`` or None when nothing is close."""
    matches = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Sentence fragment " (did you mean 'x'?)" or "" when nothing is close."""
    match = closest(name, choices)
    return f" (did you mean {match!r}?)" if match else ""


def describe_exception(exc: BaseException, skip: tuple[str, ...] = (), subject: str = "it") -> str:
    """'Type: message (at file:line, in function)' for people: the innermost frame whose file names none of
    ``skip`` (e.g. the engine's own folder and torch, so a plugin's line is named), else the innermost
    frame. ``subject`` says who called ``sys.exit`` ("it", "the run"). The one describer of the suite: used
    for plugins that fail to import (:mod:`bnnbench.plugins.registry`) and runs that raise
    (:mod:`bnnbench.engine.failures`)."""
    frames = traceback.extract_tb(exc.__traceback__)
    outside = [f for f in frames if not any(s in f.filename for s in skip)]
    frame = (outside or frames or [None])[-1]
    where = f" (at {frame.filename}:{frame.lineno}, in {frame.name})" if frame else ""
    if isinstance(exc, SystemExit):
        return f"{subject} called sys.exit({exc.code!r}){where}"
    if type(exc).__name__ == "FailOnRecompileLimitHit":
        return (f"torch.compile recompiled the model more than torch._dynamo.config.recompile_limit times "
                f"(compile: true){where}: a value the forward pass reads changes between steps as a Python number "
                f"(keep schedules in buffers, set with tensor.fill_; see README, Plugin API), or rerun with "
                f"compile: false")
    return f"{type(exc).__name__}: {exc}{where}"


def warn_to(console) -> Callable[[str], None]:
    """A ``warn(message)`` that prints a yellow "warning:" line on a rich ``console`` (markup in the message
    is shown as text): what the runner, the report and the commands pass down for recoverable problems."""
    return lambda msg: console.print(f"[yellow]warning:[/yellow] {escape(str(msg))}", soft_wrap=True)
