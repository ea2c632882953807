"""End to end through the CLI on tiny generated data: runs, skip-if-done, --force, resume, report."""
import csv
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, make_recipe

from bnnbench.cli.main import build_parser, sweep_request
from bnnbench.engine import train_run
from bnnbench.engine.progress import Progress
from bnnbench.plugins import METHODS
from bnnbench.runner import plan
from bnnbench.store import RunDir

pytestmark = pytest.mark.slow


def cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(ROOT / "run_bench.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=600)


@pytest.fixture
def setup(tmp_path, tiny_cifar):
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=3)
    return {"recipe": recipe, "data": tiny_cifar, "out": tmp_path / "out"}


def run_args(s, *extra):
    return ["--recipe", s["recipe"], "--data-root", s["data"], "--out", s["out"], "--device", "cpu", *extra]


def test_end_to_end_skip_force_and_report(setup):
    r = cli("--methods", "ovsw", "recu", *run_args(setup))
    assert r.returncode == 0, r.stdout + r.stderr
    runs = sorted((setup["out"] / "runs").iterdir())
    assert len(runs) == 2
    for d in runs:
        res = json.loads((d / "result.json").read_text())
        assert res["status"] == "done" and res["epochs_run"] == 3
        assert 0 <= res["final_top1"] <= 100 and res["spec_hash"] in d.name
        for key in ("best_top1", "final_top5", "wall_time_s", "images_per_s", "peak_memory_bytes", "device",
                    "torch", "git_commit", "silent"):
            assert key in res
        assert res["peak_memory_scope"] == "run" and res["numerics"]["deterministic"] is False
        assert res["numerics"]["amp"] is None and res["numerics"]["compile"] is False   # CPU
        lines = (d / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(x) for x in lines]
        assert [r["epoch"] for r in rows] == [0, 1, 2]
        assert all(0 <= r["sign0_train"] < 1e-3 and 0 <= r["sign0_test"] < 1e-3 for r in rows)  # fp32
        assert (d / "config.yaml").exists() and (d / "checkpoint.pt").exists()
    md = (setup["out"] / "leaderboard.md").read_text()
    assert "| ovsw" in md and "| recu" in md
    for f in ("leaderboard.csv", "leaderboard.tex", "leaderboard.json"):
        assert (setup["out"] / f).stat().st_size > 0
    accs = {json.loads((d / "result.json").read_text())["final_top1"] for d in runs}
    assert max(accs) > 20  # learnable data: well above chance (10%, 200 test images)

    mtimes = {d: (d / "result.json").stat().st_mtime_ns for d in runs}
    r = cli("--methods", "ovsw", "recu", *run_args(setup))
    assert r.returncode == 0 and "0 to run, 2 already done" in r.stdout
    assert all((d / "result.json").stat().st_mtime_ns == t for d, t in mtimes.items())

    r = cli("--methods", "ovsw", *run_args(setup, "--force"))
    assert r.returncode == 0 and "1 to run" in r.stdout
    ovsw = next(d for d in runs if "__ovsw__" in d.name)
    assert (ovsw / "result.json").stat().st_mtime_ns != mtimes[ovsw]

    # report rebuilds identical tables from the run directories alone
    before = {f: (setup["out"] / f).read_text() for f in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex")}
    for f in before:
        (setup["out"] / f).unlink()
    r = cli("report", "--out", setup["out"], "--format", "md")
    assert r.returncode == 0
    assert {f: (setup["out"] / f).read_text() for f in before} == before
    assert r.stdout == before["leaderboard.md"]

    # a corrupt result.json is skipped with a warning naming the run, and the run is not done
    recu = next(d for d in runs if "__recu__" in d.name)
    (recu / "result.json").write_text('{"status": "done", "final_to')
    r = cli("report", "--out", setup["out"], "--format", "csv")
    assert r.returncode == 0 and "skipping" in r.stdout and recu.name in r.stdout.replace("\n", "")
    rows = [row for row in csv.reader(r.stdout.splitlines()) if row and row[0].startswith("tiny [")]
    assert [row[1] for row in rows] == ["ovsw"], r.stdout  # the corrupt recu run has no row
    assert not RunDir(recu).is_done()


def test_paper_track_and_epochs_override_are_recorded(setup):
    args = build_parser().parse_args(["--methods", "recu", "ovsw", "--track", "paper", "--epochs", "1",
                                      "--set", "warmup_epochs=0",
                                      *map(str, run_args(setup))])
    cfgs, _ = plan(sweep_request(args))
    recu = next(c for c in cfgs if c.method == "recu")
    ovsw = next(c for c in cfgs if c.method == "ovsw")
    assert recu.settings.lr == 0.05 and "published" in recu.track_note
    assert ovsw.settings.lr == 0.1 and "unified" in ovsw.track_note
    assert recu.epochs_overridden and recu.settings.epochs == 1 and recu.recipe_epochs == 3
    assert recu.name != dataclasses.replace(recu, seed=1).name
    assert recu.group == dataclasses.replace(recu, seed=1).group


class StopAfter(Progress):
    def __init__(self, epoch):
        self.stop = epoch

    def end_epoch(self, row):
        if row["epoch"] == self.stop:
            raise KeyboardInterrupt


def test_resume_continues_and_matches_uninterrupted(setup, tmp_path):
    make_recipe(setup["recipe"], epochs=3)
    args = build_parser().parse_args(["--methods", "ovsw", *map(str, run_args(setup))])
    cfg = plan(sweep_request(args))[0][0]
    a, b = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    for rd in (a, b):
        rd.create(cfg)
    train_run(cfg, a, torch.device("cpu"), setup["data"])
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, b, torch.device("cpu"), setup["data"], progress=StopAfter(1))
    assert not b.is_done() and len(b.read_metrics()) == 2
    seen = []

    class Record(Progress):
        def start_epoch(self, epoch, epochs, steps):
            seen.append(epoch)
    res = train_run(cfg, b, torch.device("cpu"), setup["data"], progress=Record())
    assert seen == [2] and res.epochs_run == 3
    sa = a.load_checkpoint()["model"]
    sb = b.load_checkpoint()["model"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ma, mb = a.read_metrics(), b.read_metrics()
    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("epoch_time", "images_per_s")} for r in rows]
    assert strip(ma) == strip(mb)


def test_bad_input_messages_without_traceback(setup, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(setup["recipe"].read_text().replace("batch_size: 50", "batch_sise: 50"))
    r = cli("--methods", "ovsw", "--recipe", bad, "--out", setup["out"])
    assert r.returncode == 2 and "batch_sise" in r.stdout and "did you mean 'batch_size'" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    r = cli("--methods", "ovsww", "--out", setup["out"])
    assert r.returncode == 2 and "did you mean 'ovsw'" in r.stdout and "Traceback" not in r.stderr
    r = cli("--methods", "ovsw", "--recipe", setup["recipe"], "--data-root", tmp_path / "missing",
            "--out", setup["out"])
    assert r.returncode == 2 and "--data-root" in r.stdout and "cifar-10-batches-py" in r.stdout
    assert "Traceback" not in r.stderr
    r = cli("--methods", "ovsw", *run_args(setup, "--set", "batch_size=5000"))
    assert r.returncode == 2 and "batch_size = 5000 is larger than the 400 training images" in r.stdout


def test_list_and_dry_run(setup):
    r = cli("--list")
    assert r.returncode == 0
    for name in (*METHODS.names(), "resnet18", "resnet34", "cresnet18", "cresnet20",
                 "vgg_small", "digits-cresnet20", "cifar10-cresnet20"):
        assert re.search(rf"^\s+{name}\s", r.stdout, re.MULTILINE), name
    r = cli("--methods", "all", *run_args(setup, "--seeds", "2", "--dry-run"))
    n = 2 * len(METHODS.names())   # every registered method, two seeds
    assert r.returncode == 0 and f"{n} runs: {n} to run" in r.stdout
    assert not (setup["out"] / "runs").exists()


def test_readme_plugin_example_runs(setup, tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- plugin-example -->\s*```python\n(.*?)```", readme, re.DOTALL)
    assert block, "README must hold the plugin example"
    plugin = tmp_path / "my_method.py"
    plugin.write_text(block.group(1))
    name = re.search(r'name = "(\w+)"', block.group(1)).group(1)
    r = cli("--plugin", plugin, "--methods", name, *run_args(setup, "--epochs", "1", "--set", "warmup_epochs=0"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"| {name}" in (setup["out"] / "leaderboard.md").read_text()
