"""Helpers for tests: tiny models with `example_inputs()` and generated files in real dataset formats."""

from lappdeploy.testing.fake_data import write_cifar, write_fashion_mnist, write_idx, write_imagefolder
from lappdeploy.testing.reference import randomize_norms_, torch_pruning_macs
from lappdeploy.testing.tiny_models import TinyConvNet, TinyResNet, tiny_convnet, tiny_resnet

__all__ = [
    "TinyConvNet",
    "TinyResNet",
    "randomize_norms_",
    "tiny_convnet",
    "tiny_resnet",
    "torch_pruning_macs",
    "write_cifar",
    "write_fashion_mnist",
    "write_idx",
    "write_imagefolder",
]
