"""A complete training run into a run directory: the contract every later command reads.

    DIR/config.yaml     the resolved TrainConfig (re-run or --resume with it)
    DIR/metrics.jsonl   one JSON line per epoch
    DIR/checkpoint.pt   training state after the last finished epoch (resume point)
    DIR/model.pt        portable final model (architecture + kwargs + card + state_dict)
    DIR/report.json     model, dataset, top1, top5, macs, params, epochs, wall_s, ...

A `RunExtension` (e.g. `lappdeploy compress`'s pruning method) adds its settings to config.yaml, hooks
to the loop, report fields and files of its own (plan.json).

Everything that can be wrong with the input is checked before the first byte is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

from lappdeploy.config import CompressConfig, TrainConfig, field_names, load_yaml_mapping
from lappdeploy.data import DATASETS, DataRequest, DatasetInfo, DeviceLoader, auto_workers, fixed_subset, locate_dataset
from lappdeploy.environment import versions
from lappdeploy.errors import RunDirError
from lappdeploy.io import atomic_write_json, atomic_write_text, can_create_in, nearest_existing
from lappdeploy.models import MODELS, count_macs, create_model, model_card, resolve_input_shape, save_model
from lappdeploy.train.distributed import DistContext, init_distributed
from lappdeploy.train.engine import Trainer, check_device_support
from lappdeploy.train.hooks import Hook

__all__ = ["RunDir", "RunExtension", "check_run_dir", "data_request", "read_config", "run_training"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def report(self) -> Path:
        return self.root / "report.json"


class RunExtension(Protocol):
    """What a run can be extended with (all methods are called on every DDP rank)."""

    def config_dict(self) -> dict[str, Any]:
        """Settings saved in config.yaml next to the TrainConfig's (flat keys, distinct from its)."""

    def prepare_(self, model: torch.nn.Module, example_inputs: torch.Tensor) -> Sequence[Hook]:
        """Change the fresh model in place if needed (before the optimizer exists); return hooks."""

    def finish_(self, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """After training, before the model is saved: (report fields, {file name: JSON data})."""


def check_run_dir(out: str | os.PathLike[str], *, force: bool = False, resume: bool = False) -> RunDir:
    """Validate `out` for a new run (or for --resume) without touching the file system."""
    run = RunDir(Path(out).expanduser())
    root = run.root
    if resume:
        if not root.is_dir():
            raise RunDirError(f"--resume: run directory {root} does not exist")
        if not run.config.is_file():
            raise RunDirError(f"--resume: {root} has no config.yaml, so it is not a lappdeploy run directory")
        if run.report.is_file():
            raise RunDirError(f"--resume: run {root} is already complete (report.json exists); nothing to resume")
    elif root.exists():
        if not root.is_dir():
            raise RunDirError(f"--out {root} exists and is not a directory; choose another --out")
        if any(root.iterdir()):
            if not force:
                raise RunDirError(
                    f"run directory {root} already exists; pass --force to overwrite it or --resume to continue it"
                )
            if not run.config.is_file():
                raise RunDirError(
                    f"{root} is not empty and not a lappdeploy run directory (no config.yaml); "
                    "refusing to delete it even with --force; choose another --out"
                )
    anchor = nearest_existing(root)
    if not anchor.is_dir() or not can_create_in(anchor):
        raise RunDirError(f"cannot write to {root}: {anchor} is not a writable directory; choose another --out")
    return run


def _create_run_dir(run: RunDir, *, force: bool) -> None:
    if force and run.root.exists():
        shutil.rmtree(run.root)
    run.root.mkdir(parents=True, exist_ok=True)


def read_config(run: RunDir, *, extension_keys: Sequence[str] | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's TrainConfig, and the values of `extension_keys` saved with it (default: the compress
    settings of a `lappdeploy compress` run; empty for a `train` run)."""
    if extension_keys is None:
        extension_keys = field_names(CompressConfig)
    data = load_yaml_mapping(run.config)
    extra = {k: data.pop(k) for k in list(data) if k in extension_keys}
    return TrainConfig.from_dict(data), extra


def data_request(config: TrainConfig, image_size: int | None = None) -> DataRequest:
    return DataRequest(
        data_dir=config.data_dir,
        download=config.download,
        image_size=image_size if image_size is not None else config.image_size,
        augment=config.augment,
        synthetic_shape=config.synthetic_shape,
        synthetic_classes=config.synthetic_classes,
        synthetic_samples=config.synthetic_samples,
        seed=config.seed,
    )


def _input_shape(config: TrainConfig, info: DatasetInfo) -> tuple[int, int, int]:
    shape = resolve_input_shape(config.model, info.in_channels, info.image_hw, config.image_size)
    if config.image_size is None and info.image_hw is not None and shape[1:] != info.image_hw:
        logger.warning(
            "%s needs inputs of at least %d px; %s images are resized from %s to %s px",
            config.model,
            MODELS.get(config.model).min_input_size,
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


def _config_yaml(config: TrainConfig, extension: RunExtension | None = None) -> str:
    import yaml

    from lappdeploy import __version__

    header = f"# lappdeploy {__version__}: resolved config (flags > --config file > defaults)\n"
    data = config.to_dict() | (extension.config_dict() if extension is not None else {})
    return header + yaml.safe_dump(data, sort_keys=False)


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
        return _run(config, out, force=force, resume=resume, hooks=hooks, dist=dist, extension=extension)
    finally:
        if own_dist:
            dist.shutdown()


def _run(config, out, *, force, resume, hooks, dist: DistContext, extension: RunExtension | None) -> dict[str, Any]:
    # 1. validate everything (no writes)
    run = check_run_dir(out, force=force, resume=resume)
    MODELS.get(config.model)
    check_device_support(config, dist.device)
    if dist.is_main:  # rank 0 first: it may download
        info = locate_dataset(config.dataset, data_request(config))
    dist.barrier()
    if not dist.is_main:
        info = locate_dataset(config.dataset, data_request(config))
    input_shape = _input_shape(config, info)
    request = data_request(config, input_shape[1] if input_shape[1:] != info.image_hw else None)
    if info.location:
        logger.info("%s found in %s", config.dataset, info.location)

    # 2. create the run directory
    if dist.is_main and not resume:
        _create_run_dir(run, force=force)
        atomic_write_text(run.config, _config_yaml(config, extension))
    dist.barrier()

    # 3. data, model, trainer
    bundle = DATASETS.get(config.dataset).load(info, request)
    workers = config.workers if config.workers is not None else auto_workers(bundle.in_memory, dist.world_size)
    loader_args = {
        "device": dist.device,
        "seed": config.seed,
        "rank": dist.rank,
        "world_size": dist.world_size,
        "workers": workers,
    }
    train_set = fixed_subset(bundle.train, config.train_subset)
    val_set = fixed_subset(bundle.val, config.val_subset)
    train_loader = DeviceLoader(
        train_set, batch_size=config.batch_size, train=True, batch_transform=bundle.train_batch_transform, **loader_args
    )
    val_loader = DeviceLoader(
        val_set,
        batch_size=config.batch_size * 2,
        train=False,
        batch_transform=bundle.val_batch_transform,
        **loader_args,
    )
    torch.manual_seed(config.seed)  # identical initial weights on every rank and every run
    model = create_model(config.model, num_classes=bundle.info.num_classes, in_channels=bundle.info.in_channels)
    card = model_card(
        model,
        input_shape=bundle.input_shape,
        mean=bundle.info.mean,
        std=bundle.info.std,
        dataset=config.dataset,
        class_names=bundle.info.class_names or None,
    )
    # A fixed generator: preparing the model must not shift the global RNG stream the training draws from.
    example_inputs = torch.randn((2, *bundle.input_shape), generator=torch.Generator().manual_seed(config.seed))
    method_hooks = list(extension.prepare_(model, example_inputs)) if extension is not None else []
    # Method hooks first (the progress display reads what they add to the metrics); the writer goes last
    # so that metrics added by other hooks' on_epoch_end are logged too.
    all_hooks = method_hooks + list(hooks) + ([_MetricsWriter(run.metrics)] if dist.is_main else [])
    trainer = Trainer(model, train_loader, val_loader, config=config, hooks=all_hooks, dist=dist, card=card)
    resumed_from = 0
    if resume:
        if run.checkpoint.is_file():
            trainer.load_checkpoint(str(run.checkpoint))
            resumed_from = trainer.state.epoch
        if dist.is_main:
            _truncate_metrics(run.metrics, resumed_from)
        dist.barrier()
    logger.info(
        "training %s on %s (%s): %d train / %d val images, %d steps per epoch, %d process(es) on %s",
        config.model,
        config.dataset,
        "x".join(map(str, bundle.input_shape)),
        len(train_set),
        len(val_set),
        len(train_loader),
        dist.world_size,
        dist.device,
    )

    # 4. train, then write the deploy model and the report
    history = trainer.fit(checkpoint_path=str(run.checkpoint))
    final = history[-1]
    extra_report, extra_files = extension.finish_(trainer.module) if extension is not None else ({}, {})
    macs = count_macs(trainer.module, bundle.input_shape, device=dist.device)
    report = {
        "model": config.model,
        "dataset": config.dataset,
        "top1": final.get("val_top1"),
        "top5": final.get("val_top5"),
        "val_loss": final.get("val_loss"),
        "macs": macs.macs,
        "params": macs.params,
        "epochs": config.epochs,
        "wall_s": round(trainer.state.elapsed_s, 2),
        "train_images_per_s": round(
            sum(h["train_samples"] for h in history) / max(sum(h["train_s"] for h in history), 1e-9), 1
        ),
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
        **extra_report,
    }
    if dist.is_main:
        for name, data in extra_files.items():
            atomic_write_json(run.root / name, data)
        save_model(trainer.module, run.model, card)
        atomic_write_json(run.report, report)  # last: its presence marks the run complete
    dist.barrier()
    return report
