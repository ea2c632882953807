"""ReActNet-style ResNet-18 ("reactnet18"): the two-stage track's backbone (the ReCU
two-stage variant; Liu et al., "ReActNet", ECCV 2020, sections 3.2-3.3).

Bi-Real-18 topology with 16 single-conv blocks, [4, 4, 4, 4] per stage, widths 64/128/256/512, the first
block of stages 2-4 with stride 2. Each block::

    o = move2( PReLU( move1( BN(BinConv3x3_s(move0(x))) + r ) ) ),   r = x or D(x)

move0/1/2: learnable per-channel shifts (zero-initialised); move0 before the binary conv's sign is
ReActNet's RSign, move1 -> PReLU -> move2 its RPReLU. D = AvgPool2d(2) -> FP conv 1x1 -> BN. Stem (FP):
conv 7x7/2 3->64 -> BN -> MaxPool 3x3/2 (no activation). Head: global avg pool -> Linear(512 -> classes),
no BN1d. Init: PyTorch defaults everywhere (as the authors' code), PReLU slope 0.25.
The activation between blocks is RPReLU by design, so the method's ``activation`` seam is not used.
Params: 11,704,424 with 1,000 classes (10,985,472 binary: 16 binary 3x3 convs), for methods without extra
parameters.
"""
from __future__ import annotations

from torch import Tensor, nn

from bnnbench.nn import Shift
from bnnbench.plugins import ArchSpec, Method, register_arch


class Block(nn.Module):
    def __init__(self, method: Method, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.move0 = Shift(in_planes)
        self.conv = method.conv(in_planes, planes, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(planes)
        self.move1, self.prelu, self.move2 = Shift(planes), nn.PReLU(planes), Shift(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=stride), nn.Conv2d(in_planes, planes, 1, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        r = x if self.downsample is None else self.downsample(x)
        out = self.bn(self.conv(self.move0(x))) + r
        return self.move2(self.prelu(self.move1(out)))


class ReActNet18(nn.Module):
    def __init__(self, method: Method, num_classes: int, in_channels: int = 3, blocks=(4, 4, 4, 4)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, in_planes = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage = []
            for j in range(n):
                stage.append(Block(method, in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


register_arch(ArchSpec(
    name="reactnet18", family="imagenet", input_size=(3, 224, 224),
    description="ReActNet-style ResNet-18 1W1A (16 single-conv blocks, RSign/RPReLU shifts, two-stage track)",
    scope="the 16 3x3 convs inside the blocks are binary; FP: 7x7 stem conv, the three 1x1 downsample convs, "
          "BN, shifts, PReLU and the fc head",
    build=lambda method, num_classes, in_channels=3: ReActNet18(method, num_classes, in_channels),
    test_input_size=(3, 64, 64)))  # 32 px leaves layer4 at 1x1: BN of two values at batch 2
