"""An in-memory labelled image dataset (uint8 N x C x H x W) shared by Fashion-MNIST and CIFAR."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from lappdeploy.data.base import DataBundle, DataRequest, DatasetInfo
from lappdeploy.data.transforms import BatchTransform

__all__ = ["ImageTensorDataset", "in_memory_bundle"]


class ImageTensorDataset(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def in_memory_bundle(
    info: DatasetInfo, train: ImageTensorDataset, val: ImageTensorDataset, request: DataRequest, *, crop_padding: int
) -> DataBundle:
    """DataBundle for an in-memory square-image dataset: batched crop/flip augmentation for training
    (when requested), resize to `request.image_size` if set, and normalisation."""
    native = info.image_hw[0]  # in-memory datasets are square
    size = request.image_size or native
    common = {"mean": info.mean, "std": info.std, "native_size": native, "size": size}
    augment = {"crop_padding": crop_padding, "hflip": True} if request.augment else {}
    info = DatasetInfo(**{**vars(info), "train_size": len(train), "val_size": len(val)})
    return DataBundle(
        info, train, val, (info.in_channels, size, size), BatchTransform(**common, **augment), BatchTransform(**common)
    )
