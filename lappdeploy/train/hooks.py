"""Hooks: how a pruning method (or anything else) plugs into a training loop without editing it.

Our `Trainer` is one client of this protocol; a user's own loop can call the same methods at the same
points. Every method is optional.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lappdeploy.train.engine import Trainer

__all__ = ["Hook"]


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

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def after_backward(self, trainer: Trainer) -> None:
        """Gradients are ready (unscaled under AMP); the optimizer has not stepped yet."""

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor) -> None:
        """After the optimizer step; `loss` is the step's (unsynchronised, still on-device) loss."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After evaluation; `metrics` is this epoch's record and may be extended by the hook."""

    def on_checkpoint(self, trainer: Trainer, path: str) -> None: ...

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """A record another hook passed to `trainer.log` (e.g. LAPP's per-step budget and thresholds)."""

    def on_train_end(self, trainer: Trainer, history: list[dict[str, Any]]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], trainer: Trainer) -> None: ...
