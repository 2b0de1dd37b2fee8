"""Shared types of the data stage: what a dataset tells the model builder, and what it hands the loop."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch.utils.data import Dataset

from lappdeploy.errors import DataNotFoundError
from lappdeploy.io import cache_root

__all__ = [
    "DataBundle",
    "DataRequest",
    "DatasetInfo",
    "DatasetSpec",
    "candidate_roots",
    "default_download_root",
    "find_or_download",
]


@dataclass(frozen=True)
class DataRequest:
    """What the user asked for; every dataset reads the fields that concern it."""

    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None  # px; None = the dataset's native size
    augment: bool = True
    synthetic_shape: tuple[int, int, int] = (3, 32, 32)
    synthetic_classes: int = 10
    synthetic_samples: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class DatasetInfo:
    """Facts the model builder and the deploy card need; produced cheaply, before loading pixels."""

    name: str
    in_channels: int
    image_hw: tuple[int, int] | None  # native height, width in px; None when images vary (ImageFolder)
    num_classes: int
    mean: tuple[float, ...]  # per channel, for pixels scaled to [0, 1]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    location: str | None = None  # where the files were found
    train_size: int | None = None
    val_size: int | None = None


@dataclass
class DataBundle:
    """Train/val datasets plus the batch transforms the loop applies on the device.

    `train`/`val` yield (image, label). For in-memory datasets the image is a uint8 CHW tensor and
    the batch transforms do augmentation, resizing and normalisation on whole batches; otherwise the
    datasets return normalised float tensors and the batch transforms are identities.
    """

    info: DatasetInfo
    train: Dataset
    val: Dataset
    input_shape: tuple[int, int, int]  # C, H, W of the tensors the model sees
    train_batch_transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
    val_batch_transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
    in_memory: bool = True  # items are cheap views of tensors held in memory (no worker processes needed)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    locate: Callable[[DataRequest], DatasetInfo]  # fast; raises DataNotFoundError listing places searched
    load: Callable[[DatasetInfo, DataRequest], DataBundle]


def default_download_root() -> Path:
    return cache_root() / "data"


def candidate_roots(request: DataRequest, system_dirs: tuple[str, ...] = ()) -> list[tuple[Path, str]]:
    """Directories to search, in order, each with a label saying where it came from."""
    roots: list[tuple[Path, str]] = []
    if request.data_dir:
        roots.append((Path(request.data_dir).expanduser(), "--data-dir"))
    env = os.environ.get("LAPPDEPLOY_DATA")
    if env:
        roots.append((Path(env).expanduser(), "$LAPPDEPLOY_DATA"))
    roots += [(Path(d), "system") for d in system_dirs]
    roots.append((default_download_root(), "download cache"))
    return roots


T = TypeVar("T")


def find_or_download(
    request: DataRequest,
    find: Callable[[Path], T | None],
    *,
    download: Callable[[Path], None],
    name: str,
    fix: str,
    system_dirs: tuple[str, ...] = (),
) -> T:
    """Return `find(root)` for the first candidate root where it finds the dataset. If none does and
    --download was given, download into --data-dir (or the cache) and search again; otherwise raise one
    DataNotFoundError line listing every place searched and `fix`."""

    def search() -> tuple[T | None, list[str]]:
        searched = []
        for root, label in candidate_roots(request, system_dirs):
            searched.append(f"{root} ({label})")
            found = find(root)
            if found is not None:
                return found, searched
        return None, searched

    found, searched = search()
    if found is None and request.download:
        target = Path(request.data_dir) if request.data_dir else default_download_root()
        target.mkdir(parents=True, exist_ok=True)
        download(target)
        found, searched = search()
    if found is None:
        raise DataNotFoundError(f"{name} not found; searched {', '.join(searched)}. Fix: {fix}")
    return found
