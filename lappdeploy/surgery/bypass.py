"""LAPP's bypass blocks (docs/lapp.md#bypass) and BatchNorm folding.

`add_bypass_` turns each eligible conv->BN pair into a bypass block, the 1x1 branch aligned to the kxk
kernel's centre tap, and leaves Identity in the old BN slot. Two kinds:
- `rep`: `RepConvBN`, BN(conv_kxk(x)) + BN_b(conv_1x1(x)), an ordinary module during training (torch-
  pruning prunes both branches with the group); `fold_bypass_` turns it back into one plain kxk conv with
  bias, computing the same function in eval mode, so it costs training MACs only.
- `width`: `WidthBypassConvBN` (widthconv.py), whose 1x1 branch is never pruned, so the layer keeps its
  output width while its kxk filters are pruned by their own threshold; it folds into a kxk conv over the
  kept filters plus a 1x1 over the others, which the deploy MACs count.
`fold_bn_` folds the remaining conv->BN pairs the same way.

Each function records itself on the model (`surgery_steps`), so a saved model can be rebuilt.
"""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.surgery.graph import SurgeryError, after_norm, analyze, is_norm_act, matches_ignore
from lappdeploy.surgery.history import record_step, replays
from lappdeploy.surgery.repconv import RepConvBN, centre_padding, fuse_conv_bn
from lappdeploy.surgery.widthconv import WidthBypassConvBN

__all__ = [
    "BYPASS_KINDS",
    "RepConvBN",
    "WidthBypassConvBN",
    "add_bypass_",
    "bypass_candidates",
    "fold_bn_",
    "fold_bypass_",
    "fuse_conv_bn",
    "has_bypass",
]


BYPASS_KINDS = {"rep": RepConvBN, "width": WidthBypassConvBN}
_BLOCKS = tuple(BYPASS_KINDS.values())


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module)


def bypass_candidates(
    model: nn.Module, example_inputs: torch.Tensor, *, ignore=(), kind: str = "rep"
) -> list[tuple[str, str]]:
    """(conv, bn) names of every conv->BN pair that gets a bypass: the conv has a kernel > 1, groups 1 and
    a centre-aligned 1x1 equivalent; for `rep` its output channels are in a prunable group, for `width`
    (which prunes the conv's own filters, whatever group its outputs are in) it matches no `ignore` pattern.
    """
    _block(kind)
    groups = analyze(model, example_inputs, ignore=ignore)
    pairs = []
    for conv_name, bn_name in groups.bn_after_conv.items():
        conv = model.get_submodule(conv_name)
        layer = groups.layers.get(conv_name)
        if kind == "rep":
            eligible = layer is not None and layer.out_map is not None and bool((layer.out_map >= 0).any())
        else:
            eligible = not matches_ignore(conv_name, ignore)
        if (
            type(conv) is nn.Conv2d
            and max(conv.kernel_size) > 1
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and isinstance(conv.padding, tuple)
            and centre_padding(conv) is not None
            and not is_norm_act(model.get_submodule(bn_name))  # the block would apply its activation twice
            and eligible
        ):
            pairs.append((conv_name, bn_name))
    return pairs


def _block(kind: str) -> type[nn.Module]:
    if kind not in BYPASS_KINDS:
        raise SurgeryError(f"unknown bypass kind {kind!r}; choose one of {', '.join(BYPASS_KINDS)}")
    return BYPASS_KINDS[kind]


def add_bypass_(
    model: nn.Module, example_inputs: torch.Tensor | None = None, *, pairs=None, ignore=(), kind: str = "rep"
) -> list[str]:
    """Wrap every eligible conv->BN pair in a bypass block of `kind` (in place); returns the wrapped conv
    names. Give `example_inputs` to find the pairs, or `pairs` [(conv, bn), ...] to wrap exactly those.
    """
    block = _block(kind)
    if pairs is None:
        if example_inputs is None:
            raise SurgeryError("add_bypass_ needs example_inputs to find conv->BN pairs (or explicit pairs)")
        pairs = bypass_candidates(model, example_inputs, ignore=ignore, kind=kind)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        _set(model, conv_name, block(conv, bn).train(conv.training))
        _set(model, bn_name, nn.Identity())
    record_step(model, "add_bypass", pairs=[list(p) for p in pairs], kind=kind)
    return [conv for conv, _ in pairs]


def has_bypass(model: nn.Module) -> bool:
    return any(isinstance(m, _BLOCKS) for m in model.modules())


def fold_bypass_(model: nn.Module) -> nn.Module:
    """Replace every bypass block by its deploy form, equal in eval mode (in place; returns the model)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, _BLOCKS):
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
        _set(model, bn_name, after_norm(bn))
    record_step(model, "fold_bn", pairs=[list(p) for p in pairs])
    return model


@replays("add_bypass")
def _replay_add_bypass(model: nn.Module, step: dict, example_inputs: torch.Tensor) -> None:
    add_bypass_(model, pairs=[tuple(p) for p in step["pairs"]], kind=step.get("kind", "rep"))


@replays("fold_bypass")
def _replay_fold_bypass(model: nn.Module, step: dict, example_inputs: torch.Tensor) -> None:
    fold_bypass_(model)


@replays("fold_bn")
def _replay_fold_bn(model: nn.Module, step: dict, example_inputs: torch.Tensor) -> None:
    fold_bn_(model, pairs=[tuple(p) for p in step["pairs"]])
