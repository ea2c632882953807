"""Every registered method x backbone (enumerated from the registries) builds and trains a step."""
import pytest
import torch

from bnnbench.config.spec import TrainSettings
from bnnbench.engine import train_step
from bnnbench.engine.optim import CompositeOptimizer, make_optimizer
from bnnbench.nn.layers import binary_layers
from bnnbench.plugins import ARCHITECTURES, METHODS
from bnnbench.plugins.arch import build_model

PAIRS = [(m, a) for m in METHODS.names() for a in ARCHITECTURES.names()]


@pytest.mark.parametrize("method,arch", PAIRS)
def test_build_forward_backward_step(method, arch):
    spec = ARCHITECTURES.get(arch)
    m = METHODS.get(method)(family=spec.family)
    model = build_model(m, arch, num_classes=10)
    assert binary_layers(model), "a backbone must have binary layers"
    size = spec.test_input_size or spec.input_size
    x, y = torch.randn(2, *size), torch.tensor([1, 7])
    m.on_epoch_start(model, 0, 10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    st = TrainSettings(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, epochs=10)
    opt = make_optimizer(model, st, m, steps_per_epoch=1)   # the method's optimizer seam included (Bop)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss, out = train_step(model, x, y, torch.nn.CrossEntropyLoss(), opt, scaler, m, use_amp=False)
    assert out.shape == (2, 10) and torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    if isinstance(opt, CompositeOptimizer):   # a method's own rule (Bop) moved its state; flips may need more steps
        assert opt.own.state and all(torch.isfinite(t).all() for st in opt.own.state.values() for t in st.values())
        assert changed
    else:
        assert any(n.endswith("weight") and "conv" in n for n in changed)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


PARAMS = {  # each backbone's parameter count (methods without extra parameters)
    ("resnet18", 1000, ()): (11_690_536, 10_985_472),
    ("resnet34", 1000, ()): (21_798_696, 21_086_208),
    ("reactnet18", 1000, ()): (11_704_424, 10_985_472),  # architectures/reactnet.py: counted by hand there
    ("cresnet20", 10, ()): (269_850, 267_264),
    ("cresnet18", 10, ()): (11_174_986, 10_985_472),
    ("vgg_small", 10, (("head_act", "prelu"),)): (4_660_618, 4_571_136),
    ("vgg_small", 10, ()): (4_660_106, 4_571_136),
}


@pytest.mark.parametrize("key", list(PARAMS))
def test_parameter_totals_match_spec(key):
    arch, classes, options = key
    model = build_model(METHODS.get("ovsw")(), arch, classes, options=dict(options))
    total = sum(p.numel() for p in model.parameters())
    binary = sum(m.weight.numel() for _, m in binary_layers(model))
    assert (total, binary) == PARAMS[key]


def test_imagenet_bn_init_and_fp_layers():
    model = build_model(METHODS.get("recu")(), "resnet18", 1000)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1e-8) and torch.all(b.bias == 0) for b in bns)
    assert not isinstance(model.conv1, type(model.layer1[0].conv1))
    assert type(model.layer2[0].downsample[0]) is torch.nn.Conv2d


def test_unknown_backbone_option_is_an_error():
    from bnnbench.errors import ConfigError
    with pytest.raises(ConfigError, match="head_act"):
        build_model(METHODS.get("ovsw")(), "vgg_small", 10, options={"head_actt": "prelu"})
    with pytest.raises(ConfigError, match="'hardtanh'"):
        build_model(METHODS.get("ovsw")(), "vgg_small", 10, options={"head_act": "relu"})
