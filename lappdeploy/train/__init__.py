"""Training: the loop (`Trainer`), its extension protocol (`Hook`), and complete runs into a run directory."""

from lappdeploy.train.distributed import DistContext, init_distributed, resolve_device
from lappdeploy.train.engine import TRAIN_STATE_FORMAT, Trainer, TrainingDivergedError, TrainState, evaluate
from lappdeploy.train.hooks import Hook
from lappdeploy.train.run import RunDir, check_run_dir, data_request, read_config, run_training
from lappdeploy.train.schedule import LRSchedule

__all__ = [
    "TRAIN_STATE_FORMAT",
    "DistContext",
    "Hook",
    "LRSchedule",
    "RunDir",
    "TrainState",
    "Trainer",
    "TrainingDivergedError",
    "check_run_dir",
    "data_request",
    "evaluate",
    "init_distributed",
    "read_config",
    "resolve_device",
    "run_training",
]
