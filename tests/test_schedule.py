"""The lr schedules are the formulas of bnnbench/engine/optim.py (cosine, linear, step, warmup)."""
import math

import pytest
import torch

from bnnbench.config.spec import settings_from
from bnnbench.engine.optim import lr_at, param_groups

BASE = {"lr": 0.1, "epochs": 600, "warmup_epochs": 5, "schedule": "cosine", "min_lr": 1e-5,
        "milestones": [], "lr_gamma": 0.1}


def test_ovsw_warmup_cosine():
    assert lr_at(settings_from(BASE), 0) == pytest.approx(0.1 * 1 / 5)
    assert lr_at(settings_from(BASE), 4) == pytest.approx(0.1)
    assert lr_at(settings_from(BASE), 5) == pytest.approx(0.1 + 1e-5)
    e = 300
    assert lr_at(settings_from(BASE), e) == pytest.approx(0.5 * (1 + math.cos(math.pi * (e - 5) / 595)) * 0.1 + 1e-5)
    assert lr_at(settings_from(BASE), 599) == pytest.approx(0.5 * (1 + math.cos(math.pi * 594 / 595)) * 0.1 + 1e-5)


def test_bireal_linear_and_step():
    tr = {**BASE, "schedule": "linear", "warmup_epochs": 0, "epochs": 256, "lr": 1e-3}
    assert lr_at(settings_from(tr), 0) == pytest.approx(1e-3 * (1 - 1 / 256))
    assert lr_at(settings_from(tr), 255) == pytest.approx(0.0)
    st = {**BASE, "schedule": "step", "warmup_epochs": 0, "milestones": [120, 200]}
    assert [lr_at(settings_from(st), e) for e in (0, 119, 120, 200)] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_per_iteration_warmup_is_continuous():
    tr = {**BASE, "warmup_epochs": 2}
    lrs = [lr_at(settings_from(tr), t / 10, 0.1) for t in range(20)]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(0.1 * 0.1 / 2) and lrs[-1] == pytest.approx(0.1)


def test_weight_decay_policies():
    model = torch.nn.Sequential()
    model.add_module("conv1", torch.nn.Conv2d(3, 4, 3, bias=False))
    model.add_module("bn1", torch.nn.BatchNorm2d(4))
    model.add_module("downsample", torch.nn.Conv2d(4, 4, 1, bias=False))
    model.add_module("fc", torch.nn.Linear(4, 2))
    def count(groups):
        return [sum(p.numel() for p in g["params"]) for g in groups]
    assert count(param_groups(model, 1e-4, "all")) == [108 + 8 + 16 + 10]
    assert count(param_groups(model, 1e-4, "no_1d")) == [108 + 16 + 8, 8 + 2]
    # ReCU ImageNet (its own rule, methods/recu.py): only names containing 'conv' or 'fc' (the FP downsample
    # conv gets none); a method without a by-name rule refuses the policy
    from bnnbench.errors import ConfigError
    from bnnbench.plugins import METHODS
    assert count(param_groups(model, 1e-4, "by_name", METHODS.get("recu")())) == [108 + 10, 8 + 16]
    with pytest.raises(ConfigError, match="by_name"):
        param_groups(model, 1e-4, "by_name", METHODS.get("ovsw")())


def test_a_method_declares_parameters_that_never_get_weight_decay():
    from bnnbench.plugins.method import Method

    class WithThreshold(Method):
        name = "with_threshold"
        no_decay = ("beta",)
    model = torch.nn.Module()
    model.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    model.conv.beta = torch.nn.Parameter(torch.zeros(4, 1, 1))  # per-channel, 3-D: decayed by no_1d otherwise
    for policy in ("all", "no_1d"):
        groups = param_groups(model, 1e-4, policy, WithThreshold())
        assert [sum(p.numel() for p in g["params"]) for g in groups] == [108, 4], policy


def test_a_method_lr_scale_gets_its_own_group_and_the_schedule_scales_it():
    """Method.lr_scale: RBONN's u trains at 0.1x the schedule's lr (its own group, wd as decided), every
    other parameter stays in the two usual groups; set_lr applies the factor at every step."""
    from bnnbench.config.spec import TrainSettings
    from bnnbench.engine.optim import make_optimizer, set_lr
    from bnnbench.plugins import METHODS
    from bnnbench.plugins.arch import build_model
    method = METHODS.get("rebnn")(overrides={"recurrent": True})
    model = build_model(method, "cresnet20", 10)
    opt = make_optimizer(model, TrainSettings(optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=2), method)
    us = {id(p) for n, p in model.named_parameters() if n.endswith(".u")}
    scaled = [g for g in opt.param_groups if "lr_scale" in g]
    assert len(scaled) == 1 and {id(p) for p in scaled[0]["params"]} == us and len(us) == 18
    assert scaled[0]["lr"] == pytest.approx(1e-4) and opt.param_groups[0]["lr"] == 1e-3
    set_lr(opt, 5e-4)
    assert scaled[0]["lr"] == pytest.approx(5e-5)
    assert all(g["lr"] == 5e-4 for g in opt.param_groups if g is not scaled[0])
    rebnn = METHODS.get("rebnn")()
    plain = make_optimizer(build_model(rebnn, "cresnet20", 10), TrainSettings(), rebnn)
    assert not any("lr_scale" in g for g in plain.param_groups)   # no u: the usual groups only
