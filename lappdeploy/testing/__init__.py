"""Helpers for tests: tiny models with `example_inputs()` and generated files in real dataset formats."""

from lappdeploy.testing.fake_data import write_cifar, write_fashion_mnist, write_idx, write_imagefolder
from lappdeploy.testing.tiny_models import TinyConvNet, TinyResNet, tiny_convnet, tiny_resnet

__all__ = [
    "TinyConvNet",
    "TinyResNet",
    "tiny_convnet",
    "tiny_resnet",
    "write_cifar",
    "write_fashion_mnist",
    "write_idx",
    "write_imagefolder",
]
