"""Portable model checkpoints: architecture name + builder kwargs + input card + the structural surgery
steps applied since (bypass, channel plan, folding) + state_dict.

No pickled classes: a file loads with `torch.load(weights_only=True)` in any process that has
lappdeploy (and the same registered architecture), on any torch version that reads the format.
`load_model` rebuilds the dense architecture, replays the recorded steps, then loads the weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lappdeploy import __version__
from lappdeploy.errors import LappDeployError
from lappdeploy.io import atomic_torch_save
from lappdeploy.models import create_model
from lappdeploy.models.portable import (
    FORMAT,
    FORMAT_VERSION,
    ModelCard,
    checkpoint_in,
    cpu_state_dict,
    read_checkpoint,
    unwrap,
)
from lappdeploy.surgery.history import replay_, surgery_steps

__all__ = ["LoadedModel", "checkpoint_payload", "load_model", "save_model"]


@dataclass
class LoadedModel:
    model: nn.Module
    card: ModelCard


def checkpoint_payload(model: nn.Module, card: ModelCard) -> dict[str, Any]:
    state = cpu_state_dict(model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lappdeploy_version": __version__,
        "card": card.to_dict(),
        "surgery": surgery_steps(unwrap(model)),
        "state_dict": state,
    }


def save_model(model: nn.Module, path: str | os.PathLike[str], card: ModelCard) -> None:
    """Write `model` atomically as a portable checkpoint."""
    atomic_torch_save(checkpoint_payload(model, card), path)


def load_model(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the architecture named in a checkpoint (model.pt or checkpoint.pt, or a run directory
    holding one), replay its surgery (bypass, channel removal, folding) and load its weights; the model is
    returned in eval mode."""
    path = checkpoint_in(path)
    payload = read_checkpoint(path)
    if payload["card"] is None:
        raise LappDeployError(f"{path} has no model card (written by a Trainer without one); it cannot be rebuilt")
    card = ModelCard.from_dict(payload["card"])
    model = create_model(card.architecture, **card.kwargs)
    if payload.get("surgery"):
        replay_(model, payload["surgery"], torch.zeros((2, *card.input_shape)))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise LappDeployError(
            f"weights in {path} do not fit architecture {card.architecture!r}: {str(exc).splitlines()[0]}"
        ) from None
    return LoadedModel(model=model.to(map_location).eval(), card=card)
