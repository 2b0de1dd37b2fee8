"""Fashion-MNIST (Xiao et al. 2017): 60k + 10k real 28x28 grey images of clothing, 10 classes.

Files are the original IDX files (optionally gzipped), found in this order: --data-dir,
$LAPPDEPLOY_DATA, /usr/share/datasets/fashion-mnist (Debian's `dataset-fashion-mnist`), the
download cache; torchvision downloads them only when --download is given.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import numpy as np
import torch

from lappdeploy.data.base import DataBundle, DataRequest, DatasetInfo, find_or_download
from lappdeploy.data.tensor_dataset import ImageTensorDataset, in_memory_bundle
from lappdeploy.errors import DataNotFoundError

__all__ = ["FILES", "load", "locate", "read_idx"]

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MEAN, STD = (0.2860,), (0.3530,)  # of the training pixels scaled to [0, 1]
CROP_PADDING = 2  # px; standard Fashion-MNIST augmentation: random 28x28 crop of the 2-px padded image + h-flip
_IDX_DTYPE = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (LeCun's format: magic, dims, big-endian sizes, raw data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataNotFoundError(f"cannot read {path}: {exc}; re-install or re-download the dataset") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPE:
        raise DataNotFoundError(f"{path} is not an IDX file of unsigned bytes; re-install or re-download the dataset")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise DataNotFoundError(
            f"{path} is truncated or corrupt ({len(raw) - offset} bytes of data, {expected} expected); "
            "re-install or re-download the dataset"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find_files(directory: Path) -> dict[str, Path] | None:
    for sub in (directory, directory / "fashion-mnist", directory / "FashionMNIST" / "raw"):
        found = {}
        for key, stem in FILES.items():
            for candidate in (sub / stem, sub / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FILES):
            return found
    return None


def locate(request: DataRequest) -> DatasetInfo:
    files = find_or_download(
        request,
        _find_files,
        download=_download,
        name="Fashion-MNIST",
        fix="`sudo apt-get install dataset-fashion-mnist`, or pass --data-dir DIR holding "
        "train-images-idx3-ubyte[.gz] and the other three IDX files, or add --download",
        system_dirs=(SYSTEM_DIR,),
    )
    return DatasetInfo(
        name="fashion-mnist",
        in_channels=1,
        image_hw=(28, 28),
        num_classes=10,
        mean=MEAN,
        std=STD,
        class_names=CLASS_NAMES,
        location=str(files["train_images"].parent),
    )


def _download(root: Path) -> None:
    import torchvision

    for train in (True, False):  # writes root/FashionMNIST/raw/*
        torchvision.datasets.FashionMNIST(str(root), train=train, download=True)


@functools.lru_cache(maxsize=2)
def _read_split(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataNotFoundError(f"{images} and {labels} do not hold matching images and labels")
    if y.size and int(y.max()) >= len(CLASS_NAMES):
        raise DataNotFoundError(f"{labels} has label {int(y.max())}; Fashion-MNIST has 10 classes (0-9)")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def load(info: DatasetInfo, request: DataRequest) -> DataBundle:
    files = _find_files(Path(info.location))
    if files is None:
        raise DataNotFoundError(f"Fashion-MNIST files disappeared from {info.location} after it was located")
    train = ImageTensorDataset(*_read_split(files["train_images"], files["train_labels"]))
    val = ImageTensorDataset(*_read_split(files["val_images"], files["val_labels"]))
    return in_memory_bundle(info, train, val, request, crop_padding=CROP_PADDING)
