"""A user's model, trained the way users train: plain PyTorch, no lappdeploy. A torchvision ResNet-18 (or a
timm model) on Fashion-MNIST, saved as a state dict with torch.save, the starting point of
benchmarks/own_model/compress_own.py.

    python benchmarks/own_model/train_plain.py --arch resnet18 --epochs 4 --out r18_fmnist.pth
    python benchmarks/own_model/train_plain.py --arch timm:efficientnet_b0 --epochs 4 --out effb0.pth

Reads the IDX files of Debian's dataset-fashion-mnist package (or --data-dir); 60,000 training images
(normalised with the dataset's mean 0.2860 and std 0.3530, random 2-px shifts and flips), SGD with Nesterov
momentum, cosine learning rate, batch 128; prints the test top-1 after every epoch.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = 0.2860, 0.3530


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(directory: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(next(directory.glob(f"{split}-images-idx3-ubyte*")))
    labels = read_idx(next(directory.glob(f"{split}-labels-idx1-ubyte*")))
    x = (torch.from_numpy(images.copy()).float().div(255).unsqueeze(1) - MEAN) / STD
    return x, torch.from_numpy(labels.astype(np.int64))


def build(arch: str) -> nn.Module:
    """The user's network for 1-channel 28x28 images and 10 classes."""
    if arch.startswith("timm:"):
        import timm

        return timm.create_model(arch[5:], pretrained=False, num_classes=10, in_chans=1)
    import torchvision

    model = torchvision.models.get_model(arch, weights=None, num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # grey images (what a user adapting ResNet-18 writes)
    return model


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=-MEAN / STD)
    dy, dx = torch.randint(0, 5, (2,), generator=generator).tolist()
    x = padded[:, :, dy : dy + 28, dx : dx + 28]
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i : i + 512]).argmax(1) == y[i : i + 512]).sum()) for i in range(0, len(x), 512))
    return correct / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", required=True, help="where to torch.save the state dict")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    x_train, y_train = load(Path(args.data_dir), "train")
    x_test, y_test = load(Path(args.data_dir), "t10k")
    model = build(args.arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps, batch = args.epochs * math.ceil(len(x_train) / 128), 128
    step, started, log = 0, time.perf_counter(), []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(order), batch):
            index = order[i : i + batch]
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(model(augment(x_train[index], generator)), y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        top1 = accuracy(model, x_test, y_test)
        log.append({"epoch": epoch + 1, "test_top1": top1, "wall_s": round(time.perf_counter() - started, 1)})
        print(json.dumps(log[-1]), flush=True)
    torch.save(model.state_dict(), args.out)  # what users save: the weights only
    Path(args.out).with_suffix(".json").write_text(json.dumps({"arch": args.arch, "epochs": log}, indent=1))


if __name__ == "__main__":
    main()
