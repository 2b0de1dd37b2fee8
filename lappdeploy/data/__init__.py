"""Dataset registry: fashion-mnist, cifar10, cifar100, imagefolder, synthetic.

    info = locate_dataset("fashion-mnist")              # cheap: finds files, or one clear error
    bundle = create_dataset("fashion-mnist", image_size=32)  # upsampled from 28 px

Each dataset reports its input channels, native image size and class count (`DatasetInfo`) so the
model builder can adapt the network, and provides its standard augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lappdeploy.data import cifar, fashion_mnist, imagefolder, synthetic
from lappdeploy.data.base import DataBundle, DataRequest, DatasetInfo, DatasetSpec
from lappdeploy.data.loaders import DeviceLoader, HeldOut, auto_workers, epoch_seed, fixed_subset, split_holdout
from lappdeploy.errors import DataNotFoundError
from lappdeploy.registry import Registry

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataRequest",
    "DatasetInfo",
    "DatasetSpec",
    "DeviceLoader",
    "HeldOut",
    "auto_workers",
    "create_dataset",
    "epoch_seed",
    "fixed_subset",
    "list_datasets",
    "locate_dataset",
    "register_dataset",
    "split_holdout",
]

DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.add(spec.name, spec)


def list_datasets() -> list[str]:
    return DATASETS.names()


def locate_dataset(name: str, request: DataRequest | None = None, **fields: Any) -> DatasetInfo:
    """Find dataset `name` without loading it; raises DataNotFoundError listing the places searched."""
    request = request or DataRequest(**fields)
    spec = DATASETS.get(name)
    if request.data_dir and not Path(request.data_dir).expanduser().is_dir():
        raise DataNotFoundError(f"--data-dir {request.data_dir} does not exist or is not a directory")
    return spec.locate(request)


def create_dataset(name: str, request: DataRequest | None = None, **fields: Any) -> DataBundle:
    """Load dataset `name` with its standard transforms (see DataRequest for the options)."""
    request = request or DataRequest(**fields)
    return DATASETS.get(name).load(locate_dataset(name, request), request)


register_dataset(
    DatasetSpec(
        "fashion-mnist",
        "Fashion-MNIST, 60k/10k 28x28 grey images, 10 classes",
        fashion_mnist.locate,
        fashion_mnist.load,
    )
)
register_dataset(
    DatasetSpec(
        "cifar10", "CIFAR-10, 50k/10k 32x32 colour images, 10 classes", cifar.CIFAR10.locate, cifar.CIFAR10.load
    )
)
register_dataset(
    DatasetSpec(
        "cifar100", "CIFAR-100, 50k/10k 32x32 colour images, 100 classes", cifar.CIFAR100.locate, cifar.CIFAR100.load
    )
)
register_dataset(
    DatasetSpec(
        "imagefolder",
        "Your images: --data-dir with train/<class>/ and val/<class>/",
        imagefolder.locate,
        imagefolder.load,
    )
)
register_dataset(
    DatasetSpec(
        "synthetic",
        "Random learnable images of any shape and class count (tests, speed runs)",
        synthetic.locate,
        synthetic.load,
    )
)
