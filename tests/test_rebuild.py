"""``run_bench.py rebuild-weights``: a finished run whose weights are gone gets them back by retraining, only
when every epoch's training loss equals the recorded one; the result and metrics are never touched."""
import json
import shutil

import pytest
import torch
from conftest import make_cifar, make_recipe

from bnnbench.cli.main import main
from bnnbench.store import CKPT, FLIPS, INIT_WEIGHTS, METRICS, RESULT, RunDir, load_torch

pytestmark = pytest.mark.slow


def test_missing_weights_are_rebuilt_bit_for_bit_and_a_diverging_retraining_is_refused(tmp_path, capsys):
    data = make_cifar(tmp_path / "data", n_test=40)
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=2)
    out = tmp_path / "out"
    assert main(["--methods", "xnor", "--recipe", str(recipe), "--data-root", str(data), "--out", str(out),
                 "--device", "cpu"]) == 0
    (run,) = (out / "runs").iterdir()
    original = load_torch(run / CKPT)["model"]
    kept = {f: (run / f).read_bytes() for f in (RESULT, METRICS)}
    copy = tmp_path / "copy" / "runs" / run.name
    shutil.copytree(run, copy)
    for d in (run, copy):
        for name in (CKPT, FLIPS, INIT_WEIGHTS):
            (d / name).unlink()
    capsys.readouterr()
    assert main(["rebuild-weights", str(out), "--data-root", str(data)]) == 0
    assert "weights rebuilt (2 epochs, training loss equal in every one" in capsys.readouterr().out
    rebuilt = load_torch(run / CKPT)["model"]
    assert rebuilt.keys() == original.keys() and all(torch.equal(rebuilt[k], original[k]) for k in original)
    assert {f: (run / f).read_bytes() for f in kept} == kept
    assert json.loads((run / "rebuilt.json").read_text())["equal"] is True
    assert main(["evaluate", str(run), "--data-root", str(data)]) == 0
    assert "(identical)" in capsys.readouterr().out
    assert main(["rebuild-weights", str(run), "--data-root", str(data)]) == 0       # nothing to do now
    assert "has its weights" in capsys.readouterr().out
    # a recorded trajectory the retraining does not follow: nothing installed, the epoch named
    rows = RunDir(copy).read_metrics()
    rows[1]["train_loss"] += 1e-6
    (copy / METRICS).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    assert main(["rebuild-weights", str(copy), "--data-root", str(data)]) == 3
    said = capsys.readouterr().out
    assert "did not follow the recorded run (epoch 2: train loss" in said and not (copy / CKPT).exists()
