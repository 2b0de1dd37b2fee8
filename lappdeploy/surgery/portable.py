"""Portable model checkpoints: architecture name + builder kwargs + input card + the structural surgery
steps applied since (bypass, channel plan, folding) + state_dict.

No pickled classes: a file loads with `torch.load(weights_only=True)` in any process that has
lappdeploy (and the same registered architecture), on any torch version that reads the format.
`load_model` rebuilds the dense architecture, replays the recorded steps, then loads the weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lappdeploy import __version__
from lappdeploy.errors import ConfigError, LappDeployError
from lappdeploy.io import atomic_torch_save
from lappdeploy.models import create_model, model_card
from lappdeploy.models.portable import (
    FORMAT,
    FORMAT_VERSION,
    ModelCard,
    checkpoint_in,
    cpu_state_dict,
    read_checkpoint,
    unwrap,
)
from lappdeploy.models.sources import check_runs_on
from lappdeploy.models.weights import load_weights_, read_weights
from lappdeploy.surgery.history import replay_, surgery_steps

__all__ = ["LoadedModel", "checkpoint_payload", "load_initial_model", "load_model", "model_from_spec", "save_model"]


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


def load_initial_model(
    source: str, model: nn.Module, card: ModelCard, *, download: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The model a run starts from: `model` (built from the run's --model for its dataset, described by
    `card`) with the weights of `source`, which is a lappdeploy run directory or checkpoint (its recorded
    surgery comes with it; it must be the same architecture, builder arguments and input), a state dict,
    .safetensors or checkpoint file, or named pretrained weights (`lappdeploy.models.weights`). Returns the
    model in training mode and what was loaded (for report.json)."""
    is_run = Path(source).expanduser().is_dir()  # a run directory: its model.pt or checkpoint.pt
    weights = None if is_run else read_weights(source, architecture=card.architecture, download=download)
    if weights is None or weights.lappdeploy:
        return _lappdeploy_initial_model(source, card), {"source": source, "format": "lappdeploy"}
    report = load_weights_(model, weights)
    return model.train(), report


def _lappdeploy_initial_model(source: str, card: ModelCard) -> nn.Module:
    try:
        loaded = load_model(source)
    except LappDeployError as exc:
        raise ConfigError(f"--init-from {source}: {exc}") from None
    got = loaded.card
    for what, a, b in (
        ("architecture", got.architecture, card.architecture),
        ("builder arguments", got.kwargs, card.kwargs),
        ("input shape", tuple(got.input_shape), tuple(card.input_shape)),
    ):
        if a != b:
            raise ConfigError(f"--init-from {source} has {what} {a}, this run trains {b}; start from a matching model")
    return loaded.model.train()


def model_from_spec(
    spec: str,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    model_kwargs: dict[str, Any] | None = None,
    init_from: str | None = None,
    download: bool = False,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
    dataset: str | None = None,
    class_names: list[str] | None = None,
) -> tuple[LoadedModel, dict[str, Any] | None]:
    """A dense model of `spec` (a registered name, timm:NAME or package.module:factory) for `num_classes`
    classes and `input_shape` inputs, with the weights of `init_from` (anything `--init-from` accepts) or
    random ones; returns it in eval mode with its card, and what was loaded (None for random weights)."""
    model = create_model(spec, num_classes=num_classes, in_channels=input_shape[0], **(model_kwargs or {}))
    card = model_card(model, input_shape=input_shape, mean=mean, std=std, dataset=dataset, class_names=class_names)
    if ":" in spec:
        check_runs_on(model, input_shape, num_classes, spec)
    init = None
    if init_from is not None:
        model, init = load_initial_model(init_from, model, card, download=download)
        card.extra["init_from"] = init
    return LoadedModel(model=model.eval(), card=card), init
