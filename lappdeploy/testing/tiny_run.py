"""A run directory as `lappdeploy train` leaves it (model.pt + config.yaml), made in milliseconds."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from lappdeploy.config import TrainConfig
from lappdeploy.models import create_model, model_card
from lappdeploy.surgery import analyze, random_plan, remove_channels_, save_model
from lappdeploy.testing.reference import randomize_norms_

__all__ = ["write_tiny_run"]


def write_tiny_run(
    directory: str | Path, *, shape: tuple[int, int, int] = (3, 16, 16), seed: int = 0, keep_ratio: float | None = None
) -> Path:
    """An untrained `tiny_resnet` (random BN statistics) saved as DIR/model.pt with the synthetic dataset
    of `shape` in DIR/config.yaml, so later commands (export, INT8 calibration) find model and data.
    With `keep_ratio`, its channels are first pruned by a random plan keeping that share of each group."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = TrainConfig(model="tiny_resnet", dataset="synthetic", synthetic_shape=shape, synthetic_samples=64)
    model = randomize_norms_(create_model("tiny_resnet", num_classes=10, in_channels=shape[0]), seed=seed)
    if keep_ratio is not None:
        x = torch.zeros((2, *shape))
        groups = analyze(model, x)
        remove_channels_(model, random_plan(groups, keep_ratio, seed=seed), x, groups=groups)
    card = model_card(model, input_shape=shape, mean=(0.5,) * shape[0], std=(0.25,) * shape[0], dataset="synthetic")
    save_model(model, directory / "model.pt", card)
    (directory / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return directory
