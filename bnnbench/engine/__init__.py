"""The engine: one training loop for every method, split along its jobs.

* :mod:`~bnnbench.engine.run`: :class:`Run` (composes the parts below; ``on_done`` hooks for what a finished
  run does next), :func:`train_run`; :mod:`~bnnbench.engine.failures`: :func:`run_or_fail` (a run that
  raises fails alone);
* the parts: :mod:`~bnnbench.engine.state` (build: loaders, method, model, optimizer, loss, flip tracker),
  :mod:`~bnnbench.engine.checkpointing` (save, resume, start), :mod:`~bnnbench.engine.loop` (the epoch loop)
  and :mod:`~bnnbench.engine.step` (one step), :mod:`~bnnbench.engine.evaluation`,
  :mod:`~bnnbench.engine.recorder` (metrics rows, history, loggers), :mod:`~bnnbench.engine.preemption`,
  :mod:`~bnnbench.engine.result` (the run's summary), :mod:`~bnnbench.engine.environment` (seed, device,
  commit);
* rebuilding a run from its spec: :mod:`~bnnbench.engine.rebuild` (loaders, model, a finished run's trained
  model), :mod:`~bnnbench.engine.init` (``--init-from``);
* helpers: optim, distill, flips, numerics, host (CPU memory), progress, loggers, distributed (torchrun/DDP);
* after training: :mod:`~bnnbench.engine.attacks` (FGSM/PGD) and :mod:`~bnnbench.engine.robustness` (a
  finished run under corruptions and attacks, ``robustness.json``).

Layering: imports config, data, plugins, nn, the store and the leaves; never deploy, runner, report, tools
or cli (checked by import-linter). It never names a method or a dataset.
"""
from bnnbench.engine.environment import device_name, git_commit, resolve_device, seed_everything
from bnnbench.engine.evaluation import evaluate
from bnnbench.engine.failures import record_failure, run_or_fail
from bnnbench.engine.preemption import PREEMPTION, Preempted, PreemptionGuard
from bnnbench.engine.rebuild import checked_data, make_loaders, on_device, run_model, trained_model
from bnnbench.engine.run import OnDone, Run, train_run
from bnnbench.engine.state import RunState, build_state, compiled
from bnnbench.engine.step import EpochSums, train_step

__all__ = ["PREEMPTION", "EpochSums", "OnDone", "Preempted", "PreemptionGuard", "Run", "RunState", "build_state",
           "checked_data", "compiled", "device_name", "evaluate", "git_commit", "make_loaders", "on_device",
           "record_failure", "resolve_device", "run_model", "run_or_fail", "seed_everything", "train_run",
           "train_step", "trained_model"]
