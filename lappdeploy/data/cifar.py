"""CIFAR-10 / CIFAR-100 from the standard "python version" archives (pickled uint8 batches).

We read the batch files ourselves (torchvision's class insists on the MD5 of the official files) and
use torchvision only to download them, with --download, into --data-dir or the download cache.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lappdeploy.data.base import DataBundle, DataRequest, DatasetInfo, find_or_download
from lappdeploy.data.tensor_dataset import ImageTensorDataset, in_memory_bundle
from lappdeploy.errors import DataNotFoundError

__all__ = ["CIFAR10", "CIFAR100", "CifarVariant"]

CROP_PADDING = 4  # px; the standard CIFAR augmentation: random 32x32 crop of the 4-px padded image + h-flip


@dataclass(frozen=True)
class CifarVariant:
    name: str
    folder: str
    train_files: tuple[str, ...]
    val_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_class: str

    def _find(self, root: Path) -> Path | None:
        for directory in (root / self.folder, root):
            if all((directory / f).is_file() for f in (*self.train_files, self.val_file, self.meta_file)):
                return directory
        return None

    def _download(self, root: Path) -> None:
        import torchvision

        getattr(torchvision.datasets, self.torchvision_class)(str(root), train=True, download=True)

    def locate(self, request: DataRequest) -> DatasetInfo:
        directory = find_or_download(
            request,
            self._find,
            download=self._download,
            name=self.name,
            fix=f"add --download (needs internet), or pass --data-dir DIR containing {self.folder}/ from the "
            "official python archive",
        )
        meta = _unpickle(directory / self.meta_file)
        names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(self.names_key, ()))
        return DatasetInfo(
            name=self.name,
            in_channels=3,
            image_hw=(32, 32),
            num_classes=self.num_classes,
            mean=self.mean,
            std=self.std,
            class_names=names,
            location=str(directory),
        )

    def load(self, info: DatasetInfo, request: DataRequest) -> DataBundle:
        directory = Path(info.location)
        train = ImageTensorDataset(*_read_batches(tuple(directory / f for f in self.train_files), self.label_key))
        val = ImageTensorDataset(*_read_batches((directory / self.val_file,), self.label_key))
        if int(train.labels.max()) >= self.num_classes:
            raise DataNotFoundError(f"{directory} has labels >= {self.num_classes}; is it really {self.name}?")
        return in_memory_bundle(info, train, val, request, crop_padding=CROP_PADDING)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataNotFoundError(f"cannot read CIFAR batch {path}: {exc}; re-download the dataset") from None


@functools.lru_cache(maxsize=4)
def _read_batches(paths: tuple[Path, ...], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        if b"data" not in batch or label_key not in batch:
            raise DataNotFoundError(f"{path} is not a CIFAR batch (no {b'data'!r} / {label_key!r} entries)")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


CIFAR10 = CifarVariant(
    name="cifar10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    val_file="test_batch",
    meta_file="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    torchvision_class="CIFAR10",
)
CIFAR100 = CifarVariant(
    name="cifar100",
    folder="cifar-100-python",
    train_files=("train",),
    val_file="test",
    meta_file="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    torchvision_class="CIFAR100",
)
