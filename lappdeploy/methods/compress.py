"""`lappdeploy compress` as a library call: a training run extended by a pruning method.

    report = run_compress(TrainConfig(model="resnet20", epochs=8), LappConfig(target_macs=0.5, prune_epochs=3),
                          "runs/r20-lapp")

The run directory is the training run's (config.yaml gets a `method:` section) plus plan.json; model.pt
is the final deploy model (channels removed, bypass folded); report.json adds the dense and deploy
costs, the method, the target and a per-group table.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lappdeploy.config import TrainConfig
from lappdeploy.hooks import Hook
from lappdeploy.methods.base import PruneConfig, method_section, spec_for
from lappdeploy.methods.common import PruneResult, PruningHookBase
from lappdeploy.methods.options import ROUND_TO_AUTO
from lappdeploy.models import count_macs
from lappdeploy.surgery import fold_bypass_, has_bypass
from lappdeploy.train import DistContext, run_training

__all__ = ["CompressExtension", "compress_report", "run_compress"]


def compress_report(result: PruneResult, config: PruneConfig, dense_counted) -> dict[str, Any]:
    """The report fields of a compress run (the same keys for every method)."""
    return {
        "method": result.method,
        "target_macs": result.target_macs,
        "dense_macs": dense_counted.macs,  # counted like `macs`: the trained model's conv + linear MACs
        "dense_params": dense_counted.params,
        # the budgeted quantity: conv + linear MACs with BN and bypass folded (bias included)
        "deploy_macs": result.deploy.macs,
        "dense_deploy_macs": result.dense.macs,
        "deploy_params": result.deploy.params,
        "macs_ratio": result.macs_ratio,
        "prune_epochs": config.prune_epochs,
        "round_to": "auto" if config.round_to == ROUND_TO_AUTO else config.round_to,  # per group: latency.round_to
        "bypass": config.bypass,
        "score": None,  # LAPP's importance score; methods report theirs in `extra`
        **result.extra,
        "method_options": method_section(config),
        "layers": result.layers,
    }


class CompressExtension:
    """The RunExtension that prunes a training run with the method `config` belongs to."""

    def __init__(self, config: PruneConfig) -> None:
        self.config = config
        self.spec = spec_for(config)
        self.hook: PruningHookBase | None = None
        self.dense_counted = None  # count_macs of the dense model: MACs / params as `report.json` counts them

    def config_dict(self) -> dict[str, Any]:
        return method_section(self.config)

    def prepare_(self, model: nn.Module, example_inputs: torch.Tensor) -> Sequence[Hook]:
        self.dense_counted = count_macs(model, tuple(example_inputs.shape[1:]))
        self.hook = self.spec.prepare(model, example_inputs, self.config)
        return [self.hook]

    def finish_(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        self.hook.detach_hooks()
        result = self.hook.result()
        if has_bypass(model):
            fold_bypass_(model.eval())  # the deploy model: each bypass block in its deploy form
        report = compress_report(result, self.config, self.dense_counted)
        deploy_report = getattr(self.hook, "deploy_report", None)  # fields measured on the deploy model
        if deploy_report is not None:
            report.update(deploy_report(model))
        return report, {"plan.json": result.plan.to_dict()}


def run_compress(
    train: TrainConfig,
    method: PruneConfig,
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
    dist: DistContext | None = None,
) -> dict[str, Any]:
    """Train `train` from scratch while pruning it with the method of `method` (its config: LappConfig,
    UniformConfig, GlobalConfig, ...); returns report.json's content."""
    train = method.resolve_train(train)
    method.check_against(train)
    return run_training(
        train, out, force=force, resume=resume, hooks=hooks, dist=dist, extension=CompressExtension(method)
    )
