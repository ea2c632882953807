"""CIFAR ResNet-18 "cResNet18_1w1a", IR-Net variant (the authors' ``resnet18_1w1a``).

Three variants exist (OvSW: binary 1x1 shortcut; ReCU: parameter-free shortcut; IR-Net: FP 1x1 shortcut).
bnnbench fixes **one** for every method: the FP 1x1 conv + BN downsample of IR-Net, the same convention
the ImageNet ResNets use in all reference codes (FP downsample), so a CIFAR-18 result and an ImageNet
result binarise the same kinds of layers. Numbers published with OvSW's binary shortcut or ReCU's
parameter-free one are therefore not exactly comparable (the leaderboard says so in its notes).

Stem (FP): conv 3x3 3->64 -> BN (no activation). Stages 64/128/256/512, strides 1/2/2/2, [2,2,2,2]
standard blocks (one residual per two convs):
    o = Hardtanh(BN1(BinConv1_s(x)));  o = Hardtanh(BN2(BinConv2(o)) + S(x))
S = identity or FP conv 1x1/2 + BN. Head: global avg pool -> BN1d(512) -> Linear (logits).
Init: binary convs kaiming_normal (fan_in, gain sqrt 2); FP layers PyTorch default.
Params: 11,174,986 (10,985,472 binary: 16 binary 3x3 convs) for 10 classes, the same total as OvSW's
variant (whose three 1x1 shortcuts are binary instead).
"""
from __future__ import annotations

from torch import Tensor, nn

from bnnbench.plugins import ArchSpec, Method, kaiming_binary_init, register_arch


class Block(nn.Module):
    def __init__(self, method: Method, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = method.conv(in_planes, planes, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = method.conv(planes, planes, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act1 = method.activation(planes)  # between binary convs: the method decides (default Hardtanh)
        self.act2 = method.activation(planes)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        o = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(o)) + self.shortcut(x))


class CResNet18(nn.Module):
    def __init__(self, method: Method, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, in_planes = [], 64
        for i, planes in enumerate((64, 128, 256, 512)):
            blocks = []
            for j in range(2):
                blocks.append(Block(method, in_planes, planes, (2 if i > 0 else 1) if j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)
        kaiming_binary_init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.bn2(self.pool(x).flatten(1)))


register_arch(ArchSpec(
    name="cresnet18", build=CResNet18, family="cifar", input_size=(3, 32, 32),
    description="CIFAR ResNet-18 1W1A (standard blocks, FP 1x1 downsample: IR-Net variant)",
    scope="16 binary 3x3 convs; FP: 3x3 stem conv, three 1x1 downsample convs, BN layers and the fc head"))
