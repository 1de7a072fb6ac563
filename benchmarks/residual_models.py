"""Residual nets as a user would write them, for running the benchmarks on a model autoprune does not ship.

    cd benchmarks && PYTHONPATH=..:. python front_quality.py --space lenet5_fashion --trials 20 \\
        --set model.name=residual_models:resnet_bn --set dataset.limit=6000

``resnet_bn``: a small ResNet with batch norm (stem, two stages of two basic blocks, 16 and 32 channels, a strided
block with a 1x1 projection between them, global average pooling), 42k parameters on 28x28 grey images.
``resnet16``: README's example residual net (no normalisation) at width 16, 9.6k parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (projected by a 1x1 conv when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetBN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        w1, w2 = widths
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(w1, w1), BasicBlock(w1, w1))
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, stride=2), BasicBlock(w2, w2))
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(nn.functional.max_pool2d(self.stem(x), 2))
        return self.fc(self.layer2(x).mean(dim=(2, 3)))


class Block(nn.Module):
    """README's block: two 3x3 convolutions and a skip connection, no normalisation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        self.layer1 = nn.Sequential(Block(width), Block(width))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(nn.functional.max_pool2d(torch.relu(self.stem(x)), 2))
        return self.fc(x.mean(dim=(2, 3)))


def resnet_bn(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNetBN(input_shape[0], num_classes)


def resnet16(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet(input_shape[0], num_classes, width=16)
