"""The structural steps applied to a model (bypass, channel removal, folding), kept on the model so a
portable checkpoint can rebuild the same structure from the dense architecture before loading weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["SURGERY_ATTR", "record_step", "recorded_plans", "replay_", "surgery_steps"]

SURGERY_ATTR = "lappdeploy_surgery"  # list of {"op": str, **arguments}, JSON-compatible, in order


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
    from lappdeploy.surgery.bypass import add_bypass_, fold_bn_, fold_bypass_
    from lappdeploy.surgery.graph import SurgeryError
    from lappdeploy.surgery.plan import ChannelPlan
    from lappdeploy.surgery.remove import remove_channels_

    for step in steps:
        op = step.get("op")
        if op == "add_bypass":
            add_bypass_(model, pairs=[tuple(p) for p in step["pairs"]])
        elif op == "remove_channels":
            remove_channels_(model, ChannelPlan.from_dict(step["plan"]), example_inputs)
        elif op == "fold_bypass":
            fold_bypass_(model)
        elif op == "fold_bn":
            fold_bn_(model, pairs=[tuple(p) for p in step["pairs"]])
        else:
            raise SurgeryError(f"unknown surgery step {op!r} in the checkpoint; upgrade lappdeploy")
    return model
