"""Loaders that hand the training loop ready batches on its device.

Shuffling goes through a DistributedSampler (also for one process) seeded by (seed, epoch), and
augmentation randomness through a generator reseeded every epoch, so epoch e sees the same batches
whether the run started at epoch 0 or resumed at epoch e. Validation is sharded across processes
without padding, so metrics summed over ranks are exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, SequentialSampler, Subset

__all__ = ["DeviceLoader", "HeldOut", "auto_workers", "epoch_seed", "fixed_subset", "split_holdout"]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, reproducible 63-bit seed per (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729 + 12_345) % (2**63 - 1)


def fixed_subset(dataset: Dataset, count: int | None) -> Dataset:
    """The first `count` items of a fixed shuffle (independent of the run seed, so subsets are comparable)."""
    if count is None or count >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return Subset(dataset, order[:count].tolist())


def split_holdout(dataset: Dataset, count: int) -> tuple[Dataset, Dataset]:
    """(training part, held-out part) of `dataset`: `count` items of a fixed shuffle (its own seed, independent
    of the run's and of `fixed_subset`'s) are held out, so every method and seed sees the same split."""
    if count <= 0:
        return dataset, Subset(dataset, [])
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(1)).tolist()
    # the held-out part stays shuffled: its first N images (the decisions') must mix the classes even
    # where the dataset is stored class by class (ImageFolder)
    return Subset(dataset, sorted(order[count:])), Subset(dataset, order[:count])


class HeldOut:
    """Held-out training images for a pruning method's decisions: the first `count` of them as tensors on
    a device, normalised like validation images (no augmentation)."""

    def __init__(self, dataset: Dataset, transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def tensors(
        self, count: int, device: torch.device | str, batch_size: int = 256, *, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `count` images and their labels; with `seed`, `count` images drawn at random (without
        replacement, reproducibly) from all of them instead."""
        count = min(count, len(self.dataset))
        if seed is None:
            indices = list(range(count))
        else:
            indices = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist()
        loader = DataLoader(Subset(self.dataset, indices), batch_size=batch_size, shuffle=False)
        images, labels = [], []
        for batch, targets in loader:
            images.append(self.transform(batch.to(device), None))
            labels.append(targets.to(device))
        return torch.cat(images), torch.cat(labels)


def auto_workers(in_memory: bool, world_size: int) -> int:
    """In-memory datasets need no worker processes (items are tensor views); decoding JPEGs does."""
    if in_memory:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // max(1, world_size)))


class DeviceLoader:
    """Iterate (images, labels) on `device`, with `batch_transform(images, generator)` applied there."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        train: bool,
        batch_transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
        device: torch.device,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.batch_transform = batch_transform
        self.seed, self.rank = seed, rank
        self.train = train
        self.sampler: DistributedSampler | None = None
        if train:
            self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
            per_rank = len(self.sampler)
            sampler = self.sampler
            # Drop the last partial batch (a batch of 1 breaks BatchNorm) unless it is the only one.
            drop_last = per_rank >= batch_size
        else:
            dataset = Subset(dataset, range(rank, len(dataset), world_size)) if world_size > 1 else dataset
            sampler, drop_last = SequentialSampler(dataset), False
        self._loader_generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            generator=self._loader_generator,
        )
        self._augment_generator = torch.Generator(device=self.device)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self._loader_generator.manual_seed(epoch_seed(self.seed, epoch, self.rank))
        self._augment_generator.manual_seed(epoch_seed(self.seed + 1, epoch, self.rank))

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return len(self.loader.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=non_blocking)
            labels = labels.to(self.device, non_blocking=non_blocking)
            yield self.batch_transform(images, self._augment_generator if self.train else None), labels
