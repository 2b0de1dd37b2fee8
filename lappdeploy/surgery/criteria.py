"""Channel importance criteria, one registry for every pruning method (docs/criteria.md).

Each criterion scores every channel of the global channel vector of an analysed model (`ChannelGroups`);
a higher score means "keep". A channel of group g is described by its weights in every conv/linear layer
that produces g (the coupled layers: all convs writing one residual stream, say), concatenated into one
vector w_i. Scores of the magnitude criteria are differentiable in the weights (LAPP trains through them).

    l1      sum_layers ||w_i||_1
    l2      sqrt(sum_layers ||w_i||_2^2)
    fpgm    sum_j ||w_i - w_j||_2 over the group's channels j: small = close to the others = redundant
            (the geometric-median idea of FPGM)
    cos     sum_j (1 - cos(w_i, w_j)): small = a direction the others already cover
    bn      mean of |gamma_i| over the group's BatchNorms (l2 where a group has none)
    taylor  (sum over the channel's parameters of w * dL/dw)^2, first-order Taylor estimate of the loss
            change when the channel is removed; needs gradients (`needs_grad`)
    group_l2  torch-pruning's GroupMagnitudeImportance: L2 over every coupled layer (producers, their
            BatchNorms and the consumers' input channels), averaged over the layers
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from lappdeploy.errors import SurgeryError
from lappdeploy.registry import Registry
from lappdeploy.surgery.graph import ChannelGroup, ChannelGroups, resolve_module

__all__ = ["CRITERIA", "Criterion", "channel_scores", "group_vectors", "register_criterion"]

_PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class Criterion:
    name: str
    summary: str  # the formula, one line
    score: Callable[[ChannelGroups], torch.Tensor]  # global channel vector of scores, higher = keep
    needs_grad: bool = False  # reads .grad of the parameters (a backward pass must precede it)


CRITERIA: Registry[Criterion] = Registry("criterion")


def register_criterion(name: str, summary: str, *, needs_grad: bool = False):
    """Decorator registering `score(groups) -> Tensor[global_channels]` under `name`."""

    def register(score: Callable[[ChannelGroups], torch.Tensor]) -> Callable[[ChannelGroups], torch.Tensor]:
        CRITERIA.add(name, Criterion(name, summary, score, needs_grad))
        return score

    return register


def channel_scores(groups: ChannelGroups, kind: str = "l2") -> torch.Tensor:
    """Importance of every channel of the global vector by criterion `kind` (higher = keep)."""
    criterion = CRITERIA.get(kind)
    groups.check_fresh()  # scores of a pruned model on the maps of its dense analysis would be wrong
    return criterion.score(groups)


def _index_sum(groups: ChannelGroups, per_layer: Callable[[nn.Module], torch.Tensor | None]) -> torch.Tensor:
    """Sum over layers of `per_layer(module)` (one value per output channel) into the global vector."""
    device = next(groups.model.parameters()).device
    n = groups.global_channels
    total = torch.zeros(n + 1, device=device)  # slot n collects channels no prunable group owns
    for layer in groups.layers.values():
        if layer.out_map is None:
            continue
        values = per_layer(layer.module)
        if values is not None:
            total = total.index_add(0, torch.where(layer.out_map >= 0, layer.out_map, n).to(device), values.float())
    return total[:n]


def _weights(module: nn.Module, reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    return reduce(module.weight.flatten(1)) if isinstance(module, _PRODUCERS) else None


@register_criterion("l1", "sum over the group's producing layers of the channel's |w|_1")
def _l1(groups: ChannelGroups) -> torch.Tensor:
    return _index_sum(groups, lambda m: _weights(m, lambda w: w.abs().sum(1)))


@register_criterion("l2", "L2 norm of the channel's weights over the group's producing layers")
def _l2(groups: ChannelGroups) -> torch.Tensor:
    return _index_sum(groups, lambda m: _weights(m, lambda w: w.pow(2).sum(1))).sqrt()


@register_criterion("bn", "mean |gamma| over the group's BatchNorms (l2 where a group has none)")
def _bn(groups: ChannelGroups) -> torch.Tensor:
    def gammas(module: nn.Module) -> torch.Tensor | None:
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            return module.weight.abs()
        return None

    def counts(module: nn.Module) -> torch.Tensor | None:
        gamma = gammas(module)
        return None if gamma is None else torch.ones_like(gamma)

    total, count = _index_sum(groups, gammas), _index_sum(groups, counts)
    return torch.where(count > 0, total / count.clamp(min=1), _l2(groups))


def group_vectors(groups: ChannelGroups, group: ChannelGroup) -> torch.Tensor:
    """[C_g, D]: each channel's weights in every layer producing `group`, concatenated (D summed over layers)."""
    parts = []
    for layer in groups.layers.values():
        if layer.out_map is None or not isinstance(layer.module, _PRODUCERS):
            continue
        inside = (layer.out_map >= group.offset) & (layer.out_map < group.offset + group.channels)
        if not bool(inside.any()):
            continue
        rows = layer.module.weight.flatten(1)
        placed = rows.new_zeros(group.channels, rows.shape[1])
        positions = (layer.out_map[inside] - group.offset).to(rows.device)
        parts.append(placed.index_copy(0, positions, rows[inside.to(rows.device)]))
    if not parts:
        raise SurgeryError(f"group {group.id!r} has no producing conv/linear layer to score")
    return torch.cat(parts, dim=1)


def _pairwise(groups: ChannelGroups, distances: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    out = []
    for g in groups.prunable:
        vectors = group_vectors(groups, g).detach().float()
        out.append(distances(vectors).sum(1))
    return torch.cat(out) if out else torch.zeros(0)


@register_criterion("fpgm", "sum of Euclidean distances to the group's other channels (geometric median)")
def _fpgm(groups: ChannelGroups) -> torch.Tensor:
    return _pairwise(groups, lambda v: torch.cdist(v, v))


@register_criterion("cos", "sum of cosine distances 1 - cos(w_i, w_j) to the group's other channels")
def _cos(groups: ChannelGroups) -> torch.Tensor:
    def distances(vectors: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(vectors, dim=1)
        return 1 - unit @ unit.T

    return _pairwise(groups, distances)


@register_criterion("taylor", "(sum of w * dL/dw over the channel's parameters)^2", needs_grad=True)
def _taylor(groups: ChannelGroups) -> torch.Tensor:
    def first_order(module: nn.Module) -> torch.Tensor | None:
        if not isinstance(module, (*_PRODUCERS, nn.modules.batchnorm._BatchNorm)) or module.weight is None:
            return None
        total = None
        for param in (module.weight, getattr(module, "bias", None)):
            if param is None:
                continue
            if param.grad is None:
                raise SurgeryError("the taylor criterion needs gradients: run a backward pass first")
            term = (param.detach() * param.grad).reshape(param.shape[0], -1).sum(1)
            total = term if total is None else total + term
        return total

    return _index_sum(groups, first_order).pow(2)


@register_criterion("group_l2", "torch-pruning's group L2 magnitude over every coupled layer (mean over layers)")
def _group_l2(groups: ChannelGroups) -> torch.Tensor:
    importance = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer=None)
    scores = torch.zeros(groups.global_channels)
    for g in groups.prunable:
        root = resolve_module(groups.model, g.id)
        pruner = groups.graph.get_pruner_of_module(root)
        tp_group = groups.graph.get_pruning_group(root, pruner.prune_out_channels, list(range(g.channels)))
        with torch.no_grad():
            scores[g.offset : g.offset + g.channels] = importance(tp_group).detach().float().cpu()
    return scores
