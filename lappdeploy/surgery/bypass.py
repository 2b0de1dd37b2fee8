"""The re-parameterizable bypass of LAPP (docs/lapp.md#bypass) and BatchNorm folding.

`add_bypass_` turns each eligible conv->BN pair into `RepConvBN`: BN(conv_kxk(x)) + BN_b(conv_1x1(x)),
the 1x1 branch aligned to the kxk kernel's centre tap, and leaves Identity in the old BN slot. It is an
ordinary module during training (torch-pruning prunes both branches with the group). `fold_bypass_`
turns every block back into one plain kxk conv with bias, computing the same function in eval mode,
so the bypass costs training MACs only. `fold_bn_` folds the remaining conv->BN pairs the same way.

Each function records itself on the model (`surgery_steps`), so a saved model can be rebuilt.
"""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.surgery.graph import SurgeryError, analyze
from lappdeploy.surgery.history import record_step, replays
from lappdeploy.surgery.repconv import RepConvBN, centre_padding, fuse_conv_bn

__all__ = [
    "RepConvBN",
    "add_bypass_",
    "bypass_candidates",
    "fold_bn_",
    "fold_bypass_",
    "fuse_conv_bn",
    "has_bypass",
]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def bypass_candidates(model: nn.Module, example_inputs: torch.Tensor, *, ignore=()) -> list[tuple[str, str]]:
    """(conv, bn) names of every conv->BN pair that gets a bypass: the conv has a kernel > 1, groups 1,
    a centre-aligned 1x1 equivalent, and output channels in a prunable group."""
    groups = analyze(model, example_inputs, ignore=ignore)
    pairs = []
    for conv_name, bn_name in groups.bn_after_conv.items():
        conv = model.get_submodule(conv_name)
        layer = groups.layers.get(conv_name)
        prunable = layer is not None and layer.out_map is not None and bool((layer.out_map >= 0).any())
        if (
            type(conv) is nn.Conv2d
            and max(conv.kernel_size) > 1
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple)
            and centre_padding(conv) is not None
            and prunable
        ):
            pairs.append((conv_name, bn_name))
    return pairs


def add_bypass_(model: nn.Module, example_inputs: torch.Tensor | None = None, *, pairs=None, ignore=()) -> list[str]:
    """Wrap every eligible conv->BN pair in a `RepConvBN` (in place); returns the wrapped conv names.

    Give `example_inputs` to find the pairs, or `pairs` [(conv, bn), ...] to wrap exactly those (replay).
    """
    if pairs is None:
        if example_inputs is None:
            raise SurgeryError("add_bypass_ needs example_inputs to find conv->BN pairs (or explicit pairs)")
        pairs = bypass_candidates(model, example_inputs, ignore=ignore)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        _set(model, conv_name, RepConvBN(conv, bn).train(conv.training))
        _set(model, bn_name, nn.Identity())
    record_step(model, "add_bypass", pairs=[list(p) for p in pairs])
    return [conv for conv, _ in pairs]


def has_bypass(model: nn.Module) -> bool:
    return any(isinstance(m, RepConvBN) for m in model.modules())


def fold_bypass_(model: nn.Module) -> nn.Module:
    """Replace every `RepConvBN` by the single conv it equals in eval mode (in place; returns the model)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, RepConvBN):
            _set(model, name, module.folded().train(module.training))
    record_step(model, "fold_bypass")
    return model


def fold_bn_(model: nn.Module, example_inputs: torch.Tensor | None = None, *, pairs=None) -> nn.Module:
    """Fold every conv->BN pair (the BN the conv's only consumer) into the conv, in place; Identity
    takes the BN's place. Give `example_inputs` to find the pairs, or `pairs` to fold exactly those."""
    if has_bypass(model):
        raise SurgeryError("fold the bypass blocks first (fold_bypass_), then the remaining BatchNorms")
    if pairs is None:
        if example_inputs is None:
            raise SurgeryError("fold_bn_ needs example_inputs to find conv->BN pairs (or explicit pairs)")
        pairs = list(analyze(model, example_inputs).bn_after_conv.items())
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        weight, bias = fuse_conv_bn(conv, bn)
        conv.weight = nn.Parameter(weight)
        conv.bias = nn.Parameter(bias)  # registers the bias when the conv had none
        _set(model, bn_name, nn.Identity())
    record_step(model, "fold_bn", pairs=[list(p) for p in pairs])
    return model


@replays("add_bypass")
def _replay_add_bypass(model: nn.Module, step: dict, example_inputs: torch.Tensor) -> None:
    add_bypass_(model, pairs=[tuple(p) for p in step["pairs"]])


@replays("fold_bypass")
def _replay_fold_bypass(model: nn.Module, step: dict, example_inputs: torch.Tensor) -> None:
    fold_bypass_(model)


@replays("fold_bn")
def _replay_fold_bn(model: nn.Module, step: dict, example_inputs: torch.Tensor) -> None:
    fold_bn_(model, pairs=[tuple(p) for p in step["pairs"]])
