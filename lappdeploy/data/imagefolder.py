"""ImageFolder: --data-dir DIR with DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg (ImageNet layout).

Images are decoded per sample in DataLoader workers with the standard ImageNet transforms
(RandomResizedCrop + flip for training; resize to size/0.875 + centre crop for validation).
"""

from __future__ import annotations

from pathlib import Path

from lappdeploy.data.base import DataBundle, DataRequest, DatasetInfo
from lappdeploy.errors import DataNotFoundError

__all__ = ["load", "locate"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224  # px
CENTER_CROP_FRACTION = 0.875  # validation: resize to size / 0.875, then centre-crop `size`


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _root(request: DataRequest) -> Path:
    if not request.data_dir:
        raise DataNotFoundError("imagefolder needs --data-dir DIR with DIR/train/<class>/ and DIR/val/<class>/ folders")
    root = Path(request.data_dir).expanduser()
    missing = [s for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise DataNotFoundError(
            f"imagefolder: {root} has no {' or '.join(s + '/' for s in missing)} folder; expected "
            f"{root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg"
        )
    return root


def locate(request: DataRequest) -> DatasetInfo:
    root = _root(request)
    classes = _class_dirs(root / "train")
    if not classes:
        raise DataNotFoundError(f"imagefolder: {root}/train has no class folders")
    unknown = sorted(set(_class_dirs(root / "val")) - set(classes))
    if unknown:
        raise DataNotFoundError(f"imagefolder: val/ has classes missing from train/: {', '.join(unknown[:5])}")
    return DatasetInfo(
        name="imagefolder",
        in_channels=3,
        image_hw=None,
        num_classes=len(classes),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=tuple(classes),
        location=str(root),
    )


def load(info: DatasetInfo, request: DataRequest) -> DataBundle:
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    root = _root(request)
    size = request.image_size or DEFAULT_SIZE
    normalize = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std)]
    if request.augment:
        train_tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *normalize])
    else:
        train_tf = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *normalize])
    val_tf = v2.Compose(
        [v2.Resize(round(size / CENTER_CROP_FRACTION), antialias=True), v2.CenterCrop(size), *normalize]
    )
    class_to_idx = {name: i for i, name in enumerate(info.class_names)}

    class _Folder(datasets.ImageFolder):
        def find_classes(self, directory):  # val/ uses train/'s class indices even if it lacks a class
            present = [c for c in _class_dirs(Path(directory)) if c in class_to_idx]
            return present, {c: class_to_idx[c] for c in present}

    def rgb(path: str):
        from PIL import Image

        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")

    try:
        train = _Folder(str(root / "train"), transform=train_tf, loader=rgb)
        val = _Folder(str(root / "val"), transform=val_tf, loader=rgb)
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"imagefolder: {exc}") from None
    info = DatasetInfo(**{**vars(info), "train_size": len(train), "val_size": len(val)})
    return DataBundle(info, train, val, (3, size, size), _identity, _identity, in_memory=False)


def _identity(x, generator=None):
    return x
