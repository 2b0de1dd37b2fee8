"""Helpers for tests: tiny models with `example_inputs()`, generated files in real dataset formats, a tiny run
directory, a bare loop to drive pruning hooks, and (lappdeploy.testing.fake_tensorrt, imported explicitly) a
FAKE of the TensorRT API."""

from lappdeploy.models.tiny import TinyConvNet, TinyResNet, tiny_convnet, tiny_resnet
from lappdeploy.testing.fake_data import (
    quadrant_batches,
    write_cifar,
    write_fashion_mnist,
    write_idx,
    write_imagefolder,
)
from lappdeploy.testing.fresh_process import logits_in_fresh_process, reload_errors_in_fresh_process, same_threads_env
from lappdeploy.testing.loops import bare_loop, drive_to_target
from lappdeploy.testing.reference import randomize_norms_, torch_pruning_macs
from lappdeploy.testing.tiny_run import write_tiny_run

__all__ = [
    "TinyConvNet",
    "TinyResNet",
    "bare_loop",
    "drive_to_target",
    "logits_in_fresh_process",
    "quadrant_batches",
    "randomize_norms_",
    "reload_errors_in_fresh_process",
    "same_threads_env",
    "tiny_convnet",
    "tiny_resnet",
    "torch_pruning_macs",
    "write_cifar",
    "write_fashion_mnist",
    "write_idx",
    "write_imagefolder",
    "write_tiny_run",
]
