"""Training: the loop (`Trainer`), its extension protocol (`Hook`), and complete runs into a run directory."""

from __future__ import annotations

import warnings
from typing import Any

from lappdeploy.hooks import Hook
from lappdeploy.rundir import RUN, RunDir, check_new_output, check_resumable, data_request, read_run_config
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


def _check_run_dir(out, *, force: bool = False, resume: bool = False) -> RunDir:
    return check_resumable(out) if resume else RunDir(check_new_output(out, RUN, force=force))


def _read_config(run: RunDir, *, extension_keys=None) -> tuple[Any, dict[str, Any]]:
    saved = read_run_config(run)
    method = dict(saved.method or {})
    if "name" in method:
        method["method"] = method.pop("name")
    return saved.train, method


# Moved to lappdeploy.rundir in 0.2 (one run-directory contract); these names stay until 0.3.
_MOVED = {"RunDir": RunDir, "data_request": data_request, "check_run_dir": _check_run_dir, "read_config": _read_config}


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'lappdeploy.train' has no attribute {name!r}")
    warnings.warn(
        f"lappdeploy.train.{name} is deprecated and will be removed in 0.3: use lappdeploy.rundir",
        DeprecationWarning,
        stacklevel=2,
    )
    return _MOVED[name]
