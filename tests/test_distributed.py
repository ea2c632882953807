"""torchrun with 2 processes on gloo.

What holds, and is tested: one writer; the averaged gradient and the optimizer step equal the
single-process ones with the same global batch (for a backbone without batch-coupled layers: BatchNorm
statistics are per rank in DDP), so after one step weights and metrics agree to float tolerance. Over
many steps the two runs are not bit-identical: the all-reduce sums in another order, and a latent weight
within rounding distance of zero can then take the other sign, which a binary network amplifies.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, make_cifar

from bnnbench.store import RunDir

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")]

NOBN_ARCH = '''
from torch import nn
from bnnbench.arch import ArchSpec, register_arch

class NoBN(nn.Module):
    def __init__(self, method, num_classes, in_channels=3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.conv1 = method.conv(8, 8, 3, padding=1)
        self.conv2 = method.conv(8, 8, 3, stride=2, padding=1)
        self.act = nn.Hardtanh()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))

register_arch(ArchSpec(name="nobn_test", build=NoBN, family="cifar", input_size=(3, 32, 32),
                       description="test net without BatchNorm", scope="conv1, conv2"))
'''

RECIPE = """\
name: nobn
dataset: cifar10
backbone: nobn_test
train: {epochs: 1, batch_size: 50, train_subset: 50, eval_batch_size: 200, lr: 0.1, weight_decay: 5.0e-4,
        warmup_epochs: 0,
        augment: cifar, normalize: dataset, seed: 0, amp: false}
"""


def test_torchrun_two_processes_match_one(tmp_path):
    data = make_cifar(tmp_path / "data")
    plugin = tmp_path / "nobn_arch.py"
    plugin.write_text(NOBN_ARCH)
    recipe = tmp_path / "nobn.yaml"
    recipe.write_text(RECIPE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    common = ["--plugin", str(plugin), "--methods", "ovsw", "--recipe", str(recipe), "--data-root", str(data),
              "--device", "cpu"]
    one = subprocess.run([sys.executable, "run_bench.py", *common, "--out", str(tmp_path / "one")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "run_bench.py", *common, "--out", str(tmp_path / "two")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count(" -> ") == 1, "only rank 0 reports"
    (d1,) = (tmp_path / "one" / "runs").iterdir()
    (d2,) = (tmp_path / "two" / "runs").iterdir()
    assert d1.name == d2.name  # the same run: the process count does not change what is computed
    r1, r2 = RunDir(d1), RunDir(d2)
    res2 = json.loads((d2 / "result.json").read_text())
    assert res2["processes"] == 2 and res2["status"] == "done"
    assert len(r2.read_metrics()) == 1 and not list(d2.glob(".*.tmp"))
    for a, b in zip(r1.read_metrics(), r2.read_metrics()):
        for key in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "silent", "flip_any"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), key
    s1, s2 = r1.load_checkpoint()["model"], r2.load_checkpoint()["model"]
    for k in s1:
        assert torch.allclose(s1[k].float(), s2[k].float(), rtol=1e-5, atol=1e-6), k


def test_torchrun_full_run_with_batchnorm_backbone(tmp_path):
    from conftest import make_recipe
    data = make_cifar(tmp_path / "data")
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "run_bench.py", "--methods", "ovsw", "--recipe", str(recipe), "--data-root", str(data),
                        "--device", "cpu", "--out", str(tmp_path / "out")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (d,) = (tmp_path / "out" / "runs").iterdir()
    res = json.loads((d / "result.json").read_text())
    assert res["status"] == "done" and res["processes"] == 2 and res["epochs_run"] == 2
    assert [m["epoch"] for m in RunDir(d).read_metrics()] == [0, 1]
    assert (tmp_path / "out" / "leaderboard.md").read_text().count("| ovsw") == 1


def test_torchrun_preempted_run_resumes_to_the_same_weights(tmp_path):
    data = make_cifar(tmp_path / "data")
    plugin = tmp_path / "nobn_arch.py"
    plugin.write_text(NOBN_ARCH)
    recipe = tmp_path / "nobn.yaml"
    recipe.write_text(RECIPE.replace("epochs: 1, batch_size: 50, train_subset: 50", "epochs: 6, batch_size: 50"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def cmd(out):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "run_bench.py", "--plugin", str(plugin), "--methods", "ovsw", "--recipe", str(recipe),
                "--data-root", str(data), "--device", "cpu", "--out", str(out)]
    ref = subprocess.run(cmd(tmp_path / "ref"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    # like Slurm, every process of the job gets SIGTERM: each rank sends it to itself at its 12th step
    # (epoch 2, step 4 of 8), placed by progress (bnnbench/faults.py), not by time
    faulty = {**env, "BNNBENCH_FAULT": "step:12:SIGTERM"}
    p = subprocess.run(cmd(tmp_path / "pre"), cwd=ROOT, env=faulty, capture_output=True, text=True, timeout=600)
    log = p.stdout + p.stderr
    (metrics,) = (tmp_path / "pre" / "runs").glob("*/metrics.jsonl")
    assert "checkpointed" in log and "at epoch 2, step 4/8" in log, log
    d = metrics.parent
    assert p.returncode != 0 and "preempted" in log, log
    assert not RunDir(d).is_done() and len(RunDir(d).read_metrics()) == 1
    again = subprocess.run(cmd(tmp_path / "pre"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    (r,) = (tmp_path / "ref" / "runs").iterdir()
    a, b = RunDir(r).load_checkpoint()["model"], RunDir(d).load_checkpoint()["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = ("epoch_time", "images_per_s")
    ma = [{k: v for k, v in m.items() if k not in strip} for m in RunDir(r).read_metrics()]
    mb = [{k: v for k, v in m.items() if k not in strip} for m in RunDir(d).read_metrics()]
    assert ma == mb
