from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lappdeploy.data import (
    DataRequest,
    DeviceLoader,
    create_dataset,
    fixed_subset,
    list_datasets,
    locate_dataset,
)
from lappdeploy.data.fashion_mnist import read_idx
from lappdeploy.data.transforms import BatchTransform
from lappdeploy.errors import DataNotFoundError, UnknownNameError
from lappdeploy.testing import write_cifar, write_fashion_mnist, write_idx, write_imagefolder

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_registry_lists_the_five_datasets():
    assert list_datasets() == ["cifar10", "cifar100", "fashion-mnist", "imagefolder", "synthetic"]
    with pytest.raises(UnknownNameError, match="did you mean fashion-mnist"):
        locate_dataset("fashion_mnist")


# ---------------------------------------------------------------------------------------------- IDX / Fashion-MNIST
def test_read_idx_round_trip_gz_and_raw(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", array, gz=True)), array)
    assert np.array_equal(read_idx(write_idx(tmp_path / "b", array, gz=False)), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    path = write_idx(tmp_path / "a", np.zeros((4, 5), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataNotFoundError, match="truncated or corrupt"):
        read_idx(path)
    other = tmp_path / "b"
    other.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(DataNotFoundError, match="not an IDX file"):
        read_idx(other)
    broken_gz = tmp_path / "c.gz"
    broken_gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(10))[:-8])
    with pytest.raises(DataNotFoundError, match="cannot read"):
        read_idx(broken_gz)


@pytest.mark.parametrize("layout", ["flat", "fashion-mnist", "FashionMNIST/raw"])
def test_fashion_mnist_layouts_and_bundle(tmp_path, layout):
    target = tmp_path if layout == "flat" else tmp_path / layout
    write_fashion_mnist(target, n_train=40, n_val=12, gz=layout != "FashionMNIST/raw")
    bundle = create_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert bundle.info.in_channels == 1 and bundle.info.num_classes == 10 and bundle.info.image_hw == (28, 28)
    assert len(bundle.train) == 40 and len(bundle.val) == 12
    assert bundle.info.train_size == 40
    image, label = bundle.train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28) and 0 <= label < 10
    assert bundle.input_shape == (1, 28, 28)


def test_fashion_mnist_env_var_is_searched(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "fashion-mnist", n_train=8, n_val=8)
    monkeypatch.setenv("LAPPDEPLOY_DATA", str(tmp_path))
    assert locate_dataset("fashion-mnist").location == str(tmp_path / "fashion-mnist")


def test_data_dir_is_searched_before_env_var(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "a", n_train=8, n_val=8)
    write_fashion_mnist(tmp_path / "b", n_train=16, n_val=8)
    monkeypatch.setenv("LAPPDEPLOY_DATA", str(tmp_path / "b"))
    assert len(create_dataset("fashion-mnist", data_dir=str(tmp_path / "a")).train) == 8


def test_missing_dataset_lists_places_searched_and_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("LAPPDEPLOY_DATA", str(tmp_path / "env"))
    monkeypatch.setattr("lappdeploy.data.fashion_mnist.SYSTEM_DIR", str(tmp_path / "system"))
    with pytest.raises(DataNotFoundError) as exc:
        locate_dataset("fashion-mnist", data_dir=str(tmp_path))
    message = str(exc.value)
    assert "\n" not in message
    for expected in (
        f"{tmp_path} (--data-dir)",
        "($LAPPDEPLOY_DATA)",
        "(system)",
        "apt-get install dataset-fashion-mnist",
        "--download",
    ):
        assert expected in message, expected


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        locate_dataset("fashion-mnist", data_dir=str(tmp_path / "nope"))


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_package():
    bundle = create_dataset("fashion-mnist", data_dir=None)
    assert bundle.info.location == str(SYSTEM_FASHION)
    assert (len(bundle.train), len(bundle.val)) == (60000, 10000)
    pixels = bundle.train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(0.2860, abs=1e-3)  # the MEAN/STD we normalise with
    assert pixels.std().item() == pytest.approx(0.3530, abs=1e-3)
    assert torch.bincount(bundle.train.labels).tolist() == [6000] * 10


# ---------------------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize(("variant", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_generated_python_batches(tmp_path, variant, classes):
    write_cifar(tmp_path, variant, per_file=6)
    bundle = create_dataset(variant, data_dir=str(tmp_path))
    train_files = 5 if variant == "cifar10" else 1
    assert len(bundle.train) == 6 * train_files and len(bundle.val) == 6
    assert bundle.info.num_classes == classes and bundle.info.in_channels == 3
    assert bundle.info.class_names[:2] == ("c0", "c1")
    image, _ = bundle.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8


def test_cifar_missing_mentions_download(tmp_path):
    with pytest.raises(DataNotFoundError, match="add --download"):
        locate_dataset("cifar10", data_dir=str(tmp_path))


def test_cifar_corrupt_batch_is_a_clear_error(tmp_path):
    directory = write_cifar(tmp_path, "cifar10", per_file=2)
    (directory / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataNotFoundError, match="cannot read CIFAR batch"):
        create_dataset("cifar10", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------- ImageFolder
def test_imagefolder_transforms_and_class_mapping(tmp_path):
    write_imagefolder(tmp_path, classes=("cat", "dog", "emu"), per_class=2, size=40)
    (tmp_path / "val" / "dog").rename(tmp_path / "val_dog_removed")  # val lacks a class: indices must still match
    bundle = create_dataset("imagefolder", data_dir=str(tmp_path), image_size=32)
    assert bundle.info.num_classes == 3 and bundle.info.class_names == ("cat", "dog", "emu")
    assert not bundle.in_memory
    image, _ = bundle.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert {label for _, label in (bundle.val[i] for i in range(len(bundle.val)))} == {0, 2}


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="needs --data-dir"):
        locate_dataset("imagefolder")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no val/ folder"):
        locate_dataset("imagefolder", data_dir=str(tmp_path))
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="classes missing from train/: zebra"):
        locate_dataset("imagefolder", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_shaped():
    request = DataRequest(synthetic_shape=(2, 5, 7), synthetic_classes=3, synthetic_samples=20)
    a, b = create_dataset("synthetic", request), create_dataset("synthetic", request)
    assert a.input_shape == (2, 5, 7) and len(a.train) == 20 and len(a.val) == 5
    for i in (0, 7, 19):
        assert torch.equal(a.train[i][0], b.train[i][0]) and a.train[i][1] == b.train[i][1]
    assert not torch.equal(a.train[0][0], a.val[0][0])
    labels = {a.train[i][1] for i in range(20)}
    assert labels <= {0, 1, 2} and len(labels) > 1
    with pytest.raises(IndexError):
        a.train[20]


# ---------------------------------------------------------------------------------------------- transforms / loaders
def test_batch_transform_crop_flip_and_normalise():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    plain = BatchTransform(mean=(0.5,), std=(0.25,), native_size=6, size=6)
    out = plain(images)
    assert torch.allclose(out, (images.float() / 255 - 0.5) / 0.25)
    aug = BatchTransform(mean=(0.0,), std=(1.0,), native_size=6, size=6, crop_padding=2, hflip=True)
    gen = torch.Generator().manual_seed(0)
    shifted = aug(images.repeat(64, 1, 1, 1), gen)
    assert shifted.shape == (128, 1, 6, 6)
    assert not torch.equal(shifted, aug(images.repeat(64, 1, 1, 1), torch.Generator().manual_seed(1)))
    assert torch.equal(shifted, aug(images.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0)))
    # every augmented image is a (possibly flipped) window of the zero-padded original
    padded = torch.nn.functional.pad(images.float() / 255, (2, 2, 2, 2))
    windows = [padded[i, :, r : r + 6, c : c + 6] for i in range(2) for r in range(5) for c in range(5)]
    candidates = windows + [w.flip(-1) for w in windows]
    for sample in shifted[:10]:
        assert any(torch.allclose(sample, w) for w in candidates)
    upsampled = BatchTransform(mean=(0.0,), std=(1.0,), native_size=6, size=12)(images)
    assert upsampled.shape == (2, 1, 12, 12)


def test_device_loader_epochs_are_reproducible_and_shards_cover_the_data():
    dataset = torch.utils.data.TensorDataset(torch.arange(50).view(50, 1).to(torch.uint8), torch.arange(50))
    identity = lambda x, g=None: x  # noqa: E731

    def order(epoch, rank=0, world=1):
        loader = DeviceLoader(
            dataset,
            batch_size=8,
            train=True,
            batch_transform=identity,
            device="cpu",
            seed=3,
            rank=rank,
            world_size=world,
        )
        loader.set_epoch(epoch)
        return [int(y) for _, ys in loader for y in ys]

    assert order(1) == order(1) and order(1) != order(2)
    assert len(order(0)) == 48  # the last partial batch (2 images) is dropped
    rank0, rank1 = order(0, 0, 2), order(0, 1, 2)
    assert not set(rank0) & set(rank1)
    val0 = DeviceLoader(
        dataset, batch_size=8, train=False, batch_transform=identity, device="cpu", rank=0, world_size=2
    )
    val1 = DeviceLoader(
        dataset, batch_size=8, train=False, batch_transform=identity, device="cpu", rank=1, world_size=2
    )
    seen = sorted(int(y) for loader in (val0, val1) for _, ys in loader for y in ys)
    assert seen == list(range(50)), "validation shards must cover every image exactly once"


def test_small_training_set_keeps_its_only_batch():
    dataset = torch.utils.data.TensorDataset(torch.zeros(5, 1), torch.zeros(5, dtype=torch.long))
    loader = DeviceLoader(dataset, batch_size=8, train=True, batch_transform=lambda x, g=None: x, device="cpu")
    assert len(loader) == 1


def test_fixed_subset_is_independent_of_run_seed():
    dataset = torch.utils.data.TensorDataset(torch.arange(100))
    a, b = fixed_subset(dataset, 10), fixed_subset(dataset, 10)
    assert len(a) == 10 and [a[i] for i in range(10)] == [b[i] for i in range(10)]
    assert fixed_subset(dataset, 1000) is dataset
