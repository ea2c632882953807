"""Deprecated path: ``bnnbench.layers`` is now ``bnnbench.nn`` (README, Plugin API);
this module re-exports it and warns once."""
import warnings

from bnnbench.nn import *  # noqa: F401,F403
from bnnbench.nn import __all__  # noqa: F401

warnings.warn("bnnbench.layers is deprecated; import from bnnbench.nn instead", DeprecationWarning, stacklevel=2)
