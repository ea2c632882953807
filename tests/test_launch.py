"""The Slurm path through submitit's local executor (the real submitit code, no mock)."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, make_recipe

submitit = pytest.importorskip("submitit", reason="submitit not installed (pip install 'bnnbench[slurm]')")
pytestmark = pytest.mark.slow


def test_submitit_runs_pending_and_skips_done(tmp_path, tiny_cifar):
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=1)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, str(ROOT / "run_bench.py"), "--recipe", str(recipe), "--data-root", str(tiny_cifar),
            "--out", str(out), "--device", "cpu"]
    r = subprocess.run([*base, "--methods", "xnor"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (done,) = (out / "runs").iterdir()
    mtime = (done / "result.json").stat().st_mtime_ns
    r = subprocess.run([*base, "--methods", "xnor", "ovsw", "recu", "--launcher", "slurm", "--slurm-executor",
                        "local", "--gpus-per-run", "0", "--slurm-cpus", "1", "--wait"], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("submitted job") == 2 and "2 jobs submitted" in r.stdout
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 3
    for d in runs:
        assert json.loads((d / "result.json").read_text())["status"] == "done"
    assert (done / "result.json").stat().st_mtime_ns == mtime, "the done run was not rerun"
    assert (out / "leaderboard.md").read_text().count("| ") >= 3
    assert any((out / "slurm").iterdir()), "submitit logs are kept"
