"""Op and size counts against hand counts (convention in bnnbench/nn/ops.py)."""
import pytest

from bnnbench.nn.ops import count_ops
from bnnbench.plugins import METHODS
from bnnbench.plugins.arch import build_model


def conv_macs(cin, cout, k, hw_out):
    return cin * cout * k * k * hw_out * hw_out


def test_cresnet20_hand_count():
    c = count_ops(build_model(METHODS.get("ovsw")(), "cresnet20", 10), (3, 32, 32))
    binary = (6 * conv_macs(16, 16, 3, 32)
              + conv_macs(16, 32, 3, 16) + 5 * conv_macs(32, 32, 3, 16)
              + conv_macs(32, 64, 3, 8) + 5 * conv_macs(64, 64, 3, 8))
    fp = conv_macs(3, 16, 3, 32) + 64 * 10
    assert c.binary_macs == binary == 40_108_032
    assert c.fp_macs == fp
    assert c.ops == fp + binary / 64
    assert c.packed_bytes == (267_264 + 32 * (269_850 - 267_264)) / 8


def test_resnet18_hand_count_matches_bireal_table():
    c = count_ops(build_model(METHODS.get("ovsw")(), "resnet18", 1000), (3, 224, 224))
    binary = (4 * conv_macs(64, 64, 3, 56)
              + conv_macs(64, 128, 3, 28) + 3 * conv_macs(128, 128, 3, 28)
              + conv_macs(128, 256, 3, 14) + 3 * conv_macs(256, 256, 3, 14)
              + conv_macs(256, 512, 3, 7) + 3 * conv_macs(512, 512, 3, 7))
    fp = (conv_macs(3, 64, 7, 112) + conv_macs(64, 128, 1, 28) + conv_macs(128, 256, 1, 14)
          + conv_macs(256, 512, 1, 7) + 512 * 1000)
    assert c.bops == binary
    assert c.flops == fp
    assert c.bops == pytest.approx(1.68e9, rel=0.005)   # Bi-Real Net: 1.68e9 BOPs
    assert c.flops == pytest.approx(1.39e8, rel=0.01)   # Bi-Real Net: 1.39e8 FLOPs
    assert c.params == 11_690_536 and c.binary_params == 10_985_472
