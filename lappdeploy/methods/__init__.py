"""Pruning methods: each turns a model (and its training run) into a ChannelPlan applied mid-training.

A method is a function `prepare_(model, example_inputs, config) -> hook`: it may change the model in
place (bypass blocks), and returns a training Hook that removes channels by the end of the pruning phase
and then exposes `plan` (the ChannelPlan applied), `dense` (DeployCost of the dense model) and
`detach_hooks()`. Everything downstream (surgery, export, bench) is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lappdeploy.registry import Registry

__all__ = ["METHODS", "MethodSpec", "register_method"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    prepare: Callable  # (model, example_inputs, CompressConfig) -> Hook with .plan / .dense / .detach_hooks()
    summary: str


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, *, summary: str) -> Callable[[Callable], Callable]:
    def decorate(prepare: Callable) -> Callable:
        METHODS.add(name, MethodSpec(name=name, prepare=prepare, summary=summary))
        return prepare

    return decorate


def _builtin(registry: Registry[MethodSpec]) -> None:
    # imported on first use: these import torch and torch-pruning
    from lappdeploy.lapp import prepare_ as lapp_prepare
    from lappdeploy.methods.baselines import prepare_global_, prepare_uniform_

    registry.add(
        "lapp",
        MethodSpec(
            "lapp",
            lapp_prepare,
            "learned per-group thresholds under a progressive MACs budget, from scratch (LAPP.md)",
        ),
    )
    registry.add(
        "uniform",
        MethodSpec("uniform", prepare_uniform_, "prune-then-finetune: same keep ratio for every group, L2 magnitude"),
    )
    registry.add(
        "global",
        MethodSpec("global", prepare_global_, "prune-then-finetune: torch-pruning group-L2 importance, global ranking"),
    )


METHODS.add_loader(_builtin)
