"""The plugin API: what a method or architecture author registers, and how plugins are found.

* :mod:`~bnnbench.plugins.registry`: the generic :class:`Registry` (register / get / names; every way of
  registering runs the registry's validator), discovery of built-ins and entry points, ``--plugin`` loading
  (:func:`load_plugins`) and a plugin's provenance (part of a run's identity);
* :mod:`~bnnbench.plugins.method`: the :class:`Method` contract and its seams, :data:`METHODS`,
  :func:`register_method`;
* :mod:`~bnnbench.plugins.arch`: :class:`ArchSpec`, :data:`ARCHITECTURES`, :func:`register_arch`,
  :func:`build_model`.

A plugin author's imports::

    from bnnbench.nn import BinaryConv2d, FILTER_DIMS, sign_approx        # the building blocks
    from bnnbench.plugins import Method, register_method                  # a method
    from bnnbench.plugins import ArchSpec, register_arch                  # a backbone

Layering: imports only :mod:`bnnbench.nn` and the leaves (errors, references); never the engine.
"""
from bnnbench.nn.layers import FILTER_DIMS, BinaryConv2d, InferenceForm, shift
from bnnbench.plugins.arch import ARCHITECTURES, ArchSpec, build_model, kaiming_binary_init, register_arch
from bnnbench.plugins.method import HOOKS, METHODS, Method, check_hparams, check_method_class, register_method
from bnnbench.plugins.registry import (
    Registry,
    definition_site,
    ensure_builtins,
    load_plugin,
    load_plugins,
    provenance,
)

__all__ = ["ARCHITECTURES", "FILTER_DIMS", "HOOKS", "METHODS", "ArchSpec", "BinaryConv2d", "InferenceForm", "Method",
           "Registry", "build_model", "check_hparams", "check_method_class", "definition_site", "ensure_builtins",
           "kaiming_binary_init", "load_plugin", "load_plugins", "provenance", "register_arch", "register_method",
           "shift"]
