"""Which layers a plan asks to refit: the conv/linear layers that read removed channels, those that cannot be
refitted and why, each group's valid capacity, and the check that calibration can determine every refit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lappdeploy.errors import ConfigError
from lappdeploy.methods.reconstruct.linalg import energy_rank
from lappdeploy.methods.reconstruct.settings import ReconstructionSettings
from lappdeploy.surgery import ChannelGroups, ChannelPlan
from lappdeploy.surgery.graph import LayerChannels

__all__ = ["Consumer", "check_calibration", "group_readers", "plan_consumers", "unsupported", "valid_capacity"]

RESIDUAL_DOC = "docs/ldrf.md#residual-streams"


@dataclass
class Consumer:
    """A layer that loses input channels: what it keeps, in the channel numbering before removal (ascending,
    which is the order of its channels after removal)."""

    name: str  # canonical module name
    in_keep: torch.Tensor  # kept input channels (Linear: input features)
    out_keep: torch.Tensor  # kept output channels
    bn: str | None  # the BatchNorm right after it, which can take an output offset when the layer has no bias


def unsupported(module: nn.Module) -> str | None:
    """Why `module` cannot be refitted, or None."""
    if isinstance(module, nn.Linear):
        return None
    if type(module) is not nn.Conv2d:
        return f"only Conv2d and Linear layers are refitted, not {type(module).__name__}"
    if module.groups > 1:
        return (
            "grouped or depthwise convolution: each filter sees its own inputs only, so kept channels cannot "
            "stand in for removed ones"
        )
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        return "only explicit zero padding is sampled"
    return None


def _owners(groups: ChannelGroups) -> list[str]:
    """The group id of every position of the global channel vector."""
    return [g.id for g in groups.prunable for _ in range(g.channels)]


def group_readers(groups: ChannelGroups) -> dict[str, list[str]]:
    """Per prunable group, the conv/linear layers reading its channels (a depthwise conv in the group counts)."""
    owners = _owners(groups)
    readers: dict[str, list[str]] = {g.id: [] for g in groups.prunable}
    for name, layer in groups.layers.items():
        if layer.in_map is not None:
            for gid in dict.fromkeys(owners[p] for p in layer.in_map[layer.in_map >= 0].tolist()):
                readers[gid].append(name)
    return readers


def _removed(index_map: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the layer channels `index_map` maps onto removed global channels."""
    removed = torch.zeros(len(index_map), dtype=torch.bool)
    inside = index_map >= 0
    removed[inside] = ~kept[index_map[inside]]
    return removed


def _width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _shared_group(name: str, layer: LayerChannels, removed, readers: dict[str, list[str]], owners) -> str | None:
    """Why a layer reading removed channels that also feed other layers is left alone, or None."""
    for gid in dict.fromkeys(owners[p] for p in layer.in_map[removed].tolist()):
        others = [r for r in readers[gid] if r != name]
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            return (
                f"the removed channels of group {gid} also feed {shown}: a residual stream or branch point, left "
                f"as plain removal ({RESIDUAL_DOC})"
            )
    return None


def plan_consumers(groups: ChannelGroups, plan: ChannelPlan) -> tuple[list[Consumer], list[dict[str, str]]]:
    """The layers `plan` removes input channels from (`groups`: the analysis before removal): those to refit,
    and the others as {"name", "reason"}."""
    kept = plan.keep_mask(groups) > 0.5
    readers, owners = group_readers(groups), _owners(groups)
    consumers, skipped = [], []
    for name, layer in groups.layers.items():
        if layer.in_map is None:
            continue
        removed = _removed(layer.in_map, kept)
        if not bool(removed.any()):
            continue
        reason = unsupported(layer.module) or _shared_group(name, layer, removed, readers, owners)
        if reason is not None:
            skipped.append({"name": name, "reason": reason})
            continue
        if layer.out_map is None:  # outputs in no group at all: every one is kept
            out_keep = torch.arange(_width(layer.module))
        else:
            out_keep = (~_removed(layer.out_map, kept)).nonzero().flatten()
        in_keep = (~removed).nonzero().flatten()
        consumers.append(Consumer(name, in_keep, out_keep, bn=groups.bn_after_conv.get(name)))
    return consumers, skipped


def _rows_of_group(layer: LayerChannels, offset: int, channels: int) -> torch.Tensor:
    return ((layer.in_map >= offset) & (layer.in_map < offset + channels)).nonzero().flatten()


def valid_capacity(groups: ChannelGroups, energy: float) -> dict[str, int]:
    """Per prunable group, its valid capacity: the largest rank, over the layers reading it, of the weight
    rows that read its channels (c x c_out k k), at `energy` of the spectral energy (0 without such layer)."""
    readers = group_readers(groups)
    capacity = {}
    for g in groups.prunable:
        ranks = [0]
        for name in readers[g.id]:
            layer = groups.layers[name]
            if unsupported(layer.module) is not None:
                continue
            weight = layer.module.weight.detach().double()
            rows = _rows_of_group(layer, g.offset, g.channels)
            block = weight[:, rows].reshape(len(weight), len(rows), -1).transpose(0, 1).reshape(len(rows), -1)
            ranks.append(energy_rank(torch.linalg.svdvals(block), energy))
        capacity[g.id] = min(g.channels, max(ranks))
    return capacity


def _reachable_taps(conv: nn.Conv2d, size: tuple[int, ...]) -> int:
    """Kernel taps of `conv` that read a real input pixel (not zero padding) at some output position, on an
    input of spatial `size`: the only taps a fit can determine (a 3x3 conv on a 1x1 map has one)."""
    taps = 1
    for k, s, d, p, n in zip(conv.kernel_size, conv.stride, conv.dilation, conv.padding, size, strict=True):
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        taps *= sum(any(0 <= o * s - p + i * d < n for o in range(out)) for i in range(k))
    return taps


@torch.no_grad()
def _input_sizes(groups: ChannelGroups, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Spatial size of each named layer's input, from one forward pass of the example inputs."""
    sizes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def record(_module: nn.Module, args: tuple) -> None:  # returns None: the input passes unchanged
            sizes.setdefault(name, tuple(args[0].shape[2:]))

        return record

    hooks = [groups.layers[name].module.register_forward_pre_hook(recorder(name)) for name in names]
    was_training = groups.model.training
    try:
        groups.model.eval()(groups.example_inputs)
    finally:
        groups.model.train(was_training)
        for hook in hooks:
            hook.remove()
    return sizes


def _unknowns(module: nn.Module, mode: str, size: tuple[int, ...]) -> tuple[int, str]:
    """Unknowns per fitted output of `module` under `mode` (its input channels, x the kernel taps that see the
    input for `ls`), and what they are, for messages."""
    if isinstance(module, nn.Linear):
        return module.in_features, f"{module.in_features} input features"
    taps = _reachable_taps(module, size) if mode == "ls" else 1
    what = f" x {taps} kernel taps that see the input" if mode == "ls" else ""
    return module.in_channels * taps, f"{module.in_channels} input channels{what}"


def check_calibration(groups: ChannelGroups, settings: ReconstructionSettings, images: int) -> None:
    """ConfigError when some layer that a plan could ask to refit would get fewer calibration samples
    (`images` x positions it offers, at most --calib-positions) than unknowns: an under-determined system.
    Counted at the dense widths, the most a plan can leave."""
    names = [
        n[0] for n in group_readers(groups).values() if len(n) == 1 and unsupported(groups.layers[n[0]].module) is None
    ]
    sizes = _input_sizes(groups, names)
    for name in [n for n in names if n in sizes]:  # a layer the forward pass never reaches is never refitted
        unknowns, what = _unknowns(groups.layers[name].module, settings.mode, sizes.get(name, ()))
        per_image = min(settings.positions, max(1, groups.positions.get(name, 1)))
        if images * per_image < unknowns:
            raise ConfigError(
                f"--calib-images {images} x {per_image} positions per image give layer {name} "
                f"{images * per_image} samples, fewer than its {unknowns} unknowns per output ({what}): the "
                f"least-squares system would be under-determined; use --calib-images {math.ceil(unknowns / per_image)} "
                "or more"
            )
