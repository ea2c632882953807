"""ImageNet ResNet-18 / ResNet-34 "1w1a" (the OvSW = ReCU = IR-Net topology).

Stem (FP): conv 7x7/2 3->64 -> BN -> Hardtanh -> MaxPool 3x3/2.
Stages 64/128/256/512, strides 1/2/2/2, blocks [2,2,2,2] (R18) or [3,4,6,3] (R34); Bi-Real-style block
with a residual around *each* binary 3x3 conv:
    h = Hardtanh(BN1(BinConv3x3_s(x)) + r),  r = x or D(x)
    o = Hardtanh(BN2(BinConv3x3(h)) + h)
D = FP conv 1x1/s (no bias) + BN in the first block of stages 2-4. Head (FP): global avg pool -> BN1d(512)
-> Linear(512 -> classes) returning logits.
Init (OvSW/ReCU): every BatchNorm2d weight 1e-8, bias 0 (BN1d default); binary convs kaiming_normal
(fan_in, gain sqrt 2); stem and downsample convs PyTorch default (OvSW).
Params (methods without extra parameters): R18 11,690,536 (10,985,472 binary); R34 21,798,696 (21,086,208).
"""
from __future__ import annotations

from torch import Tensor, nn

from bnnbench.plugins import ArchSpec, Method, kaiming_binary_init, register_arch


class BasicBlock(nn.Module):
    def __init__(self, method: Method, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = method.conv(in_planes, planes, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = method.conv(planes, planes, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act1 = method.activation(planes)  # between binary convs: the method decides (default Hardtanh)
        self.act2 = method.activation(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        r = x if self.downsample is None else self.downsample(x)
        h = self.act1(self.bn1(self.conv1(x)) + r)
        return self.act2(self.bn2(self.conv2(h)) + h)


class ResNetImageNet(nn.Module):
    def __init__(self, method: Method, blocks: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act = nn.Hardtanh(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        layers, in_planes = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(method, in_planes, planes, (1 if i == 0 else 2) if j == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)
        kaiming_binary_init(self)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1e-8)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.bn2(self.avgpool(x).flatten(1)))


_SCOPE = ("all 3x3 convs inside the blocks are binary; FP: 7x7 stem conv, the three 1x1 downsample "
          "convs, BN layers and the fc head")

for _name, _blocks, _desc in (("resnet18", [2, 2, 2, 2], "ImageNet ResNet-18 1W1A (Bi-Real-style blocks)"),
                              ("resnet34", [3, 4, 6, 3], "ImageNet ResNet-34 1W1A (Bi-Real-style blocks)")):
    register_arch(ArchSpec(
        name=_name, family="imagenet", input_size=(3, 224, 224), description=_desc, scope=_SCOPE,
        build=lambda method, num_classes, in_channels=3, _b=_blocks: ResNetImageNet(method, _b, num_classes,
                                                                                   in_channels),
        test_input_size=(3, 32, 32)))
