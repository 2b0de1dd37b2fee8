"""`lappdeploy compress` as a library call: a training run extended by a pruning method.

    report = run_compress(TrainConfig(model="resnet20", epochs=8), CompressConfig(target_macs=0.5,
                          prune_epochs=3), "runs/r20-lapp")

The run directory is the training run's (config.yaml holds both configs, flat) plus plan.json; model.pt
is the final deploy model (channels removed, bypass folded); report.json adds the dense and deploy
costs, the method, the target and a per-group table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lappdeploy.config import CompressConfig, TrainConfig
from lappdeploy.errors import ConfigError
from lappdeploy.methods import METHODS
from lappdeploy.models import count_macs
from lappdeploy.surgery.bypass import fold_bypass_, has_bypass
from lappdeploy.surgery.graph import SurgeryError
from lappdeploy.train.distributed import DistContext
from lappdeploy.train.hooks import Hook
from lappdeploy.train.run import run_training

__all__ = ["CompressExtension", "run_compress"]


class CompressExtension:
    """The RunExtension that prunes a training run with `config.method`."""

    def __init__(self, config: CompressConfig) -> None:
        self.config = config
        self.hook: Hook | None = None
        self.dense_counted = None  # count_macs of the dense model: MACs / params as `report.json` counts them

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def prepare_(self, model: nn.Module, example_inputs: torch.Tensor) -> Sequence[Hook]:
        self.dense_counted = count_macs(model, tuple(example_inputs.shape[1:]))
        self.hook = METHODS.get(self.config.method).prepare(model, example_inputs, self.config)
        return [self.hook]

    def finish_(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        hook = self.hook
        hook.detach_hooks()
        plan = hook.plan
        if plan is None:  # cannot happen with prune_epochs <= epochs; a loop that stopped early
            raise SurgeryError("training ended before the pruning phase did; no channel plan was applied")
        if has_bypass(model):
            fold_bypass_(model.eval())  # the deploy model: one plain conv per bypass block
        thresholds = plan.info.get("thresholds", {})
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        layers = []
        for g in sorted(hook.groups.prunable, key=lambda g: order.get(g.id, len(order))):
            gp = plan.groups.get(g.id)
            layers.append(
                {
                    "name": g.id,
                    "total": g.channels,
                    "kept": len(gp.keep) if gp is not None else g.channels,
                    "threshold": (
                        gp.threshold if gp is not None and gp.threshold is not None else thresholds.get(g.id)
                    ),
                }
            )
        report = {
            "method": self.config.method,
            "target_macs": self.config.target_macs,
            "dense_macs": self.dense_counted.macs,
            "dense_params": self.dense_counted.params,
            # the budgeted quantity: conv + linear MACs with BN and bypass folded (bias included)
            "deploy_macs": plan.info["macs"],
            "dense_deploy_macs": plan.info["dense_macs"],
            "deploy_params": plan.info["params"],
            "macs_ratio": plan.info["macs"] / plan.info["dense_macs"],
            "prune_epochs": self.config.prune_epochs,
            "round_to": self.config.round_to,
            "bypass": self.config.bypass,
            "score": self.config.score if self.config.method == "lapp" else None,
            "layers": layers,
        }
        return report, {"plan.json": plan.to_dict()}


def run_compress(
    train: TrainConfig,
    compress: CompressConfig,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
    dist: DistContext | None = None,
) -> dict[str, Any]:
    """Train `train` from scratch while pruning it with `compress.method`; returns report.json's content."""
    compress.check_against(train)
    if train.sync_bn:
        raise ConfigError("--sync-bn replaces the BatchNorm layers the pruning method tracks; drop --sync-bn")
    return run_training(
        train, out, force=force, resume=resume, hooks=hooks, dist=dist, extension=CompressExtension(compress)
    )
