"""Synthetic images of any shape and class count, for tests and speed runs.

Each class has a fixed random pattern; a sample is its class pattern plus Gaussian noise, so a
model can actually learn the task (loss goes down), and every sample is a pure function of
(seed, split, index): no memory is used and nothing needs to be stored.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lappdeploy.data.base import DataBundle, DataRequest, DatasetInfo

__all__ = ["SyntheticImages", "load", "locate"]

NOISE_STD = 1.0  # relative to unit-variance class patterns: hard enough not to be solved in one step


class SyntheticImages(Dataset):
    def __init__(self, shape: tuple[int, int, int], num_classes: int, size: int, *, seed: int, split: int) -> None:
        self.shape = tuple(shape)
        self.num_classes = num_classes
        self.size = size
        self.seed = seed
        self.split = split  # 0 = train, 1 = val: different noise, same class patterns
        gen = torch.Generator().manual_seed(seed)
        self.patterns = torch.randn((num_classes, *self.shape), generator=gen)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.split * 100_000_007 + index)
        label = int(torch.randint(self.num_classes, (1,), generator=gen))
        image = self.patterns[label] + NOISE_STD * torch.randn(self.shape, generator=gen)
        return image, label


def locate(request: DataRequest) -> DatasetInfo:
    channels, height, width = request.synthetic_shape
    return DatasetInfo(
        name="synthetic",
        in_channels=channels,
        image_hw=(height, width),
        num_classes=request.synthetic_classes,
        mean=(0.0,) * channels,
        std=(1.0,) * channels,
        class_names=tuple(f"class{i}" for i in range(request.synthetic_classes)),
        location=None,
        train_size=request.synthetic_samples,
        val_size=max(request.synthetic_classes, request.synthetic_samples // 4),
    )


def load(info: DatasetInfo, request: DataRequest) -> DataBundle:
    shape = request.synthetic_shape
    if request.image_size is not None:
        shape = (shape[0], request.image_size, request.image_size)
    train = SyntheticImages(shape, info.num_classes, info.train_size, seed=request.seed, split=0)
    val = SyntheticImages(shape, info.num_classes, info.val_size, seed=request.seed, split=1)
    return DataBundle(info, train, val, tuple(shape), _as_float, _as_float)


def _as_float(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x.float()
