"""Deprecated path: ``bnnbench.arch`` is now ``bnnbench.plugins`` (README, Plugin API);
this module re-exports it and warns once."""
import warnings

from bnnbench.plugins import *  # noqa: F401,F403
from bnnbench.plugins import __all__  # noqa: F401

warnings.warn("bnnbench.arch is deprecated; import from bnnbench.plugins instead", DeprecationWarning, stacklevel=2)
