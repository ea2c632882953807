"""Safe YAML for the suite's own files (recipes, run directories' ``config.yaml``) and ``--set`` values.

YAML 1.2 floats (``9e-4``, which YAML 1.1 reads as text), no duplicate keys, and no aliases: a document
with ``*name`` is refused before anything expands it (an alias bomb of a few hundred bytes would otherwise
take gigabytes), and a document nested deeper than Python's recursion limit is refused too. Errors are
:class:`~bnnbench.errors.ConfigError` naming the file.
"""
from __future__ import annotations

import re
from typing import Any

import yaml

from bnnbench.errors import ConfigError

_FLOAT_12 = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class StrictLoader(yaml.SafeLoader):
    """Safe YAML without duplicate keys, resolving scalars as ``yaml.safe_dump`` writes them (YAML 1.1): what
    the run directories' ``config.yaml`` needs (a run hash such as ``8e012345`` stays text)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class SafeLoader(StrictLoader):
    """:class:`StrictLoader` with YAML 1.2 floats (``9e-4``, which YAML 1.1 reads as text): what people write
    in recipes and on the command line."""


SafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def parse_scalar(raw: str) -> Any:
    """A --set / --hp value read as a recipe would read it (YAML 1.2 floats included; bad YAML: the text)."""
    if raw == "":
        return None
    try:
        return yaml.load(raw, Loader=SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError):
        return raw


def load_yaml(text: str, where: str, loader: type[StrictLoader] = SafeLoader) -> Any:
    """Parse a document (``where``: its file, for messages); aliases (``*name``) are refused before anything
    expands them. ``loader``: :class:`SafeLoader` (recipes) or :class:`StrictLoader` (files the suite wrote)."""
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(f"{where}: YAML aliases (*{event.anchor}) are not allowed; write the values out")
        return yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


