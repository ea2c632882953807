"""Runs that depend on runs (bnnbench/runner/stages.py), stage binarisation, and distillation
(bnnbench/engine/distill.py)."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT

from bnnbench.cli.main import build_parser, sweep_request
from bnnbench.errors import ConfigError
from bnnbench.runner import plan
from bnnbench.store import RunDir

RECIPE = "digits-cresnet20-twostage"
TINY = ["--epochs", "2", "--set", "train_subset=320", "warmup_epochs=0"]   # 5 steps per epoch


def specs(*extra):
    argv = ["--methods", "ovsw", "recu", "--recipe", RECIPE, "--device", "cpu", *extra]
    return plan(sweep_request(build_parser().parse_args(argv)))[0]


def test_dependencies_come_first_and_are_part_of_the_identity():
    runs = specs(*TINY)
    assert [s.stage for s in runs] == ["teacher", "stage1", "stage2"] * 2
    teacher, s1, s2 = runs[:3]
    assert teacher.settings.binarize == "none" and teacher.settings.distill_weight == 0
    assert s1.settings.binarize == "activations" and s1.teacher == {"run": teacher.hash, "name": teacher.name,
                                                                    "group": teacher.group}
    assert s2.settings.binarize == "all" and s2.init_from == {"run": s1.hash, "name": s1.name, "group": s1.group}
    assert s2.identity()["init_from"] == f"run:{s1.hash}" and s2.identity()["teacher"] == teacher.hash
    assert all(s.settings.epochs == 2 for s in runs)         # --epochs wins over a stage's own
    other = specs("--epochs", "3", "--set", "train_subset=320", "warmup_epochs=0")
    assert other[2].init_from["run"] != s2.init_from["run"] and other[2].hash != s2.hash


def test_scoped_sets_change_only_their_stage_or_the_teacher():
    base = specs(*TINY)
    runs = specs(*TINY, "teacher.epochs=5", "stage2.lr=0.01")
    teacher, s1, s2 = runs[:3]
    assert (teacher.settings.epochs, s1.settings.epochs, s2.settings.epochs) == (5, 2, 2)
    assert (teacher.settings.lr, s1.settings.lr, s2.settings.lr) == (base[0].settings.lr, base[1].settings.lr, 0.01)
    assert teacher.changes["epochs"] == 5 and s2.changes["lr"] == 0.01 and "lr" not in s1.changes
    # the runs that depend on a changed run list that change, prefixed: their labels tell them apart
    assert s1.changes["teacher.epochs"] == 5 and s2.changes["teacher.epochs"] == 5
    assert s2.label == "ovsw@stage2[lr=0.01,teacher.epochs=5,train_subset=320,warmup_epochs=0]"
    assert "stage2.lr" not in s1.changes and "teacher.epochs" not in teacher.changes
    init_only = specs(*TINY, "stage1.lr=0.02", "stage1.distill_weight=0")
    assert init_only[1].changes["lr"] == 0.02 and init_only[2].changes["stage1.lr"] == 0.02
    assert not init_only[1].teacher and "stage1.distill_weight" in init_only[2].changes
    assert s1.teacher["run"] == teacher.hash != base[0].hash      # a longer teacher is another dependency
    assert [(s.stage, s.settings.epochs) for s in runs[3:]] == [("teacher", 5), ("stage1", 2), ("stage2", 2)]


def test_a_stage_name_with_a_dot_is_a_scope():
    from bnnbench.runner.stages import split_scoped
    stages = [{"name": "s.1", "train": {}, "init": None}, {"name": "s", "train": {}, "init": None}]
    plain, scoped = split_scoped([("lr", 0.1), ("s.1.lr", 0.2), ("s.lr", 0.3)], stages, None, "recipe r")
    assert plain == [("lr", 0.1)] and scoped == {"s.1": {"lr": 0.2}, "s": {"lr": 0.3}}


def test_a_scoped_distill_weight_alone_brings_the_teacher():
    runs = specs(*TINY, "distill_weight=0", "stage2.distill_weight=1.0")
    assert [s.stage for s in runs] == ["teacher", "stage1", "stage2"] * 2
    assert not runs[1].teacher and runs[2].teacher["run"] == runs[0].hash
    none = specs(*TINY, "distill_weight=0")
    assert [s.stage for s in none] == ["stage1", "stage2"] * 2 and not any(s.teacher for s in none)


@pytest.mark.parametrize("extra,message", [
    (["stage3.lr=0.1"], "'stage3' is not a stage or teacher"),
    (["ovsw.delta=0.1"], "use --hp ovsw.delta=0.1"),
    (["teacher.binarize=all"], "always a full-precision run"),
    (["teacher.method_hparams=1"], "use --hp"),
    (["stage1.epochs=0"], "stage stage1 and --set stage1.epochs"),
])
def test_bad_scoped_sets_are_refused(extra, message):
    with pytest.raises(ConfigError, match=message):
        specs(*TINY, *extra)


def test_the_seeds_of_a_stage_share_one_group_and_old_references_get_it_on_read(tmp_path):
    runs = specs(*TINY, "--seeds", "2", "--methods", "ovsw")
    by_stage = {}
    for s in runs:
        by_stage.setdefault(s.stage, []).append(s)
    for stage, (a, b) in by_stage.items():   # seed 0 and 1 of each stage: one leaderboard row, two runs
        assert a.group == b.group and a.hash != b.hash, stage
    # a run written when references were {"run", "name"} only: its group comes from the dependency's config
    t, s1 = by_stage["teacher"][0], by_stage["stage1"][0]
    for spec in (t, dataclasses.replace(s1, teacher={"run": t.hash, "name": t.name})):
        d = RunDir(tmp_path / spec.name)
        d.path.mkdir()
        d.file("config.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    old = RunDir(tmp_path / s1.name).read_spec()
    assert old.teacher["group"] == t.group and old.group == s1.group and old.hash == s1.hash


@pytest.mark.parametrize("name", ["../elsewhere", "/abs/run", "a/b", "..", ""])
def test_a_dependency_name_that_is_not_a_run_directory_is_refused(tmp_path, name):
    from bnnbench.errors import RunError
    from bnnbench.store import dependency_dir, finished_dependency
    with pytest.raises(RunError, match="not a run directory name"):
        dependency_dir(tmp_path, {"run": "abc", "name": name})
    with pytest.raises(RunError, match="not a run directory name"):
        finished_dependency(tmp_path, {"run": "abc", "name": name}, "init")


@pytest.mark.parametrize("doc,message", [
    ({"stages": [{"name": "b", "init": "a"}]}, "must name an earlier stage"),
    ({"stages": [{"name": "a", "train": {"distill_weight": 1.0}}]}, "needs a teacher section"),
    ({"stages": [{"name": "teacher"}]}, "not 'teacher'"),
    ({"teacher": {"torchvision": 3}}, "model name"),
])
def test_bad_stage_sections_are_refused(tmp_path, doc, message):
    base = yaml.safe_load((ROOT / "recipes" / f"{RECIPE}.yaml").read_text())
    base.pop("stages"), base.pop("teacher")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**base, **doc}))
    with pytest.raises(ConfigError, match=message):
        plan(sweep_request(build_parser().parse_args(["--methods", "ovsw", "--recipe", str(path), "--device", "cpu"])))


def test_stage_binarisation_modes():
    from bnnbench.plugins import METHODS
    m = METHODS.get("recu")()
    conv = m.conv(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    for mode, ref in (("none", lambda: conv._conv_forward(x, conv.weight, None)),
                      ("activations", lambda: conv._conv_forward(torch.sign(x), conv.weight, None))):
        wrapper = torch.nn.Sequential(conv)
        m.set_binarize(wrapper, mode)
        assert torch.equal(conv(x), ref())
        with pytest.raises(ValueError, match="no 1-bit form"):
            conv.inference_form()
    m.set_binarize(torch.nn.Sequential(conv), "all")
    conv.inference_form()


def test_soft_cross_entropy_and_the_mixed_loss():
    from bnnbench.engine.distill import DistillationLoss, soft_cross_entropy
    s, t = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    p = torch.softmax(t / 2, 1)
    ref = -(p * torch.log_softmax(s / 2, 1)).sum()
    assert torch.allclose(soft_cross_entropy(s, t, 2.0), ref)
    teacher = torch.nn.Linear(3, 3)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    out = torch.randn(4, 3)
    ce = torch.nn.CrossEntropyLoss()
    loss = DistillationLoss(ce, teacher, 0.25, 2.0)(out, y, x)
    expect = 0.75 * ce(out, y) + 0.25 * 4.0 * soft_cross_entropy(out, teacher(x).detach(), 2.0)
    assert torch.allclose(loss, expect) and "teacher" not in dict(DistillationLoss(ce, teacher, 1, 1).named_modules())


def test_a_stage_whose_dependency_is_not_done_fails_without_training(tmp_path):
    from bnnbench.engine import run_or_fail
    s2 = specs(*TINY)[2]
    rd = RunDir(tmp_path / "runs" / s2.name)
    rd.path.mkdir(parents=True)
    res = run_or_fail(s2, rd, torch.device("cpu"), ROOT / "data")
    assert res.status == "failed" and "teacher run" in res.reason and "not done (missing" in res.reason
    assert not rd.file("checkpoint.pt").exists()


def _sweep(out, fault=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"BNNBENCH_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "--recipe", RECIPE, "--methods", "ovsw",
                           *TINY, "--device", "cpu", "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_two_stage_kd_sweep_killed_in_stage2_resumes_to_the_same_weights(tmp_path):
    ref = _sweep(tmp_path / "ref")
    assert ref.returncode == 0, ref.stdout + ref.stderr
    # teacher 10 steps, stage 1 10, then stage 2: kill -9 at its 8th step (epoch 2, after its first checkpoint)
    killed = _sweep(tmp_path / "cut", fault="step:28")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    again = _sweep(tmp_path / "cut")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 already done" in again.stdout
    runs = {RunDir(d).read_spec().stage: RunDir(d) for d in (tmp_path / "ref" / "runs").iterdir()}
    cut = {RunDir(d).read_spec().stage: RunDir(d) for d in (tmp_path / "cut" / "runs").iterdir()}
    assert set(runs) == set(cut) == {"teacher", "stage1", "stage2"}
    a, b = runs["stage2"].load_checkpoint()["model"], cut["stage2"].load_checkpoint()["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    init = json.loads(cut["stage2"].file("init.json").read_text())
    assert init["run"] == cut["stage1"].read_spec().hash and init["loaded"] > 0
    assert json.loads(runs["stage2"].file("result.json").read_text())["status"] == "done"


def test_a_torchvision_teacher_without_its_weights_is_one_clear_error(tmp_path, monkeypatch):
    import urllib.error

    from bnnbench.engine.distill import torchvision_teacher
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **kw):
        raise urllib.error.URLError("no network")
    import torchvision.models._api as api
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)   # what WeightsEnum.get_state_dict calls
    with pytest.raises(ConfigError, match="resnet34-b627a593.pth") as info:
        torchvision_teacher("resnet34", 1000)
    assert str(tmp_path) in str(info.value) and "teacher run" in str(info.value)
    with pytest.raises(ConfigError, match="1000 ImageNet classes"):
        torchvision_teacher("resnet34", 10)


def test_a_timm_teacher_loads_from_the_local_cache_and_its_absence_is_one_clear_error(tmp_path, monkeypatch):
    """teacher: {timm: NAME}: the recipe and the run's identity name it; the weights come from the Hugging Face
    cache only (nothing is downloaded); absent weights, a wrong class count or an unknown name are one error."""
    timm = pytest.importorskip("timm", reason="timm not installed (pip install 'bnnbench[timm]')")
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from bnnbench.config.recipes import parse_teacher
    from bnnbench.engine.distill import timm_teacher
    name = "test_resnet.r160_in1k"   # one of timm's tiny test models (0.5 M parameters)
    assert parse_teacher({"timm": name}, "recipe x") == {"timm": name}
    with pytest.raises(ConfigError, match="teacher.timm must be a model name"):
        parse_teacher({"timm": 3}, "recipe x")
    with pytest.raises(ConfigError, match="torchvision: MODEL} or {timm: MODEL}"):
        parse_teacher({"timm": name, "torchvision": "resnet34"}, "recipe x")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="not in the local cache") as info:
        timm_teacher(name, 1000)
    assert str(tmp_path / "hub") in str(info.value) and "timm/test_resnet.r160_in1k" in str(info.value)
    torch.manual_seed(3)
    trained = timm.create_model(name, pretrained=False)
    repo = tmp_path / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()},
              str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    teacher = timm_teacher(name, 1000)
    for k, v in trained.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v), k
    with pytest.raises(ConfigError, match="1000 classes; this dataset has 10"):
        timm_teacher(name, 10)
    with pytest.raises(ConfigError, match="timm.list_pretrained"):
        timm_teacher("no_such_model_xyz", 1000)
