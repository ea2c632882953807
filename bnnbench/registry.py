"""Deprecated path: ``bnnbench.registry`` is now ``bnnbench.plugins`` (README, Plugin API);
this module re-exports it and warns once."""
import warnings

from bnnbench.plugins import *  # noqa: F401,F403
from bnnbench.plugins import __all__  # noqa: F401

warnings.warn("bnnbench.registry is deprecated; import from bnnbench.plugins instead", DeprecationWarning, stacklevel=2)
