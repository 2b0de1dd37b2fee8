"""Which layers a plan asks to refit: the conv/linear layers that read removed channels, those that cannot be
refitted and why, each group's valid capacity, and the check that calibration can determine every refit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lappdeploy.errors import ConfigError
from lappdeploy.methods.reconstruct.linalg import energy_rank
from lappdeploy.methods.reconstruct.passes import evaluating
from lappdeploy.methods.reconstruct.settings import JOINT_MODES, ReconstructionSettings
from lappdeploy.surgery import ChannelGroups, ChannelPlan
from lappdeploy.surgery.graph import LayerChannels, resolve_module

__all__ = [
    "Consumer",
    "check_calibration",
    "group_readers",
    "joint_producer",
    "offset_home",
    "plan_consumers",
    "unsupported",
    "valid_capacity",
]

RESIDUAL_DOC = "docs/ldrf.md#residual-streams"
# modes whose fits read k x k patches (the ldrf-joint producer fit too): unknowns count kernel taps
PATCH_MODES = ("ls", "ls-joint", "ldrf-patch", "ldrf-joint")


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


def offset_home(module: nn.Module, bn: str | None, model: nn.Module) -> str | None:
    """Where a fit of `module` puts its output offset: "bias", `bn` (the name of the BatchNorm right after it in
    `model`, whose running mean takes the offset), or None (no offset is fitted)."""
    if module.bias is not None:
        return "bias"
    if bn is not None and getattr(model.get_submodule(bn), "running_mean", None) is not None:
        return bn
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


def _channel_block(weight: torch.Tensor, layer: LayerChannels, offset: int, channels: int) -> torch.Tensor:
    """The weights of `layer` that read the global channels offset .. offset + channels - 1, one row per channel
    read: c x (c_out k k) for a conv. A Linear after a flatten reads each channel at several positions (its
    input features are channel x position, all mapped onto that channel): a channel's features, in position
    order, share its row, c x (out_features x positions), so the rank is counted in channels as for a conv.
    A channel read at fewer positions than another has its row padded with zeros."""
    rows = _rows_of_group(layer, offset, channels)
    channel, order = torch.sort(layer.in_map[rows], stable=True)  # stable: each channel's features stay in order
    rows = rows[order]
    _, which, counts = torch.unique_consecutive(channel, return_inverse=True, return_counts=True)
    slot = torch.arange(len(rows)) - (counts.cumsum(0) - counts)[which]  # position of a feature in its channel
    features = weight[:, rows].transpose(0, 1).reshape(len(rows), -1)  # one row per input feature: c_out k k
    block = features.new_zeros(len(counts), int(counts.max()), features.shape[1])
    block[which, slot] = features
    return block.reshape(len(counts), -1)


def valid_capacity(groups: ChannelGroups, energy: float) -> dict[str, int]:
    """Per prunable group, its valid capacity: the largest rank, over the layers reading it, of the weights
    that read its channels arranged one row per channel (`_channel_block`), at `energy` of the spectral energy
    (0 without such layer)."""
    readers = group_readers(groups)
    capacity = {}
    for g in groups.prunable:
        ranks = [0]
        for name in readers[g.id]:
            layer = groups.layers[name]
            if unsupported(layer.module) is not None:
                continue
            block = _channel_block(layer.module.weight.detach().double(), layer, g.offset, g.channels)
            ranks.append(energy_rank(torch.linalg.svdvals(block), energy))
        capacity[g.id] = min(g.channels, max(ranks))
    return capacity


def joint_producer(groups: ChannelGroups, name: str) -> tuple[str, str] | str:
    """(producer conv, its BatchNorm) of the pruned channels layer `name` reads, or why there is no such pair."""
    layer = groups.layers[name]
    owners = _owners(groups)
    mapped = layer.in_map[layer.in_map >= 0].tolist() if layer.in_map is not None else []
    group_ids = {owners[p] for p in mapped}
    if len(group_ids) != 1 or len(mapped) != len(layer.in_map):
        return "it reads more than one channel group"
    (gid,) = group_ids
    if group_readers(groups)[gid] != [name]:
        return f"group {gid} is read by other layers too"
    group = groups.group(gid)
    producers = [m for m in group.modules if isinstance(resolve_module(groups.model, m), nn.modules.conv._ConvNd)]
    if len(producers) != 1 or unsupported(resolve_module(groups.model, producers[0])) is not None:
        return f"group {gid} is not produced by one plain Conv2d"
    bn = groups.bn_after_conv.get(producers[0])
    if bn is None:
        return f"producer {producers[0]} has no BatchNorm after it"
    return producers[0], bn


def _reachable_taps(conv: nn.Conv2d, size: tuple[int, ...]) -> int:
    """Kernel taps of `conv` that read a real input pixel (not zero padding) at some output position, on an
    input of spatial `size`: the only taps a fit can determine (a 3x3 conv on a 1x1 map has one)."""
    taps = 1
    for k, s, d, p, n in zip(conv.kernel_size, conv.stride, conv.dilation, conv.padding, size, strict=True):
        out = (n + 2 * p - d * (k - 1) - 1) // s + 1
        taps *= sum(any(0 <= o * s - p + i * d < n for o in range(out)) for i in range(k))
    return taps


def _input_sizes(groups: ChannelGroups, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Spatial size of each named layer's input, from one forward pass of the example inputs."""
    sizes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str):
        def record(_module: nn.Module, args: tuple) -> None:  # returns None: the input passes unchanged
            sizes.setdefault(name, tuple(args[0].shape[2:]))

        return record

    hooks = [groups.layers[name].module.register_forward_pre_hook(recorder(name)) for name in names]
    try:
        with evaluating(groups.model):
            groups.model(groups.example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def _unknowns(module: nn.Module, mode: str, size: tuple[int, ...], offset: bool) -> tuple[int, str]:
    """Unknowns per fitted output of `module` under `mode` (its input channels, x the kernel taps that see the
    input for `ls`, + 1 when an output `offset` is fitted too), and what they are, for messages."""
    if isinstance(module, nn.Linear):
        count, what = module.in_features, f"{module.in_features} input features"
    else:
        taps = _reachable_taps(module, size) if mode in PATCH_MODES else 1
        count, what = module.in_channels * taps, f"{module.in_channels} input channels"
        what += f" x {taps} kernel taps that see the input" if mode in PATCH_MODES else ""
    return (count + 1, f"{what} + 1 output offset") if offset else (count, what)


def _positions_per_image(groups: ChannelGroups, name: str, mode: str, size: tuple[int, ...]) -> int:
    """Distinct positions per image the fit of layer `name` samples from (calibration.sample_rows): a conv's
    output positions for the patch fits (k x k patches around them), its input pixels for `ldrf`; a Linear's
    input rows (1 after a flatten), which its output rows match one to one."""
    if mode not in PATCH_MODES and isinstance(groups.layers[name].module, nn.Conv2d):
        return math.prod(size)
    return groups.positions.get(name, 1)


def check_calibration(groups: ChannelGroups, settings: ReconstructionSettings, images: int) -> None:
    """ConfigError when some layer that a plan could ask to refit would get fewer calibration samples
    (`images` x positions it offers, at most --calib-positions) than unknowns: an under-determined system.
    Counted at the dense widths, the most a plan can leave; the message names the layer needing the most
    images, so the number it suggests determines every layer's system."""
    names = [
        n[0] for n in group_readers(groups).values() if len(n) == 1 and unsupported(groups.layers[n[0]].module) is None
    ]
    # the joint modes also refit the kept filters of each reader's producer, with an output offset
    pairs = [joint_producer(groups, n) for n in names] if settings.mode in JOINT_MODES else []
    producers = {pair[0] for pair in pairs if isinstance(pair, tuple)}
    names = list(dict.fromkeys(names + sorted(producers)))
    sizes = _input_sizes(groups, names)
    worst: tuple[int, str] | None = None  # (images needed, message)
    for name in [n for n in names if n in sizes]:  # a layer the forward pass never reaches is never refitted
        module = groups.layers[name].module
        offset = name in producers or offset_home(module, groups.bn_after_conv.get(name), groups.model) is not None
        unknowns, what = _unknowns(module, settings.mode, sizes[name], offset)
        per_image = min(settings.positions, max(1, _positions_per_image(groups, name, settings.mode, sizes[name])))
        needed = math.ceil(unknowns / per_image)
        if images < needed and (worst is None or needed > worst[0]):
            worst = (
                needed,
                f"--calib-images {images} x {per_image} positions per image give layer {name} {images * per_image} "
                f"samples, fewer than its {unknowns} unknowns per output ({what}): the least-squares system would "
                f"be under-determined; use --calib-images {needed} or more",
            )
    if worst is not None:
        raise ConfigError(worst[1])
