"""A bare training loop for driving a pruning hook in tests: the attributes hooks read, no training."""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.data import TensorDataset

from lappdeploy.data import HeldOut

__all__ = ["bare_loop", "drive_to_target"]


def bare_loop(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> types.SimpleNamespace:
    """`model` with an optimizer of learning rate 0, 10 steps per epoch, and `images` (with `labels`, default
    all 0) as its held-out images, normalised already."""
    labels = labels if labels is not None else torch.zeros(len(images), dtype=torch.long)
    holdout = HeldOut(TensorDataset(images, labels), lambda x, _generator: x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    return types.SimpleNamespace(
        module=model, optimizer=optimizer, steps_per_epoch=10, state=types.SimpleNamespace(step=0), holdout=holdout
    )


def drive_to_target(hook, loop, max_steps: int = 200) -> None:
    """The hook's calls of a training loop with no training between them (recovery left out), until the
    method has removed its channels; AssertionError if it does not within `max_steps` steps."""
    hook.on_train_start(loop)
    while not hook.frozen and loop.state.step < max_steps:
        loop.state.step += 1
        hook.on_step_end(loop, torch.tensor(0.0))
    assert hook.frozen, "the method did not reach its target"
