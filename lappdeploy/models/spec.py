"""What the model registry holds for one architecture: its builder and the facts the run needs before
building it (family, smallest input)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

__all__ = ["ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]  # keyword-only: num_classes, in_channels, **extra
    family: str  # "cifar", "torchvision", "testing", "user" (registered), "timm" or "module" (a builder spec)
    min_input_size: int = 1  # smallest square input (px) the architecture forward-passes
    description: str = ""
