"""CIFAR ResNet-20 "cResNet20_1w1a" (OvSW = ReCU variant: the authors' ``resnet20_1w1a``).

Stem (FP): conv 3x3 3->16 -> BN -> Hardtanh. Three stages of three blocks, widths 16/32/64, strides 1/2/2;
Bi-Real-style block with two residuals:
    h = Hardtanh(BN1(BinConv1_s(x)) + S(x)),   o = Hardtanh(BN2(BinConv2(h)) + h)
S = identity, or when downsampling AvgPool2d(2) then zero-pad the channels by C_out/4 on each side
(parameter free; IR-Net's "option A" subsamples x[:, :, ::2, ::2] instead: ``shortcut: subsample``).
Head: global avg pool -> BN1d(64) -> Linear(64 -> classes).
Init: binary convs kaiming_normal (fan_in, gain sqrt 2), stem conv PyTorch default (OvSW), BN default.
Params: 269,850 (267,264 binary: 18 binary 3x3 convs).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bnnbench.errors import ConfigError
from bnnbench.plugins import ArchSpec, Method, kaiming_binary_init, register_arch


class PadShortcut(nn.Module):
    """Parameter-free shortcut: halve the resolution (average or subsample), zero-pad channels."""

    def __init__(self, pad: int, mode: str):
        super().__init__()
        self.pad, self.mode = pad, mode

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(x, 2) if self.mode == "avgpool" else x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))


class Block(nn.Module):
    def __init__(self, method: Method, in_planes: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = method.conv(in_planes, planes, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = method.conv(planes, planes, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut((planes - in_planes) // 2, shortcut)
        self.act1 = method.activation(planes)  # between binary convs: the method decides (default Hardtanh)
        self.act2 = method.activation(planes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(h)) + h)


class CResNet20(nn.Module):
    def __init__(self, method: Method, num_classes: int, in_channels: int = 3, shortcut: str = "avgpool"):
        super().__init__()
        if shortcut not in ("avgpool", "subsample"):
            raise ConfigError(f"cresnet20 option shortcut = {shortcut!r} is not allowed; "
                              f"use 'avgpool' (OvSW/ReCU) or 'subsample' (IR-Net option A)")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = nn.Hardtanh(inplace=True)
        stages, in_planes = [], 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(3):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(Block(method, in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(64)
        self.fc = nn.Linear(64, num_classes)
        kaiming_binary_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.bn2(self.pool(x).flatten(1)))


register_arch(ArchSpec(
    name="cresnet20", build=CResNet20, family="cifar", input_size=(3, 32, 32),
    description="CIFAR ResNet-20 1W1A (Bi-Real-style blocks, parameter-free shortcut)",
    scope="18 binary 3x3 convs; FP: 3x3 stem conv, BN layers and the fc head",
    options={"shortcut": "avgpool"}))
