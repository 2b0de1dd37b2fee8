"""The model card and checkpoint files: what a deployer needs besides the weights, and reading a
checkpoint without building it. Writing and rebuilding a (pruned) model is `lappdeploy.surgery.portable`,
since it records and replays the surgery steps.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lappdeploy.errors import LappDeployError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelCard",
    "checkpoint_in",
    "cpu_state_dict",
    "model_card",
    "read_checkpoint",
    "unwrap",
]

FORMAT = "lappdeploy.model"
FORMAT_VERSION = 2  # 2: adds "surgery" (version-1 files, without it, still load)
_ARCH_ATTR = "lappdeploy_arch"  # set on every model built by create_model: {"name", "kwargs"}


@dataclass
class ModelCard:
    """What a deployer needs besides the weights: how to rebuild the network and feed it."""

    architecture: str
    kwargs: dict[str, Any]
    input_shape: tuple[int, int, int]  # C, H, W the model was trained at
    mean: tuple[float, ...] = ()  # per-channel input normalisation (after scaling pixels to [0, 1])
    std: tuple[float, ...] = ()
    dataset: str | None = None
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("input_shape", "mean", "std"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        data = dict(data)
        for key in ("input_shape", "mean", "std"):
            data[key] = tuple(data.get(key, ()))
        return cls(**data)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_card(model: nn.Module, *, input_shape, mean=(), std=(), dataset=None, class_names=None, **extra) -> ModelCard:
    arch = getattr(unwrap(model), _ARCH_ATTR, None)
    if arch is None:
        raise LappDeployError(
            f"{type(model).__name__} was not built by lappdeploy.create_model, so it cannot be saved portably; "
            "register its builder with lappdeploy.register_model and build it with create_model"
        )
    return ModelCard(
        architecture=arch["name"],
        kwargs=dict(arch["kwargs"]),
        input_shape=tuple(int(s) for s in input_shape),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        dataset=dataset,
        class_names=list(class_names) if class_names is not None else None,
        extra=extra,
    )


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights and buffers of the user's module (inside any DDP/compile wrapper), copied to the CPU.

    The per-module `_metadata` (state-dict versions) is kept: some modules (torchvision's MNASNet) refuse
    to load a state dict without it."""
    state = unwrap(model).state_dict()
    copied = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
    copied._metadata = getattr(state, "_metadata", None)
    return copied


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load and validate a lappdeploy checkpoint file (model or training state) without building it."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LappDeployError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise LappDeployError(f"{path} is a directory, not a checkpoint file") from None
    except Exception:  # unpickling errors come in many types
        raise LappDeployError(
            f"{path} is not a lappdeploy checkpoint: torch.load(weights_only=True) cannot read it (not a torch "
            "file, corrupt, or a pickled whole model); expected a model.pt or checkpoint.pt written by lappdeploy"
        ) from None
    if not isinstance(payload, dict) or "card" not in payload or "state_dict" not in payload:
        raise LappDeployError(
            f"{path} is not a lappdeploy checkpoint (no model card); expected a model.pt or checkpoint.pt "
            "written by lappdeploy"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise LappDeployError(
            f"{path} was written by a newer lappdeploy ({payload.get('lappdeploy_version')}); upgrade lappdeploy"
        )
    return payload


def checkpoint_in(target: str | os.PathLike[str]) -> Path:
    """The checkpoint a RUN_DIR|CHECKPOINT argument names: a file as is; in a run directory the final
    model.pt, else the training checkpoint.pt of a run still in progress."""
    target = Path(target)
    if not target.is_dir():
        return target
    for name in ("model.pt", "checkpoint.pt"):
        if (target / name).is_file():
            return target / name
    raise LappDeployError(f"{target} holds neither model.pt nor checkpoint.pt; is it a lappdeploy run directory?")
