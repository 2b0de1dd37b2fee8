"""The training loop: SGD (+Nesterov), cosine/step LR, AMP, channels_last, DDP, checkpoints, hooks.

    trainer = Trainer(model, train_loader, val_loader, config=TrainConfig(...), hooks=[...])
    history = trainer.fit(checkpoint_path="run/checkpoint.pt")

Reproducibility: every epoch reseeds torch and the loaders from (seed, epoch, rank), and the LR is a
pure function of the global step, so a run resumed from the checkpoint of epoch e reaches the same
weights as one that never stopped (same device, same thread count).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lappdeploy.config import RESUMABLE_CHANGES, TrainConfig
from lappdeploy.data.loaders import epoch_seed
from lappdeploy.errors import ConfigError, LappDeployError
from lappdeploy.hooks import Hook
from lappdeploy.io import atomic_torch_save
from lappdeploy.models.portable import ModelCard, cpu_state_dict
from lappdeploy.surgery.history import surgery_steps
from lappdeploy.train.distributed import DistContext
from lappdeploy.train.schedule import LRSchedule

__all__ = [
    "RESUMABLE_CHANGES",
    "TRAIN_STATE_FORMAT",
    "TrainState",
    "Trainer",
    "TrainingDivergedError",
    "check_device_support",
    "evaluate",
]

logger = logging.getLogger(__name__)

TRAIN_STATE_FORMAT = "lappdeploy.train_state"


class TrainingDivergedError(LappDeployError):
    exit_code = 1


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed (global; identical on every rank)
    elapsed_s: float = 0.0  # training wall time so far, over all sessions of a resumed run
    history: list[dict[str, Any]] = field(default_factory=list)


def check_device_support(config: TrainConfig, device: torch.device) -> None:
    """Raise ConfigError for settings the device cannot run (checked before a run writes anything)."""
    if config.amp and config.amp_dtype == "fp16" and device.type != "cuda":
        raise ConfigError("--amp-dtype fp16 needs CUDA; use --amp-dtype bf16 on CPU")


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    if not config.amp:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if config.amp_dtype == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    dist: DistContext | None = None,
    config: TrainConfig | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (top-k with k = min(5, classes)) and mean loss, exact over all ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top1, top5, count
    autocast = _autocast(config, device) if config is not None else contextlib.nullcontext()
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with autocast:
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hits = topk.eq(labels.view(-1, 1))
        totals += torch.stack(
            [
                F.cross_entropy(logits, labels, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(dim=1).sum().double(),
                torch.tensor(float(len(labels)), dtype=torch.float64, device=device),
            ]
        )
    if dist is not None:
        dist.all_reduce_sum_(totals)
    model.train(was_training)
    loss_sum, top1, top5, count = totals.tolist()
    count = max(count, 1.0)
    return {"loss": loss_sum / count, "top1": top1 / count, "top5": top5 / count, "samples": int(count)}


class Trainer:
    """Trains `model` on batches from `train_loader` (any iterable of (images, labels); a loader with
    `set_epoch` is reseeded every epoch) and evaluates on `val_loader` after every epoch."""

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        val_loader: Iterable | None,
        *,
        config: TrainConfig,
        hooks: Sequence[Hook] = (),
        dist: DistContext | None = None,
        card: ModelCard | None = None,
        distillation: Any = None,
    ) -> None:
        self.config = config
        self.dist = dist or DistContext()
        self.device = self.dist.device
        self.hooks = list(hooks)
        self.card = card  # stored in checkpoints so `lappdeploy inspect` can read them
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.holdout, self.holdout_loader = None, None  # see attach_holdout
        self.steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
        if self.steps_per_epoch == 0:
            raise ConfigError("the training set yields no batch; use a smaller --batch-size or more data")
        check_device_support(config, self.device)
        if config.deterministic:
            # cuBLAS needs a fixed workspace for deterministic GEMMs; read when its handle is created.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic

        model = model.to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if config.sync_bn and self.dist.is_distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.module = model  # the user's module (not wrapped)
        self.model: nn.Module = model
        self.rewrap_()
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
        self.scaler = torch.amp.GradScaler("cuda") if config.amp and config.amp_dtype == "fp16" else None
        self.schedule = LRSchedule(
            base_lr=config.lr,
            steps_per_epoch=self.steps_per_epoch,
            epochs=config.epochs,
            kind=config.lr_schedule,
            milestones=config.lr_milestones,
            gamma=config.lr_gamma,
            warmup_epochs=config.warmup_epochs,
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        # a `train.distill.Distillation`: adds the teacher's term to the loss (and is one of the hooks)
        self.distillation = distillation
        if distillation is not None:
            distillation.to_(self.device, channels_last=config.channels_last)
            if distillation not in self.hooks:
                self.hooks.append(distillation)
        self.state = TrainState()

    # ------------------------------------------------------------------------------------------
    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def rewrap_(self) -> None:
        """(Re-)wrap `self.module` for DDP: called at start-up and by hooks that changed its structure
        (channel removal replaces parameters, which a DDP wrapper built earlier would not see)."""
        self.model = self.module
        if self.dist.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)

    def log(self, record: dict[str, Any]) -> None:
        """Pass a record (e.g. a pruning hook's per-step statistics) to every hook's `on_log`."""
        self._call("on_log", record)

    def _call(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    def attach_holdout(self, holdout, loader: Iterable | None = None) -> None:
        """Held-out training images (`data.HeldOut`): methods that decide on data read `loop.holdout`; with
        `loader`, their loss and top-1 are logged every epoch (holdout_loss, holdout_top1)."""
        self.holdout, self.holdout_loader = holdout, loader

    def _evaluate(self, loader: Iterable | None) -> dict[str, float]:
        if loader is None:
            return {}
        return evaluate(self.module, loader, device=self.device, dist=self.dist, config=self.config)

    # ------------------------------------------------------------------------------------------
    def fit(self, checkpoint_path: str | None = None) -> list[dict[str, Any]]:
        """Train the remaining epochs; after each, write a training checkpoint (rank 0, atomically).

        With 0 epochs (a given model, `--init-from`) nothing is trained: the model as the hooks' on_train_start
        left it (pruned, for methods that prune before the first step) is evaluated once, as "epoch 0"."""
        self._call("on_train_start")
        if self.epochs == 0 and not self.state.history:
            started = time.perf_counter()
            # as after a trained epoch: the hooks' BatchNorm re-estimation ran on each rank's own batches
            self._sync_batchnorm_statistics()
            self._end_epoch(0, {"train_samples": 0}, 0.0, started)
        for epoch in range(self.state.epoch, self.epochs):
            started = time.perf_counter()
            train_metrics = self.train_one_epoch(epoch)
            train_s = time.perf_counter() - started
            self._sync_batchnorm_statistics()
            self._end_epoch(epoch + 1, train_metrics, train_s, started)
            if checkpoint_path is not None:
                if self.dist.is_main:
                    self.save_checkpoint(checkpoint_path)
                self.dist.barrier()
                self._call("on_checkpoint", checkpoint_path)
        self._call("on_train_end", self.state.history)
        return self.state.history

    def _end_epoch(self, epoch: int, train_metrics: dict[str, float], train_s: float, started: float) -> None:
        """Evaluate, then record epoch `epoch` (completed epochs; 0: evaluation only) in the history."""
        val = self._evaluate(self.val_loader)
        held = self._evaluate(self.holdout_loader)
        epoch_s = time.perf_counter() - started
        self.state.epoch = epoch
        self.state.elapsed_s += epoch_s
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "step": self.state.step,
            "lr": self.lr,
            **train_metrics,
            **{f"val_{k}": v for k, v in val.items() if k != "samples"},
            **{f"holdout_{k}": v for k, v in held.items() if k in ("loss", "top1")},
            "train_s": round(train_s, 3),
            "epoch_s": round(epoch_s, 3),
            "train_images_per_s": round(train_metrics["train_samples"] / max(train_s, 1e-9), 1),
        }
        self._call("on_epoch_end", metrics)
        self.state.history.append(metrics)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        torch.manual_seed(epoch_seed(self.config.seed, epoch, self.dist.rank))
        if hasattr(self.train_loader, "set_epoch"):
            self.train_loader.set_epoch(epoch)
        self._call("on_epoch_start", epoch)
        self.model.train()
        # Accumulated on the device: no host synchronisation per step.
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, samples
        parts = torch.zeros(2, dtype=torch.float64, device=self.device)  # distillation: CE sum, KD sum
        for images, labels in self.train_loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.config.channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            for group in self.optimizer.param_groups:
                group["lr"] = self.schedule(self.state.step)
            with _autocast(self.config, self.device):
                logits = self.model(images)
                if self.distillation is None:
                    loss = self.criterion(logits, labels)
                else:
                    loss, ce, kd = self.distillation.loss(logits, labels, images, self.criterion)
                    parts += torch.stack([ce.double(), kd.double()]) * len(labels)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                self._call("after_backward")
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self._call("after_backward")
                self.optimizer.step()
            self.state.step += 1
            detached = loss.detach()
            totals += torch.stack(
                [
                    detached.double() * len(labels),
                    logits.detach().argmax(1).eq(labels).sum().double(),
                    torch.tensor(float(len(labels)), dtype=torch.float64, device=self.device),
                ]
            )
            self._call("on_step_end", detached)
        self.dist.all_reduce_sum_(totals)
        loss_sum, correct, samples = totals.tolist()
        mean_loss = loss_sum / max(samples, 1.0)
        if not math.isfinite(mean_loss):
            raise TrainingDivergedError(
                f"training diverged: mean loss is {mean_loss} in epoch {epoch + 1}; lower --lr or disable --amp"
            )
        metrics = {"train_loss": mean_loss, "train_top1": correct / max(samples, 1.0), "train_samples": int(samples)}
        if self.distillation is not None:
            self.dist.all_reduce_sum_(parts)
            ce_sum, kd_sum = parts.tolist()
            metrics.update(train_ce=ce_sum / max(samples, 1.0), train_kd=kd_sum / max(samples, 1.0))
        return metrics

    def _sync_batchnorm_statistics(self) -> None:
        """Average BN running statistics over ranks: DDP syncs gradients, not buffers, so without this
        each rank would evaluate and save its own statistics."""
        if not self.dist.is_distributed or self.config.sync_bn:
            return
        world = float(self.dist.world_size)
        for name, buffer in self.module.named_buffers():
            if buffer.is_floating_point() and ("running_mean" in name or "running_var" in name):
                self.dist.all_reduce_sum_(buffer.data)
                buffer.data.div_(world)

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": TRAIN_STATE_FORMAT,
            "format_version": 1,
            "card": self.card.to_dict() if self.card is not None else None,
            "config": self.config.to_dict(),
            "state_dict": cpu_state_dict(self.module),
            # structural changes (bypass, removed channels), so `load_model` can rebuild a mid-run checkpoint
            "surgery": surgery_steps(self.module),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.state.epoch,
            "step": self.state.step,
            "elapsed_s": self.state.elapsed_s,
            "history": self.state.history,
            "hooks": {hook.name: hook.state_dict() for hook in self.hooks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != TRAIN_STATE_FORMAT:
            raise LappDeployError("not a lappdeploy training checkpoint (format field missing)")
        changed = sorted(
            k for k, v in self.config.to_dict().items() if k not in RESUMABLE_CHANGES and state["config"].get(k) != v
        )
        if changed:
            raise LappDeployError(
                f"the checkpoint was written with different {', '.join(changed)}; resume with the run's config.yaml"
            )
        for hook in self.hooks:
            if hook.name in state["hooks"]:
                hook.load_state_dict(state["hooks"][hook.name], self)
        self.module.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(
            epoch=state["epoch"], step=state["step"], elapsed_s=state["elapsed_s"], history=list(state["history"])
        )

    def save_checkpoint(self, path: str) -> None:
        atomic_torch_save(self.state_dict(), path)

    def load_checkpoint(self, path: str) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(state)
        logger.info("resumed from %s at epoch %d (step %d)", path, self.state.epoch, self.state.step)
