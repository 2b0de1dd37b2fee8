"""Hooks: how a pruning method (or anything else) plugs into a training loop without editing it.

This module imports no trainer (and not even torch), so a pruning method can be driven by any loop:
lappdeploy's `Trainer` is one client of the protocol, a user's own loop can call the same methods at
the same points. `TrainingLoop` lists what hooks may read from the loop they are called by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

__all__ = ["Hook", "LoopState", "TrainingLoop"]


class LoopState(Protocol):
    step: int  # optimizer steps completed (global, identical on every rank)
    epoch: int  # epochs completed


class TrainingLoop(Protocol):
    """What a hook reads from the loop that calls it. Required: `module` (the unwrapped model),
    `optimizer`, `steps_per_epoch`, `state.step`. Optional, used when present: `device`, `dist`
    (`is_distributed`, `world_size`, `all_reduce_sum_`, `broadcast_object`), `scaler` (fp16 gradient
    scaling), `rewrap_()` (re-wrap DDP after the model's parameters were replaced), `log(record)`, and
    `holdout` (held-out training images, `lappdeploy.data.HeldOut`, for methods that decide on data)."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    state: LoopState


class Hook:
    """Base class with no-op callbacks, called in this order:

    on_train_start -> per epoch: on_epoch_start -> per step: (forward, backward) after_backward,
    (optimizer step) on_step_end -> (evaluation) on_epoch_end -> (checkpoint written) on_checkpoint
    -> on_train_end.

    `state_dict` is saved in every training checkpoint under `name`; on resume `load_state_dict` is
    called *before* the model weights are loaded, so a hook that changed the architecture (channel
    removal) can rebuild it first.
    """

    @property
    def name(self) -> str:
        return type(self).__name__

    def on_train_start(self, loop: TrainingLoop) -> None: ...

    def on_epoch_start(self, loop: TrainingLoop, epoch: int) -> None: ...

    def after_backward(self, loop: TrainingLoop) -> None:
        """Gradients are ready (unscaled under AMP); the optimizer has not stepped yet."""

    def on_step_end(self, loop: TrainingLoop, loss: torch.Tensor) -> None:
        """After the optimizer step; `loss` is the step's (unsynchronised, still on-device) loss."""

    def on_epoch_end(self, loop: TrainingLoop, metrics: dict[str, Any]) -> None:
        """After evaluation; `metrics` is this epoch's record and may be extended by the hook."""

    def on_checkpoint(self, loop: TrainingLoop, path: str) -> None: ...

    def on_log(self, loop: TrainingLoop, record: dict[str, Any]) -> None:
        """A record another hook passed to `loop.log` (e.g. LAPP's per-step budget and thresholds)."""

    def on_train_end(self, loop: TrainingLoop, history: list[dict[str, Any]]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], loop: TrainingLoop) -> None: ...
