import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
GOLDEN = SHARED / "reference" / "golden"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make_cifar(root: Path, n_train: int = 400, n_test: int = 200, classes: int = 10, seed: int = 0) -> Path:
    """A tiny CIFAR-10-format folder whose classes are easy to learn (class-coloured images plus noise)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    palette = rng.integers(0, 256, size=(classes, 3))

    def batch(n):
        labels = rng.integers(0, classes, size=n)
        imgs = palette[labels][:, :, None, None] + rng.integers(-40, 40, size=(n, 3, 32, 32))
        imgs = imgs.clip(0, 255)
        return {"data": imgs.reshape(n, -1).astype(np.uint8), "labels": labels.tolist(),
                "batch_label": "tiny", "filenames": [f"{i}.png" for i in range(n)]}

    per = n_train // 5
    for k in range(1, 6):
        with open(folder / f"data_batch_{k}", "wb") as f:
            pickle.dump(batch(per), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(classes)]}, f)
    return folder


TINY_RECIPE = """\
name: tiny
description: tiny CIFAR-format data for tests
dataset: cifar10
backbone: cresnet20
train:
  epochs: {epochs}
  batch_size: 50
  eval_batch_size: 200
  lr: 0.1
  weight_decay: 5.0e-4
  warmup_epochs: {warmup}
  augment: cifar
  normalize: dataset
  seed: 0
paper:
  recu: {{lr: 0.05}}
"""


def make_recipe(path: Path, epochs: int = 2) -> Path:
    path.write_text(TINY_RECIPE.format(epochs=epochs, warmup=min(1, epochs - 1)))
    return path


@pytest.fixture
def tiny_cifar(tmp_path):
    return make_cifar(tmp_path / "data")


@pytest.fixture
def golden():
    def load(name):
        p = GOLDEN / name
        if not p.exists():
            pytest.skip(f"golden file {p} not available (../shared absent)")
        return torch.load(p)
    return load


#: tallies printed at the end of the test run (README "Reliability" section)
TALLY = {"faults injected": 0, "kill -9 points": 0, "bad inputs tried": 0, "fuzzed files": 0}


def pytest_terminal_summary(terminalreporter):
    if any(TALLY.values()):
        terminalreporter.write_line("reliability: " + ", ".join(f"{v} {k}" for k, v in TALLY.items()))
