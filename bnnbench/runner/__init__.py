"""The runner: from a sweep request to finished runs.

* :mod:`~bnnbench.runner.plan`: :class:`SweepRequest` (typed: methods, backbones, recipe, seeds, overrides,
  init-from, plugins) -> :func:`plan` -> the ordered RunSpecs, stages and teachers included;
* :mod:`~bnnbench.runner.stages`: a recipe's stages and teacher expanded into dependent runs, scoped
  ``--set SCOPE.KEY=VALUE``;
* :mod:`~bnnbench.runner.execute`: the one run protocol (claim -> train or resume -> release, with the
  finished-run hooks), :func:`run_sweep` (the local loop);
* :mod:`~bnnbench.runner.slurm`: the same protocol as submitit jobs, dependent runs in levels.

Layering: above the engine, deploy and the store; never imports report, tools or cli.
"""
from bnnbench.runner.execute import ON_DONE, Outcome, evaluate_extras, execute, run_sweep
from bnnbench.runner.plan import Plan, SweepRequest, parse_assignments, plan
from bnnbench.runner.slurm import RunJob, SlurmOptions, dependency_levels, submit
from bnnbench.runner.stages import expand, split_scoped

__all__ = ["ON_DONE", "Outcome", "Plan", "RunJob", "SlurmOptions", "SweepRequest", "dependency_levels",
           "evaluate_extras", "execute",
           "expand", "parse_assignments", "plan", "run_sweep", "split_scoped", "submit"]
