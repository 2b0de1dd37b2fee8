"""A complete training run into a run directory (the layout is `lappdeploy.rundir`'s contract).

A `RunExtension` (e.g. `lappdeploy compress`'s pruning method) adds its section to config.yaml, hooks
to the loop, report fields and files of its own (plan.json).

Resolve -> stage -> commit: everything that can be wrong with the input is checked before the first
byte is written; the final model and report.json (whose presence marks the run complete) come last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

from lappdeploy.config import TrainConfig
from lappdeploy.data import (
    DATASETS,
    DataBundle,
    DatasetInfo,
    DeviceLoader,
    HeldOut,
    auto_workers,
    fixed_subset,
    locate_dataset,
    split_holdout,
)
from lappdeploy.environment import versions
from lappdeploy.errors import ConfigError, LappDeployError
from lappdeploy.hooks import Hook
from lappdeploy.io import atomic_write_json, atomic_write_text
from lappdeploy.models import ModelCard, count_macs, model_spec, resolve_input_shape
from lappdeploy.models.weights import preprocessing_defaults
from lappdeploy.rundir import (
    RUN,
    RunDir,
    check_new_output,
    check_resumable,
    check_resumed_config,
    create_output,
    data_request,
    write_run_config,
)
from lappdeploy.surgery import save_model
from lappdeploy.surgery.portable import model_from_spec
from lappdeploy.train.distill import load_teacher
from lappdeploy.train.distributed import DistContext, init_distributed
from lappdeploy.train.engine import Trainer, check_device_support
from lappdeploy.train.tensorboard import TensorBoardWriter, check_tensorboard

__all__ = ["RunExtension", "run_training"]

logger = logging.getLogger(__name__)


class RunExtension(Protocol):
    """What a run can be extended with (all methods are called on every DDP rank)."""

    def config_dict(self) -> dict[str, Any]:
        """The `method:` section of config.yaml ({"name": method, **options})."""

    def prepare_(self, model: torch.nn.Module, example_inputs: torch.Tensor) -> Sequence[Hook]:
        """Change the fresh model in place if needed (before the optimizer exists); return hooks."""

    def finish_(self, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """After training, before the model is saved: (report fields, {file name: JSON data})."""


def _input_shape(config: TrainConfig, info: DatasetInfo) -> tuple[int, int, int]:
    shape = resolve_input_shape(config.model, info.in_channels, info.image_hw, config.image_size)
    if config.image_size is None and info.image_hw is not None and shape[1:] != info.image_hw:
        logger.warning(
            "%s needs inputs of at least %d px; %s images are resized from %s to %s px",
            config.model,
            model_spec(config.model).min_input_size,
            info.name,
            "x".join(map(str, info.image_hw)),
            "x".join(map(str, shape[1:])),
        )
    return shape


class _MetricsWriter(Hook):
    """Appends each epoch's metrics to metrics.jsonl (rank 0 only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self._append(metrics)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self._append(record)  # per-step records of pruning methods, each with a fractional "epoch"

    def _append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _writers(run: RunDir, config: TrainConfig) -> list[Hook]:
    """The hooks that write the run's metrics: metrics.jsonl, and TensorBoard events with --tensorboard."""
    writers: list[Hook] = [_MetricsWriter(run.metrics)]
    if config.tensorboard:
        writers.append(TensorBoardWriter(run.root / "tensorboard"))
    return writers


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Keep the lines of epochs <= `epochs` (a crash may have logged an epoch its checkpoint missed)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line).get("epoch", 0) <= epochs:
                kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def run_training(
    config: TrainConfig,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
    dist: DistContext | None = None,
    extension: RunExtension | None = None,
) -> dict[str, Any]:
    """Train `config` into run directory `out` and return the report (also written to report.json).

    Works unchanged under `torchrun` (DDP): rank 0 writes all files, every rank trains.
    """
    own_dist = dist is None
    dist = dist or init_distributed(config.device)
    try:
        method = extension.config_dict() if extension is not None else None
        run, info, config = _resolve(config, out, force=force, resume=resume, dist=dist, method=method)
        input_shape = _input_shape(config, info)
        model, card, init_report = _model_and_card(config, info, input_shape)
        distillation = load_teacher(config, card, model) if config.distill is not None else None
        # the method changes the fresh model (bypass) and checks its target: still before any write
        example_inputs = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(config.seed))
        method_hooks = list(extension.prepare_(model, example_inputs)) if extension is not None else []
        data = _data(config, info, input_shape, dist)
        if dist.is_main and not resume:
            create_output(run.root, force=force)
            write_run_config(run, config, extension.config_dict() if extension is not None else None)
        dist.barrier()
        # method hooks first (the progress display reads what they add to the metrics); the writer last,
        # so that metrics added by other hooks' on_epoch_end are logged too
        # (the distillation adds the teacher's time to the epoch's metrics, so it comes before the writers too)
        own = [distillation] if distillation is not None else []
        all_hooks = method_hooks + own + list(hooks) + (_writers(run, config) if dist.is_main else [])
        trainer = Trainer(
            model, data.train, data.val, config=config, hooks=all_hooks, dist=dist, card=card, distillation=distillation
        )
        trainer.attach_holdout(data.holdout, data.holdout_loader)
        bundle = data.bundle
        resumed_from = _resume(trainer, run, dist) if resume else 0
        history = trainer.fit(checkpoint_path=str(run.checkpoint))
        extra_report, extra_files = extension.finish_(trainer.module) if extension is not None else ({}, {})
        report = _report(config, trainer, bundle, history, dist, resumed_from) | extra_report
        report["init_from"] = init_report
        report["distill"] = _distill_report(distillation, history)
        if dist.is_main:
            _commit(run, trainer.module, trainer.card, report, extra_files)
        dist.barrier()
        return report
    finally:
        if own_dist:
            dist.shutdown()


def _resolve(
    config: TrainConfig, out, *, force: bool, resume: bool, dist: DistContext, method: dict[str, Any] | None
) -> tuple[RunDir, DatasetInfo, TrainConfig]:
    """Check everything (no writes): the run directory (resumed: what may change, the run-directory contract),
    the model, the device, the dataset's files; returns them with the config resolved (input normalisation and
    size from named pretrained weights). `method`: the compress run's method section (None: a training run)."""
    run = check_resumable(out) if resume else RunDir(check_new_output(out, RUN, force=force))
    if resume:
        check_resumed_config(run, config, method)
    model_spec(config.model)
    check_device_support(config, dist.device)
    if config.tensorboard:
        check_tensorboard()
    if dist.is_main:  # rank 0 first: it may download
        info = locate_dataset(config.dataset, data_request(config))
    dist.barrier()
    if not dist.is_main:
        info = locate_dataset(config.dataset, data_request(config))
    if info.location:
        logger.info("%s found in %s", config.dataset, info.location)
    config = _preprocessing_of_weights(config, info)
    return run, _normalised(info, config), config


def _preprocessing_of_weights(config: TrainConfig, info: DatasetInfo) -> TrainConfig:
    """Where --init-from names pretrained weights: their mean, std and image size for what the run leaves unset."""
    native = info.image_hw[0] if info.image_hw else None
    seen = preprocessing_defaults(config.init_from, config.model, in_channels=info.in_channels, native_size=native)
    changes = {k: v for k, v in seen.items() if getattr(config, k) is None}
    if "std" in changes and "mean" not in changes:
        del changes["std"]
    if changes:
        logger.info("--init-from %s: as the weights were trained: %s", config.init_from, changes)
    return config.replace(**changes)


def _normalised(info: DatasetInfo, config: TrainConfig) -> DatasetInfo:
    if config.mean is None:
        return info
    if len(config.mean) != info.in_channels:
        raise ConfigError(
            f"--mean/--std give {len(config.mean)} values; {info.name} images have {info.in_channels} channel(s)"
        )
    return dataclasses.replace(info, mean=tuple(config.mean), std=tuple(config.std))


def _model_and_card(config: TrainConfig, info: DatasetInfo, input_shape) -> tuple[torch.nn.Module, ModelCard, dict]:
    torch.manual_seed(config.seed)  # identical initial weights on every rank and every run
    loaded, init_report = model_from_spec(
        config.model,
        num_classes=info.num_classes,
        input_shape=input_shape,
        model_kwargs=config.model_kwargs,
        init_from=config.init_from,
        download=config.download,
        mean=info.mean,
        std=info.std,
        dataset=config.dataset,
        class_names=info.class_names or None,
    )
    if init_report is not None:
        _log_init(init_report)
    return loaded.model.train(), loaded.card, init_report


def _distill_report(distillation, history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The teacher and its share of the training time (what the teacher's forward passes took of the epochs)."""
    if distillation is None:
        return None
    teacher_s = sum(h.get("teacher_s", 0.0) for h in history)
    train_s = sum(h.get("train_s", 0.0) for h in history)
    return {**distillation.report(), "teacher_share": round(teacher_s / train_s, 4) if train_s else None}


def _log_init(report: dict) -> None:
    if report["format"] != "lappdeploy":
        logger.info("--init-from %s: %s", report["source"], report["format"])
    head, stem = report.get("classifier_replaced"), report.get("stem_adapted")
    if head:
        logger.warning(
            "classifier %s replaced by a fresh one: the weights have %d classes, the dataset %d",
            head["module"], head["weights_classes"], head["classes"],
        )  # fmt: skip
    if stem:
        logger.warning(
            "stem %s adapted from %d to %d input channels", stem["module"], stem["weights_channels"], stem["channels"]
        )


@dataclass
class _Data:
    bundle: DataBundle
    train: DeviceLoader
    val: DeviceLoader
    holdout: HeldOut | None
    holdout_loader: DeviceLoader | None


def _data(config: TrainConfig, info: DatasetInfo, input_shape, dist: DistContext) -> _Data:
    """Load the dataset; the training subset minus the held-out images; loaders on the run's device."""
    request = data_request(config, input_shape[1] if input_shape[1:] != info.image_hw else None)
    bundle = DATASETS.get(config.dataset).load(info, request)
    if tuple(bundle.input_shape) != tuple(input_shape):
        raise LappDeployError(f"{config.dataset} loads {bundle.input_shape} images, expected {input_shape}")
    train_set = fixed_subset(bundle.train, config.train_subset)
    holdout = config.holdout or 0
    if holdout and len(train_set) - holdout < config.batch_size:
        raise ConfigError(
            f"--holdout {holdout} leaves {len(train_set) - holdout} of {len(train_set)} training images, less than "
            f"one batch ({config.batch_size}); hold out fewer images"
        )
    train_set, holdout_set = split_holdout(train_set, holdout)
    val_set = fixed_subset(bundle.val, config.val_subset)
    workers = config.workers if config.workers is not None else auto_workers(bundle.in_memory, dist.world_size)
    common = {"device": dist.device, "seed": config.seed, "rank": dist.rank, "world_size": dist.world_size}
    common.update(workers=workers)
    train = DeviceLoader(
        train_set, batch_size=config.batch_size, train=True, batch_transform=bundle.train_batch_transform, **common
    )
    val = DeviceLoader(
        val_set, batch_size=config.batch_size * 2, train=False, batch_transform=bundle.val_batch_transform, **common
    )
    held, held_loader = None, None
    if holdout:
        held = HeldOut(holdout_set, bundle.val_batch_transform)
        held_loader = DeviceLoader(
            holdout_set,
            batch_size=config.batch_size * 2,
            train=False,
            batch_transform=bundle.val_batch_transform,
            **common,
        )
    logger.info(
        "training %s on %s (%s): %d train / %d held-out / %d val images, %d steps per epoch, %d process(es) on %s",
        config.model, config.dataset, "x".join(map(str, input_shape)), len(train_set), holdout, len(val_set),
        len(train), dist.world_size, dist.device,
    )  # fmt: skip
    return _Data(bundle, train, val, held, held_loader)


def _resume(trainer: Trainer, run: RunDir, dist: DistContext) -> int:
    """Load the last checkpoint (if the run got that far); returns the epoch it resumes from."""
    resumed_from = 0
    if run.checkpoint.is_file():
        trainer.load_checkpoint(str(run.checkpoint))
        resumed_from = trainer.state.epoch
    if dist.is_main:
        _truncate_metrics(run.metrics, resumed_from)
    dist.barrier()
    return resumed_from


def _report(config: TrainConfig, trainer: Trainer, bundle: DataBundle, history, dist, resumed_from: int) -> dict:
    final = history[-1]
    macs = count_macs(trainer.module, bundle.input_shape, device=dist.device)
    images = sum(h["train_samples"] for h in history)
    train_s = max(sum(h["train_s"] for h in history), 1e-9)
    return {
        "model": config.model,
        "dataset": config.dataset,
        "top1": final.get("val_top1"),
        "top5": final.get("val_top5"),
        "val_loss": final.get("val_loss"),
        "holdout_top1": final.get("holdout_top1"),  # None without --holdout: the number to choose knobs by
        "macs": macs.macs,
        "params": macs.params,
        "epochs": config.epochs,
        "wall_s": round(trainer.state.elapsed_s, 2),
        "train_images_per_s": round(images / train_s, 1),
        "steps": trainer.state.step,
        "input_shape": list(bundle.input_shape),
        "num_classes": bundle.info.num_classes,
        "world_size": dist.world_size,
        "device": str(dist.device),
        "amp": config.amp_dtype if config.amp else None,
        "channels_last": config.channels_last,
        "seed": config.seed,
        "resumed_from_epoch": resumed_from or None,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }


def _commit(run: RunDir, model: torch.nn.Module, card: ModelCard, report: dict, files: dict[str, Any]) -> None:
    """The method's files, the portable model, then report.json, whose presence marks the run complete."""
    for name, data in files.items():
        atomic_write_json(run.root / name, data)
    save_model(model, run.model, card)
    atomic_write_json(run.report, report)
