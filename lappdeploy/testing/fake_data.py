"""Small generated data for tests: files in the real on-disk formats (the dataset readers without
downloads) and in-memory batches of a learnable task (training and pruning without a dataset)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["quadrant_batches", "write_cifar", "write_fashion_mnist", "write_idx", "write_imagefolder"]


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    """Write a uint8 array in LeCun's IDX format (magic 0x0000 0x08 ndim, big-endian dims, data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path = Path(f"{path}.gz") if gz else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fashion_mnist(root: Path, n_train: int = 64, n_val: int = 32, *, gz: bool = True, seed: int = 0) -> Path:
    """Fashion-MNIST-format files in `root` (flat layout, as Debian installs them). Each class is a
    distinct brightness band, so a model can learn it."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, count in (("train", n_train), ("t10k", n_val)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = (labels[:, None, None] * 25 + rng.integers(0, 20, (count, 28, 28))).astype(np.uint8)
        write_idx(root / f"{split}-images-idx3-ubyte", images, gz=gz)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels, gz=gz)
    return root


def write_cifar(root: Path, variant: str = "cifar10", per_file: int = 8, *, seed: int = 0) -> Path:
    """CIFAR 'python version' pickles in `root/<folder>/`, `per_file` images per batch file."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        folder, files, label_key, classes = (
            "cifar-10-batches-py",
            [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"],
            b"labels",
            10,
        )
        meta_name, meta = "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]}
    else:
        folder, files, label_key, classes = "cifar-100-python", ["train", "test"], b"fine_labels", 100
        meta_name, meta = "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]}
    directory = Path(root) / folder
    directory.mkdir(parents=True, exist_ok=True)
    for name in files:
        batch = {
            b"data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, per_file).tolist(),
        }
        (directory / name).write_bytes(pickle.dumps(batch))
    (directory / meta_name).write_bytes(pickle.dumps(meta))
    return directory


def write_imagefolder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3, size: int = 40
) -> Path:
    """root/train/<class>/*.png and root/val/<class>/*.png with random RGB images of `size` px."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = Path(root)
    for split in ("train", "val"):
        for cls in classes:
            directory = root / split / cls
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size + 7, 3), dtype=np.uint8)  # non-square on purpose
                Image.fromarray(pixels).save(directory / f"{i}.png")
    return root


def quadrant_batches(n: int, size: int = 16, batch: int = 16, seed: int = 0) -> list[tuple[Any, Any]]:
    """`n` batches of a learnable 4-class task for tests: 3-channel `size` px images of noise whose
    label is the quadrant holding a bright square; deterministic in `seed`."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    half = size // 2
    out = []
    for _ in range(n):
        images = torch.randn(batch, 3, size, size, generator=generator) * 0.3
        labels = torch.randint(0, 4, (batch,), generator=generator)
        for i, label in enumerate(labels.tolist()):
            row, col = divmod(label, 2)
            images[i, :, row * half : (row + 1) * half, col * half : (col + 1) * half] += 1.0
        out.append((images, labels))
    return out
