"""The flip tracker on a hand-made sequence of weights with known flips."""
import pytest
import torch
from torch import nn

from bnnbench.engine.flips import FlipTracker
from bnnbench.plugins import METHODS


def make(values):
    method = METHODS.get("ovsw")()
    model = nn.Sequential(method.conv(1, 1, (1, 4)))  # 4 weights
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(values, dtype=torch.float32).view(1, 1, 1, 4))
    return model


def set_w(model, values):
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(values, dtype=torch.float32).view(1, 1, 1, 4))


def test_known_sequence():
    model = make([0.5, -0.5, 0.5, 0.5])
    tr = FlipTracker(model)
    # epoch 0: w1 flips and flips back (missed by per-epoch sampling), w2 flips once
    tr.start_epoch()
    for w in ([0.5, 0.5, 0.5, 0.5], [0.5, -0.5, -0.5, 0.5], [0.4, -0.4, -0.5, 0.6]):
        set_w(model, w)
        tr.step()
    s = tr.epoch_stats()
    assert s["silent"] == pytest.approx(2 / 4)        # w0, w3 never flipped
    assert s["flip_any"] == pytest.approx(2 / 4)      # w1 (and back), w2
    assert s["flip_net"] == pytest.approx(1 / 4)      # only w2 differs from the epoch start
    assert s["net_change"] == pytest.approx(1 / 4)
    # epoch 1: w2 flips back, w3 goes to exactly 0 (its own value)
    tr.start_epoch()
    set_w(model, [0.4, -0.4, 0.5, 0.0])
    tr.step()
    s = tr.epoch_stats()
    assert s["silent"] == pytest.approx(1 / 4)
    assert s["flip_any"] == pytest.approx(2 / 4)
    assert s["flip_net"] == pytest.approx(2 / 4)
    assert s["net_change"] == pytest.approx(1 / 4)    # w2 is back to its initial sign; w3 changed
    layer = next(iter(s["layers"].values()))
    assert layer["silent"] == pytest.approx(1 / 4)
    assert tr.never_flipped()["0"].flatten().tolist() == [True, False, False, False]


def test_effective_sign_is_tracked():
    # IR-Net's forward uses sign(W - mean W): a uniform shift flips signs although sign(W) does not change
    method = METHODS.get("irnet")()
    model = nn.Sequential(method.conv(1, 1, (1, 4)))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 4))
    tr = FlipTracker(model)
    tr.start_epoch()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0, 3.0, 9.0]).view(1, 1, 1, 4))   # mean 3.75
    tr.step()
    assert tr.epoch_stats()["flip_any"] == pytest.approx(1 / 4)  # the weight 3.0 went below the mean


def test_state_round_trip():
    model = make([0.5, -0.5, 0.5, 0.5])
    tr = FlipTracker(model)
    set_w(model, [-0.5, -0.5, 0.5, 0.5])
    tr.step()
    tr2 = FlipTracker(model)
    tr2.load_state_dict(tr.state_dict())
    assert tr2.epoch_stats() == tr.epoch_stats()


@pytest.mark.parametrize("mode,tracked", [("all", True), ("activations", False), ("none", False)])
def test_only_layers_with_binary_weights_are_tracked(mode, tracked):
    method = METHODS.get("ovsw")()
    model = nn.Sequential(method.conv(1, 1, (1, 4)), method.conv(1, 1, (1, 1)))
    method.set_binarize(model, mode)
    tr = FlipTracker(model)
    set_w(model, [-0.5, 0.5, 0.5, 0.5])
    tr.step()
    stats = tr.epoch_stats()
    assert (stats["silent"] is not None) == tracked and bool(tr.never_flipped()) == tracked
    if not tracked:   # real-valued weights: nothing to stay silent, no figure rather than a meaningless one
        assert stats == {"silent": None, "flip_any": None, "flip_net": None, "net_change": None, "layers": {}}
