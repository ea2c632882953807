"""The Slurm path through submitit's local executor (the real submitit code, no mock)."""
import json
import os
import re
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


def test_submitit_timeout_checkpoints_mid_epoch_and_requeues(tmp_path):
    """SIGUSR2, what Slurm sends ahead of a timeout or preemption, arrives mid-epoch (at the 20th of 40 steps of
    the first epoch, placed by progress: bnnbench/faults.py, once). The trainer checkpoints after that step
    and passes the signal on; submitit's handler requeues the job, which resumes mid-epoch. The run must end
    as an uninterrupted run does."""
    from conftest import make_cifar
    data = make_cifar(tmp_path / "data", n_train=2000).parent
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=8)
    plain = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    faulty = {**plain, "BNNBENCH_FAULT": "step:20:SIGUSR2", "BNNBENCH_FAULT_ONCE": str(tmp_path / "fired")}

    def cli(out, *extra, timeout=900, env=plain):
        r = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "--recipe", str(recipe), "--data-root",
                            str(data), "--out", str(out), "--device", "cpu", "--methods", "ovsw", *extra],
                           env=env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stdout + r.stderr
        (run,) = (out / "runs").iterdir()
        return run

    ref = cli(tmp_path / "ref")
    run = cli(tmp_path / "out", "--launcher", "slurm", "--slurm-executor", "local", "--slurm-time", "30",
              "--gpus-per-run", "0", "--slurm-cpus", "1", "--wait", env=faulty)
    assert (tmp_path / "fired").exists(), "the signal was sent"
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "slurm").rglob("*.out"))
    errs = "".join(p.read_text() for p in (tmp_path / "out" / "slurm").rglob("*.err"))
    steps = re.findall(r"checkpointed \S+ at epoch (\d+), step (\d+)/(\d+)", logs)
    assert steps == [("1", "20", "40")], "checkpointed mid-epoch at the signalled step: " + logs[-2000:]
    assert "Caught signal SIGUSR2" in errs, errs[-2000:]  # submitit took over and requeued (the run is done)
    result, expected = (json.loads((d / "result.json").read_text()) for d in (run, ref))
    assert result["status"] == "done" and result["epochs_run"] == 8
    assert result["final_top1"] == expected["final_top1"] and result["silent"] == expected["silent"]
    losses = [[json.loads(line)["train_loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (run, ref)]
    assert losses[0] == losses[1], "each epoch once, with the same numbers as the uninterrupted run"


def test_submitit_runs_dependent_stages_after_their_dependencies(tmp_path):
    from bnnbench.runner import SweepRequest, plan
    from bnnbench.runner.slurm import dependency_levels
    from bnnbench.store import RunDir
    argv = ["--recipe", "digits-cresnet20-twostage", "--methods", "ovsw", "--epochs", "1", "--set",
            "train_subset=128", "warmup_epochs=0", "--device", "cpu", "--out", str(tmp_path / "out")]
    specs = plan(SweepRequest(methods=["ovsw"], recipe="digits-cresnet20-twostage", epochs=1,
                              sets=[("train_subset", 128), ("warmup_epochs", 0)])).specs
    levels = dependency_levels([(s, None) for s in specs])
    assert [[s.stage for s, _ in lv] for lv in levels] == [["teacher"], ["stage1"], ["stage2"]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), *argv, "--launcher", "slurm", "--slurm-executor",
                        "local", "--gpus-per-run", "0", "--slurm-cpus", "1", "--wait"], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("submitted job") == 3
    results = [json.loads((d / "result.json").read_text()) for d in (tmp_path / "out" / "runs").iterdir()]
    assert sorted(x["stage"] for x in results) == ["stage1", "stage2", "teacher"]
    assert all(x["status"] == "done" for x in results)
    s2 = next(d for d in (tmp_path / "out" / "runs").iterdir() if RunDir(d).read_spec().stage == "stage2")
    assert json.loads((s2 / "init.json").read_text())["loaded"] > 0
