"""1-bit deployment: trained models run with real XNOR-popcount arithmetic.

* :mod:`~bnnbench.deploy.kernels` (+ ``csrc/binconv.cpp``): bit packing and the binary convolution (portable,
  AVX2, AVX-512 paths), built once per venv (``python -m bnnbench.deploy.kernels``);
* :mod:`~bnnbench.deploy.packed`: the packed model (every binary conv replaced by its packed form) and the
  exactness check against the trained model;
* :mod:`~bnnbench.deploy.fusion`: fused binary blocks (BatchNorm, residual, activation and the next layer's
  sign packing in the kernel's epilogue, found in the ``torch.fx`` graph) and ``Traced``, the fused graph as
  a TorchScript trace;
* :mod:`~bnnbench.deploy.export`: the 1-bit export file (``run_bench.py export``) and its loader;
* :mod:`~bnnbench.deploy.measure`: what a finished run records (``deploy.json``: exactness, latency vs FP32),
  handed to the engine as a finished-run hook by the runner; :mod:`~bnnbench.deploy.timing`: round-robin
  timing and paired ratios (also used by the tools).

Submodules are imported on use (``from bnnbench.deploy import export``), so building the kernels imports
nothing else. Layering: imports the engine (to rebuild a run's model), the store, nn and the leaves.
"""
__all__ = ["export", "fusion", "kernels", "measure", "packed", "timing"]
