"""Tiny networks for fast tests (and users' smoke tests): milliseconds per step on one CPU core.

They are registered as `tiny_convnet` and `tiny_resnet` (family "testing"), so they save and load
portably like any other model, and each has `example_inputs()`.
"""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.models.cifar import CifarResNet

__all__ = ["TinyConvNet", "TinyResNet", "tiny_convnet", "tiny_resnet"]

EXAMPLE_SIZE = 16  # px of example_inputs()


class TinyConvNet(nn.Module):
    """conv-BN-ReLU x2 (the second strided), global pooling, linear: the simplest prunable chain."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))

    def example_inputs(self, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, self.in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE)


class TinyResNet(CifarResNet):
    """ResNet-8 with 8/16/32 channels: residual coupling and projection shortcuts, ~20k parameters."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__(8, num_classes=num_classes, in_channels=in_channels, width=8)
        self.in_channels = in_channels

    def example_inputs(self, batch_size: int = 2) -> torch.Tensor:
        return torch.randn(batch_size, self.in_channels, EXAMPLE_SIZE, EXAMPLE_SIZE)


def tiny_convnet(*, num_classes: int = 10, in_channels: int = 3) -> TinyConvNet:
    return TinyConvNet(num_classes=num_classes, in_channels=in_channels)


def tiny_resnet(*, num_classes: int = 10, in_channels: int = 3) -> TinyResNet:
    return TinyResNet(num_classes=num_classes, in_channels=in_channels)
