"""The one unit every reconstruction mode is compared in: per layer reading removed channels, the relative squared
error of its output after its BatchNorm (its output where none follows; kept channels only) against the original
network's, on held-out images, through the whole pruned network before it. What a layer's fit minimised on its
calibration samples (ls: the output before the BatchNorm; ldrf: an embedding) is not comparable across modes."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from lappdeploy.methods.options import DIAGNOSTIC_IMAGES
from lappdeploy.methods.reconstruct.layers import Consumer
from lappdeploy.methods.reconstruct.passes import evaluating
from lappdeploy.surgery.graph import resolve_module

__all__ = ["DIAGNOSTIC_IMAGES", "output_errors"]

_BATCH = 16  # images per forward pass: one batch's outputs of every measured layer are held at once


def _watch(network: nn.Module, consumers: list[Consumer], keep: bool) -> tuple[dict, list]:
    """Forward hooks recording each consumer's output (after its BatchNorm), its kept channels when `keep`."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for consumer in consumers:
        module = resolve_module(network, consumer.bn or consumer.name)
        channels = consumer.out_keep if keep else None

        def record(_module, _args, output, name=consumer.name, channels=channels) -> None:
            seen[name] = (output[:, channels] if channels is not None else output).detach().double()

        handles.append(module.register_forward_hook(record))
    return seen, handles


def output_errors(teacher: nn.Module, model: nn.Module, consumers: list[Consumer], images: torch.Tensor) -> dict:
    """{layer: |y_pruned - y_teacher|^2 / |y_teacher|^2} over `images`, rounded to 6 digits."""
    wanted, teacher_handles = _watch(teacher, consumers, keep=True)
    got, student_handles = _watch(model, consumers, keep=False)
    error, energy = defaultdict(float), defaultdict(float)
    try:
        with evaluating(teacher), evaluating(model):
            for chunk in images.split(_BATCH):
                teacher(chunk.to(next(teacher.parameters()).dtype))
                model(chunk)
                for name, target in wanted.items():
                    if name in got and got[name].shape == target.shape:
                        error[name] += float(((got[name] - target) ** 2).sum())
                        energy[name] += float((target**2).sum())
                wanted.clear()
                got.clear()
    finally:
        for handle in teacher_handles + student_handles:
            handle.remove()
    return {name: round(error[name] / energy[name], 6) for name in error if energy[name] > 0}
