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
from bnnbench.plugins.arch import ArchSpec, register_arch

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
    recipe.write_text(RECIPE.replace("epochs: 1, batch_size: 50, train_subset: 50", "epochs: 2, batch_size: 10"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def cmd(out):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "run_bench.py", "--plugin", str(plugin), "--methods", "ovsw", "--recipe", str(recipe),
                "--data-root", str(data), "--device", "cpu", "--out", str(out)]
    ref = subprocess.run(cmd(tmp_path / "ref"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    # like Slurm, every process of the job gets SIGTERM: each rank sends it to itself at its 12th step (of
    # 40 per epoch), placed by progress (bnnbench/faults.py), not by time; the ranks agree to stop at the
    # next check of the preemption flag, step 25 (distributed.CHECK_EVERY)
    faulty = {**env, "BNNBENCH_FAULT": "step:12:SIGTERM"}
    p = subprocess.run(cmd(tmp_path / "pre"), cwd=ROOT, env=faulty, capture_output=True, text=True, timeout=600)
    log = p.stdout + p.stderr
    (d,) = (tmp_path / "pre" / "runs").iterdir()
    assert "checkpointed" in log and "at epoch 1, step 25/40" in log, log
    assert p.returncode != 0 and "preempted" in log, log
    assert not RunDir(d).is_done() and len(RunDir(d).read_metrics()) == 0
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


def _replica_worker(rank: int, world: int, port: int, out) -> None:
    import torch.distributed as dist
    from torch import nn

    from bnnbench.engine import distributed as ddp
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        torch.manual_seed(0)
        net[0].reset_parameters()
        net[1].running_mean.fill_(float(rank))          # per-rank statistics: averaged, not an error
        net[1].running_var.fill_(1.0 + 2 * rank)
        ddp.average_bn_stats(net)
        ddp.check_replicas(net, "same")
        result = {"mean": net[1].running_mean.tolist(), "var": net[1].running_var.tolist()}
        net.register_buffer("tracker", torch.full((3,), float(rank)))   # diverging per-rank state
        try:
            ddp.check_replicas(net, "run X")
        except RuntimeError as exc:
            result["error"] = str(exc)
        out.put((rank, result))
    finally:
        dist.destroy_process_group()


def test_replicas_average_bn_statistics_and_refuse_diverging_buffers():
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_replica_worker, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for r in (0, 1):
        assert results[r]["mean"] == [0.5, 0.5] and results[r]["var"] == [2.0, 2.0]
    assert "'tracker' differs between rank 0 and rank 1" in results[1]["error"]
    assert "run X" in results[1]["error"] and "broadcast_buffers=False" in results[1]["error"]
