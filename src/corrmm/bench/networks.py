"""Two small networks built into corrmm for the model benchmark: they need no torchvision.

    M5Audio     a 1-D CNN on raw waveforms in the style of Dai et al.'s M5 (2017): a wide,
                stride-4 first layer on one input channel, then 3-tap layers, each followed
                by batch norm, ReLU and 4x max pooling, global average pooling, a linear head.
    SmallCNN    a compact 2-D CNN with the kinds of convolution modern image models use:
                a strided stem, inverted-residual blocks (1x1 expansion, depthwise 3x3 with
                stride 1 and 2, 1x1 projection), a grouped 3x3 and a strided 1x1 shortcut.

Both are sized by their constructor arguments, so CPU tests run them in milliseconds
and a GPU run can use the defaults.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(conv: nn.Module, channels: int, norm=nn.BatchNorm2d) -> nn.Sequential:
    return nn.Sequential(conv, norm(channels), nn.ReLU(inplace=True))


class M5Audio(nn.Module):
    """Input (batch, 1, samples); at least about 2000 samples (four 4x poolings after a stride-4 layer)."""

    def __init__(self, num_classes: int = 35, width: int = 128):
        super().__init__()
        widths = (width, width, 2 * width, 4 * width)
        layers = [_conv_bn_relu(nn.Conv1d(1, widths[0], 80, stride=4, bias=False), widths[0], nn.BatchNorm1d),
                  nn.MaxPool1d(4)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [_conv_bn_relu(nn.Conv1d(c_in, c_out, 3, padding=1, bias=False), c_out, nn.BatchNorm1d),
                       nn.MaxPool1d(4)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=-1))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, depthwise 3x3 (stride 1 or 2), 1x1 projection; residual if shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int = 4):
        super().__init__()
        hidden = c_in * expansion
        self.block = nn.Sequential(
            _conv_bn_relu(nn.Conv2d(c_in, hidden, 1, bias=False), hidden),
            _conv_bn_relu(nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False), hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class GroupedBottleneck(nn.Module):
    """ResNeXt's block at stride 2: 1x1, grouped 3x3 with stride, 1x1, and a strided 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(
            _conv_bn_relu(nn.Conv2d(c_in, c_out, 1, bias=False), c_out),
            _conv_bn_relu(nn.Conv2d(c_out, c_out, 3, stride=2, padding=1, groups=groups, bias=False), c_out),
            nn.Conv2d(c_out, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.block(x) + self.shortcut(x))


class SmallCNN(nn.Module):
    """Input (batch, 3, size, size), size at least 16 (three stride-2 stages)."""

    def __init__(self, num_classes: int = 10, width: int = 32, groups: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), width),
            InvertedResidual(width, width, stride=1),
            InvertedResidual(width, 2 * width, stride=2),
            GroupedBottleneck(2 * width, 4 * width, groups=groups),
            InvertedResidual(4 * width, 4 * width, stride=1))
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))
