"""The structural steps applied to a model (bypass, channel removal, folding), kept on the model so a
portable checkpoint can rebuild the same structure from the dense architecture before loading weights.

Each step is recorded by the function that performs it (`record_step`) and replayed by the function that
module registers for it (`@replays(op)`): one table pairs every recorded op with its replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lappdeploy.errors import SurgeryError

__all__ = ["SURGERY_ATTR", "record_step", "recorded_plans", "replay_", "replays", "surgery_steps"]

SURGERY_ATTR = "lappdeploy_surgery"  # list of {"op": str, **arguments}, JSON-compatible, in order

Replay = Callable[[nn.Module, dict[str, Any], torch.Tensor], None]  # (model, recorded step, example inputs)
_REPLAYS: dict[str, Replay] = {}


def replays(op: str) -> Callable[[Replay], Replay]:
    """Register the function that re-applies recorded steps of kind `op`."""

    def register(replay: Replay) -> Replay:
        if op in _REPLAYS:
            raise ValueError(f"surgery step {op!r} already has a replay")
        _REPLAYS[op] = replay
        return replay

    return register


def surgery_steps(model: nn.Module) -> list[dict[str, Any]]:
    return list(getattr(model, SURGERY_ATTR, []))


def recorded_plans(model: nn.Module) -> list[dict[str, Any]]:
    """The channel plans (as dicts) of the remove_channels steps recorded on `model`, in order."""
    return [step["plan"] for step in surgery_steps(model) if step.get("op") == "remove_channels"]


def record_step(model: nn.Module, op: str, **arguments: Any) -> None:
    setattr(model, SURGERY_ATTR, [*surgery_steps(model), {"op": op, **arguments}])


def replay_(model: nn.Module, steps: list[dict[str, Any]], example_inputs: torch.Tensor) -> nn.Module:
    """Apply recorded `steps` to a freshly built dense `model` (in place): afterwards its structure, and so
    its state_dict keys and shapes, are those of the model the steps were recorded on."""
    for step in steps:
        replay = _REPLAYS.get(step.get("op"))
        if replay is None:
            raise SurgeryError(f"unknown surgery step {step.get('op')!r} in the checkpoint; upgrade lappdeploy")
        replay(model, step, example_inputs)
    return model
