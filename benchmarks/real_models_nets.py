"""Three models as a user writes them, for ``real_models.py``: 1x28x28 grey images, 10 classes.

``resnet20``: ResNet-20 (He et al. 2016, the CIFAR variant): a 3x3 stem, three stages of three basic blocks at
16, 32 and 64 channels (28x28, 14x14, 7x7), batch norm, 1x1 conv + BN projections where the shape changes, global
average pooling and a linear head; 272k parameters.
``mobilenetv2``: a small MobileNetV2 (Sandler et al. 2018): inverted residual blocks (1x1 expansion, 3x3 depthwise,
1x1 linear projection, each with batch norm; a residual add at stride 1 between equal widths), a 1x1 head conv,
global average pooling and a linear head; 149k parameters.
``transformer``: a Transformer encoder over the image's rows (28 tokens of 28 pixels): a linear embedding to 64
dimensions, a learned positional embedding, two ``nn.TransformerEncoderLayer`` (4 heads, feed-forward 128), mean
pooling and a linear head; 71k parameters.
"""

from __future__ import annotations

import torch
from residual_models import BasicBlock  # the same block as the benchmarks' other residual net
from torch import nn


class ResNet20(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, cin = [], widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width), BasicBlock(width, width))
            )
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    """1x1 expand conv-BN-ReLU6, 3x3 depthwise conv-BN-ReLU6, 1x1 project conv-BN; plus the input when it fits."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2(nn.Module):
    # (expansion, output channels, blocks, stride of the first block): MobileNetV2's table cut down for 28x28
    # inputs, so that it trains on two CPU cores: 28x28 -> 14x14 -> 7x7 -> 4x4.
    SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2), (4, 96, 1, 1))

    def __init__(self, in_channels: int, num_classes: int, stem: int = 16, head: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem),
            nn.ReLU6(inplace=True),
        ]
        cin = stem
        for expand, cout, blocks, stride in self.SETTINGS:
            for i in range(blocks):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


class RowTransformer(nn.Module):
    """Each image row is a token: embed, add learned positions, encode, mean-pool the tokens, classify."""

    def __init__(self, rows: int, row_width: int, num_classes: int, d_model: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(row_width, d_model)
        self.pos = nn.Parameter(torch.zeros(1, rows, d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, 4, 128, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.flatten(1, -2)) + self.pos  # (N, 1, 28, 28) -> (N, 28 rows, 28 pixels)
        return self.head(self.encoder(tokens).mean(dim=1))


def resnet20(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return ResNet20(input_shape[0], num_classes)


def mobilenetv2(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MobileNetV2(input_shape[0], num_classes)


def transformer(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return RowTransformer(input_shape[-2], input_shape[-1], num_classes)
