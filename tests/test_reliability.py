"""Fault injection: kill -9, preemption signals, corrupt files, concurrent workers, NaN, bad input, disk."""
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TALLY, make_cifar, make_recipe

from bnnbench.cli.main import main
from bnnbench.store import RunDir, atomic_write_bytes

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def start(args, fault: str | None = None):
    """run_bench.py in a subprocess; ``fault`` = BNNBENCH_FAULT (bnnbench/faults.py), e.g. "step:5"."""
    env = {**ENV, "BNNBENCH_FAULT": fault} if fault else ENV
    return subprocess.Popen([sys.executable, str(ROOT / "run_bench.py"), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def env(tmp_path):
    data = make_cifar(tmp_path / "data")
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=4)
    def args(out, *methods, extra=()):
        return ["--methods", *(methods or ["ovsw"]), "--recipe", recipe, "--data-root", data, "--out", out,
                "--device", "cpu", *extra]
    return args, tmp_path


def only_run(out: Path) -> RunDir:
    (d,) = [p for p in (out / "runs").iterdir() if p.is_dir()]
    return RunDir(d)


def final_state(out: Path):
    rd = only_run(out)
    assert rd.is_done()
    metrics = [{k: v for k, v in r.items() if k not in ("epoch_time", "images_per_s")} for r in rd.read_metrics()]
    return rd.load_checkpoint()["model"], metrics


def assert_same(a, b):
    (ma, ra), (mb, rb) = a, b
    assert ra == rb
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k


@pytest.fixture
def reference(env):
    args, tmp = env
    p = start(args(tmp / "ref"))
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out
    return final_state(tmp / "ref")


STEPS_PER_EPOCH = 8  # the tiny recipe: 400 training images, batch 50


def kill9_cases(rng: random.Random) -> list[str]:
    """One kill -9 per fault point, in the order a run reaches them; occurrence numbers seeded."""
    return [
        f"step:{rng.randint(1, STEPS_PER_EPOCH - 1)}",      # mid-epoch, before any checkpoint
        "eval:1",                                            # during the first evaluation
        "write:checkpoint.pt:1",                             # checkpoint temp complete, not renamed
        "after_checkpoint:1",                                # checkpoint written, metrics row not yet
        f"write:metrics.jsonl:{rng.randint(2, 3)}",          # metrics rewrite of a later epoch
        f"step:{rng.randint(1, STEPS_PER_EPOCH - 1)}",      # mid-epoch after a resume
        "write:flips.pt:1",                                  # all epochs trained, flip masks half written
        "before_result:1",                                   # everything but result.json
        "write:result.json:1",                               # result.json temp complete, not renamed
        "after_result:1",                                    # result written, claim not released
    ]


def test_kill9_at_chosen_points_then_resume_matches(env, reference):
    args, tmp = env
    out = tmp / "killed"
    cases = kill9_cases(random.Random(1234))
    kills = 0
    for fault in cases:
        p = start(args(out), fault)
        log, _ = p.communicate(timeout=600)
        assert p.returncode == -signal.SIGKILL, (fault, log)  # the fault really landed
        kills += 1
    TALLY["faults injected"] += kills
    TALLY["kill -9 points"] += len({c.rsplit(":", 1)[0] for c in cases})
    assert kills == len(cases)
    assert only_run(out).file("lock").exists(), "the last kill left a claim behind"
    p = start(args(out))
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log
    assert_same(final_state(out), reference)
    rd = only_run(out)
    assert not list(rd.path.glob(".*.tmp")), "no half-written files are left behind"
    assert not rd.file("lock").exists(), "the dead worker's claim on the finished run is gone"


@pytest.mark.parametrize("method, extra", [("bop", ()), ("rebnn", ("--hp", "rebnn.recurrent=true"))],
                         ids=["bop", "rbonn"])
def test_kill9_of_a_method_with_state_across_steps_resumes_exactly(tmp_path, method, extra):
    """Bop's gradient average (optimizer state) and RBONN's previous gradient (buffers) survive a kill -9 in
    the middle of epoch 2: the resumed run ends with the uninterrupted run's weights and metrics."""
    data = make_cifar(tmp_path / "data")
    recipe = make_recipe(tmp_path / "tiny.yaml", epochs=2)

    def args(out):
        return ["--methods", method, "--recipe", recipe, "--data-root", data, "--out", out, "--device", "cpu",
                *extra]
    p = start(args(tmp_path / "ref"))
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log
    out = tmp_path / "killed"
    p = start(args(out), f"step:{STEPS_PER_EPOCH + 3}")  # epoch 2, after the epoch-1 checkpoint
    log, _ = p.communicate(timeout=600)
    assert p.returncode == -signal.SIGKILL, log
    assert only_run(out).load_checkpoint()["epoch"] == 0  # 0-based: epoch 1 done
    TALLY["faults injected"] += 1
    p = start(args(out))
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log
    assert_same(final_state(out), final_state(tmp_path / "ref"))


def test_preemption_signals_checkpoint_and_resume(env, reference):
    args, tmp = env
    out = tmp / "pre"
    rng = random.Random(7)
    cases = [f"step:{rng.randint(1, STEPS_PER_EPOCH - 1)}:{sig}" for sig in ("SIGTERM", "SIGUSR1", "SIGUSR2")]
    cases.append("eval:1:SIGTERM")  # a signal during evaluation: checkpoint after that epoch
    preemptions = 0
    for fault in cases:
        p = start(args(out), fault)
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 75 and "preempted" in log, (fault, log)
        assert not only_run(out).is_done()
        preemptions += 1
    TALLY["faults injected"] += preemptions
    assert preemptions == len(cases)
    partial = only_run(out).load_checkpoint()
    assert partial["partial"] is None and len(partial["history"]) >= 1  # the last one was at an epoch's end
    p = start(args(out))
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log
    assert_same(final_state(out), reference)


def test_corrupt_checkpoint_falls_back_to_previous(env, reference):
    args, tmp = env
    out = tmp / "corrupt"
    p = start(args(out))
    p.communicate(timeout=600)
    rd = only_run(out)
    data = bytearray(rd.file("checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF                      # one flipped byte
    rd.file("checkpoint.pt").write_bytes(bytes(data))
    rd.file("result.json").write_text(rd.file("result.json").read_text()[:40])  # truncated result
    TALLY["faults injected"] += 2
    assert not rd.is_done()
    p = start(args(out))
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log
    assert "checkpoint.pt is unreadable" in log.replace("\n", "") and "checksum mismatch" in log
    assert_same(final_state(out), reference)


def test_concurrent_workers_run_each_run_once(env):
    args, tmp = env
    out = tmp / "shared"
    methods = ("ovsw", "recu", "xnor")
    procs = [start(args(out, *methods)) for _ in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    started = [line for log in logs for line in log.splitlines() if " -> " in line]
    names = [line.rsplit("/", 1)[-1] for line in started]
    assert len(names) == 3 and len(set(names)) == 3, logs
    assert all(RunDir(d).is_done() for d in (out / "runs").iterdir())
    TALLY["faults injected"] += 1


def test_stale_lock_of_dead_worker_is_taken_over(env):
    args, tmp = env
    out = tmp / "stale"
    assert main([*map(str, args(out)), "--dry-run"]) == 0
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that no longer exists
    from bnnbench.runner import SweepRequest, plan
    recipe = args(out)[args(out).index("--recipe") + 1]
    cfg = plan(SweepRequest(methods=["ovsw"], recipe=str(recipe))).specs[0]
    rd = RunDir(out / "runs" / cfg.name)
    rd.path.mkdir(parents=True)
    import socket
    rd.file("lock").write_text(json.dumps({"pid": p.pid, "host": socket.gethostname(), "time": time.time()}))
    live = RunDir(out / "runs" / "other")
    live.path.mkdir()
    assert live.claim() and not live.claim()   # a live holder (this process) keeps its claim
    assert rd.claim()
    TALLY["faults injected"] += 1


NAN_PLUGIN = '''
import torch
from bnnbench.nn.layers import BinaryConv2d
from bnnbench.plugins.method import Method, register_method
from bnnbench.nn.surrogates import sign_ste

class NanConv(BinaryConv2d):
    def binarize_weight(self, w):
        return sign_ste(w) * float("nan")

@register_method
class NanMethod(Method):
    """Produces NaN outputs (test of failure handling)."""
    name = "nan_method"
    conv_class = NanConv
'''


def test_nan_loss_fails_that_run_and_the_sweep_goes_on(env):
    args, tmp = env
    plugin = tmp / "nan_plugin.py"
    plugin.write_text(NAN_PLUGIN)
    out = tmp / "nan"
    p = start([*args(out, "nan_method", "xnor"), "--plugin", plugin, "--epochs", "1", "--set", "warmup_epochs=0"])
    log, _ = p.communicate(timeout=600)
    TALLY["faults injected"] += 1
    assert p.returncode == 3, log
    results = {json.loads((d / "result.json").read_text())["method"]: json.loads((d / "result.json").read_text())
               for d in (out / "runs").iterdir()}
    assert results["nan_method"]["status"] == "failed" and "non-finite" in results["nan_method"]["reason"]
    assert results["xnor"]["status"] == "done"
    md = (out / "leaderboard.md").read_text()
    assert "nan_method" in md and "failed (seed 0: non-finite training loss" in md


def test_bad_inputs_fail_before_compute_with_one_message(env, capsys):
    args, tmp = env
    out = tmp / "bad"
    bad_plugin = tmp / "broken.py"
    bad_plugin.write_text("def f(:\n")
    dup_plugin = tmp / "dup.py"
    dup_plugin.write_text(NAN_PLUGIN.replace('"nan_method"', '"recu"'))
    file_not_dir = tmp / "a_file"
    file_not_dir.write_text("x")
    cases = [
        (["--methods", "ovsww"], "did you mean 'ovsw'"),
        (["--methods", "ovsw", "--archs", "resnet19"], "unknown architecture 'resnet19'"),
        (["--methods", "ovsw", "--recipe", "cifar10-resnet20"], "unknown recipe 'cifar10-resnet20'"),
        (["--methods", "ovsw", "--epochs", "0"], "--epochs 0"),
        (["--methods", "ovsw", "--seeds", "0"], "--seeds 0"),
        (["--methods", "ovsw", "--set", "lr=-1"], "lr = -1 is out of range"),
        (["--methods", "ovsw", "--set", "lrr=0.1"], "did you mean 'lr'"),
        (["--methods", "ovsw", "--set", "batch_size=many"], "batch_size = 'many' has the wrong type"),
        (["--methods", "ovsw", "--hp", "ovsw.delta=-x"], "must be a number"),
        (["--methods", "ovsw", "--hp", "ovsw.deltaa=0.1"], "did you mean 'delta'"),
        (["--methods", "ovsw", "--hp", "delta=0.1"], "METHOD.KEY=VALUE"),
        (["--methods", "ovsw", "--track", "papers"], "did you mean 'paper'"),
        (["--methods", "ovsw", "--device", "tpu"], "--device 'tpu'"),
        (["--methods", "ovsw", "--plugin", str(bad_plugin)], "syntax error at line 1"),
        (["--methods", "ovsw", "--plugin", str(dup_plugin)], "duplicate method name 'recu'"),
        (["--methods", "ovsw", "--plugin", str(tmp / "missing.py")], "no such file"),
    ]
    for extra, expected in cases:
        rc = main([*extra, "--out", str(out)])
        text = capsys.readouterr().out.replace("\n", "")
        assert rc == 2 and expected in text, (extra, text)
        TALLY["bad inputs tried"] += 1
    data_cases = [
        (["--data-root", str(tmp / "nowhere"), "--no-download"], "--data-root"),
        (["--set", "batch_size=100000"], "larger than the 400 training images"),
    ]
    base = [str(a) for a in args(out)]
    for extra, expected in data_cases:
        argv = base[:]
        if extra[0] == "--data-root":
            i = argv.index("--data-root")
            argv[i + 1] = extra[1]
            argv += extra[2:]
        else:
            argv += extra
        rc = main(argv)
        text = capsys.readouterr().out.replace("\n", "")
        assert rc == 2 and expected in text, (extra, text)
        TALLY["bad inputs tried"] += 1
    assert not (out / "runs").exists() or not any((out / "runs").iterdir()), "no compute was spent"
    rc = main([*base[:-4], "--out", str(file_not_dir / "out"), "--device", "cpu"])
    assert rc == 2 and "is not writable" in capsys.readouterr().out.replace("\n", "")
    TALLY["bad inputs tried"] += 1


def test_failed_atomic_write_leaves_no_half_file(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    target.write_text("old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new contents")
    TALLY["faults injected"] += 1
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
