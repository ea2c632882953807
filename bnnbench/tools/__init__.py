"""Tools: measurements and checks around the suite, each a command or a script.

* :mod:`~bnnbench.tools.bench`: ``run_bench.py bench`` (training-step speed of every method vs FP);
* :mod:`~bnnbench.tools.deploy_bench`: ``run_bench.py deploy-bench`` (1-bit inference vs FP32, per layer and
  end to end);
* :mod:`~bnnbench.tools.gpu_check`: ``scripts/gpu_check.sh`` (every CUDA path, one PASS/FAIL line each);
* :mod:`~bnnbench.tools.summary`: ``run_bench.py summary`` (the per-layer model summary, larq-style);
* :mod:`~bnnbench.tools.robustness`: ``run_bench.py robustness`` (corruptions and attacks, robustness.json);
* :mod:`~bnnbench.tools.rebuild`: ``run_bench.py rebuild-weights`` (a finished run's missing checkpoint);
* :mod:`~bnnbench.tools.precision`: the binarizers in fp16/bf16 against fp32;
* :mod:`~bnnbench.tools.transfers`: a host<->device traffic counter (a TorchDispatchMode).

Submodules are imported on use. Layering: may import everything below the command line; only the CLI
imports them.
"""
__all__ = ["bench", "deploy_bench", "gpu_check", "precision", "rebuild", "robustness", "summary", "transfers"]
