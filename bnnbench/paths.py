"""Where the project's own folders are (recipes, results, reference numbers)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def recipes_dir() -> Path:
    return Path(os.environ.get("BNNBENCH_RECIPES", ROOT / "recipes"))


def reference_file() -> Path:
    return Path(os.environ.get("BNNBENCH_REFERENCE", ROOT / "results" / "reference.yaml"))


def default_data_root() -> Path:
    return Path(os.environ.get("BNNBENCH_DATA", ROOT / "data"))
