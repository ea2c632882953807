"""bnnbench: train and compare 1-bit (1W1A) BNN methods on shared backbones under standardized recipes.

Map of the package (one concern per module):

* plugin API: ``registry`` (METHODS, ARCHITECTURES, discovery), ``layers`` (BinaryConv2d),
  ``surrogates`` (sign functions and their backwards), ``method`` (the Method contract and its seams),
  ``arch`` (ArchSpec, model construction);
* run path: ``recipes`` (validated YAML) -> ``spec`` (RunSpec, TrainSettings, RunResult) -> ``trainer``
  (the Run object) -> ``store`` (run directories, checkpoints, claims); with ``data``, ``optim``,
  ``flips`` (flip and silent-weight tracking) and ``ops`` (BOPs/FLOPs);
* outputs: ``report`` (leaderboards), ``plots``;
* scale-out: ``distributed`` (torchrun/DDP), ``launch`` (Slurm via submitit), ``dali``;
* tools: ``bench`` (speed), ``host`` (CPU memory settings), ``faults`` (test-only fault injection);
* ``cli``: the command line (``run_bench.py``).

The engine never names a method or a dataset kind by string; methods and architectures reach it only
through the registries.
"""
__version__ = "0.1.0"
