"""Training: the loop (`Trainer`), its extension protocol (`Hook`), and complete runs into a run directory."""

from __future__ import annotations

from lappdeploy.hooks import Hook
from lappdeploy.train.distributed import DistContext, init_distributed, resolve_device
from lappdeploy.train.engine import TRAIN_STATE_FORMAT, Trainer, TrainingDivergedError, TrainState, evaluate
from lappdeploy.train.run import run_training
from lappdeploy.train.schedule import LRSchedule

__all__ = [
    "TRAIN_STATE_FORMAT",
    "DistContext",
    "Hook",
    "LRSchedule",
    "TrainState",
    "Trainer",
    "TrainingDivergedError",
    "evaluate",
    "init_distributed",
    "resolve_device",
    "run_training",
]
