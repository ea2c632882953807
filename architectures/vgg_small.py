"""VGG-Small "VGGSmall_1w1a" (the IR-Net / ReCU ``vgg_small_1w1a``).

    conv0 FP 3->128 -> BN -> Hardtanh
    conv1 bin 128->128 -> MaxPool2 -> BN -> Hardtanh
    conv2 bin 128->256 -> BN -> Hardtanh
    conv3 bin 256->256 -> MaxPool2 -> BN -> Hardtanh
    conv4 bin 256->512 -> BN -> Hardtanh
    conv5 bin 512->512 -> MaxPool2 -> BN -> Act5
    flatten (512*4*4) -> FP Linear(8192 -> classes)
Act5: Hardtanh by default (ReCU and IR-Net; 4,660,106 params for 10 classes) or PReLU(512) as in OvSW
(``head_act: prelu``; 4,660,618 params). 4,571,136 binary weights either way. No dropout, no conv bias.
Init (all three reference codes): convs ~ N(0, 2 / (k^2 * C_out)) including the binary ones, BN 1/0,
Linear ~ N(0, 0.01) with bias 0.
"""
from __future__ import annotations

import math

from torch import Tensor, nn

from bnnbench.errors import ConfigError
from bnnbench.plugins import ArchSpec, Method, register_arch


class VGGSmall(nn.Module):
    def __init__(self, method: Method, num_classes: int, in_channels: int = 3, head_act: str = "hardtanh"):
        super().__init__()
        if head_act not in ("hardtanh", "prelu"):
            raise ConfigError(f"vgg_small option head_act = {head_act!r} is not allowed; "
                              f"use 'hardtanh' (ReCU/IR-Net) or 'prelu' (OvSW)")
        self.conv0 = nn.Conv2d(in_channels, 128, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(128)
        self.conv1 = method.conv(128, 128, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(128)
        self.conv2 = method.conv(128, 256, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(256)
        self.conv3 = method.conv(256, 256, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(256)
        self.conv4 = method.conv(256, 512, 3, padding=1)
        self.bn4 = nn.BatchNorm2d(512)
        self.conv5 = method.conv(512, 512, 3, padding=1)
        self.bn5 = nn.BatchNorm2d(512)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.Hardtanh(inplace=True)
        self.act5 = nn.PReLU(512) if head_act == "prelu" else nn.Hardtanh(inplace=True)
        self.fc = nn.Linear(512 * 4 * 4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn0(self.conv0(x)))
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.pool(self.conv3(x))))
        x = self.act(self.bn4(self.conv4(x)))
        x = self.act5(self.bn5(self.pool(self.conv5(x))))
        return self.fc(x.flatten(1))


register_arch(ArchSpec(
    name="vgg_small", build=VGGSmall, family="cifar", input_size=(3, 32, 32),
    description="VGG-Small 1W1A (pool before BN; Hardtanh or PReLU last activation)",
    scope="5 binary 3x3 convs (conv1-conv5); FP: conv0, BN layers, the last activation and the fc head",
    options={"head_act": "hardtanh"}))
