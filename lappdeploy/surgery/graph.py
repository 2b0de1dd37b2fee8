"""Channel groups of a network, found with torch-pruning's DependencyGraph, and where each group's
channels live in every layer.

A *group* is a set of coupled channels that must be kept or removed together: every conv writing into
one ResNet residual stream, a conv and the BN and depthwise conv that follow it, a DenseNet layer's
output wherever the concatenated feature map carries it. A group is named by the qualified name of
its first producing conv/linear layer (in `named_modules()` order), which is stable across processes
and unchanged when a bypass block wraps the conv (see `bypass.py`).

Channels of all prunable groups are laid end to end in one *global* channel vector (group g owns
positions offset_g .. offset_g + C_g - 1). Every layer gets index maps from its own input/output
channels to that vector (-1 for a channel no prunable group owns), so a kept-mask over the global
vector gives each layer's kept channel counts exactly (`cost.py`) and each producer's channel mask
(`masking.py`), by a single gather.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from lappdeploy.errors import SurgeryError
from lappdeploy.models.shuffle import ChannelShuffle
from lappdeploy.models.tracing import as_one_op
from lappdeploy.surgery.repconv import RepConvBN
from lappdeploy.surgery.widthconv import ChannelScatter, WidthBypassDeploy

__all__ = [
    "ChannelGroup",
    "ChannelGroups",
    "LayerChannels",
    "SurgeryError",
    "after_norm",
    "analyze",
    "build_dependency_graph",
    "canonical_name",
    "is_depthwise",
    "is_norm_act",
    "matches_ignore",
    "resolve_module",
]


@dataclass
class ChannelGroup:
    """One set of coupled channels."""

    id: str  # canonical qualified name of the first producing conv/linear layer
    channels: int  # C_g
    offset: int = -1  # first position in the global channel vector; -1 while not prunable
    # Grouped convolutions (ResNeXt, RegNet) split the channels into `segments` equal blocks; removal
    # must take the same positions from every block, so channel c is decided with c % (C_g // segments).
    segments: int = 1
    excluded: str | None = None  # why the group is not prunable (None: prunable)
    modules: list[str] = field(default_factory=list)  # canonical names of the modules whose outputs it spans

    @property
    def prunable(self) -> bool:
        return self.excluded is None

    @property
    def segment_size(self) -> int:
        return self.channels // self.segments


@dataclass
class LayerChannels:
    """Where the channels of one module live in the global channel vector."""

    name: str  # canonical qualified name
    module: nn.Module
    out_map: torch.Tensor | None = None  # LongTensor[C_out], global position or -1
    in_map: torch.Tensor | None = None  # LongTensor[C_in] (conv/linear only)


def canonical_name(model: nn.Module, name: str) -> str:
    """The name a module has in the dense model: the main conv of a bypass block is named after the block."""
    parent_name, _, leaf = name.rpartition(".")
    if leaf == "conv" and parent_name and isinstance(model.get_submodule(parent_name), RepConvBN):
        return parent_name
    return name


def resolve_module(model: nn.Module, group_id: str) -> nn.Module:
    """The module a canonical group id names (the main conv inside a bypass block, where there is one)."""
    try:
        module = model.get_submodule(group_id)
    except AttributeError:
        raise SurgeryError(f"the plan names group {group_id!r}, but the model has no module of that name") from None
    return module.conv if isinstance(module, RepConvBN) else module


def build_dependency_graph(model: nn.Module, example_inputs: torch.Tensor):
    """torch-pruning's DependencyGraph of `model`, traced on `example_inputs` (a batch of >= 1).

    Tracing needs autograd and leaves the model in eval mode; the model's mode is restored here.
    """
    import torch_pruning as tp

    was_training = model.training
    # tracing follows autograd: a frozen layer fed by the image would have no grad_fn and drop out
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            # tp warns about unwrapped parameters (e.g. ConvNeXt layer scales) it then handles itself
            warnings.simplefilter("ignore")
            with as_one_op():  # shuffles, scatters and folded width bypasses are one node each: barriers
                return tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_inputs, verbose=False, customized_pruners=_barriers(),
                )  # fmt: skip
    except SurgeryError:
        raise
    except Exception as exc:
        raise SurgeryError(
            f"torch-pruning cannot trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
            "this architecture is not supported for channel removal (see README, 'Surgery')"
        ) from None
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(False)


@functools.cache
def _barriers() -> dict:
    """torch-pruning's view of the modules it cannot follow op by op: their input and output channels are
    not coupled (distinct prune functions), so the channels on either side form their own groups.
    `analyze` keeps whole the groups on the output side (and on both sides of a shuffle or a folded width
    bypass); only a width bypass's scatter has its input channels (the main path's filters) removed."""
    import torch_pruning as tp

    class Barrier(tp.pruner.BasePruningFunc):
        def prune_out_channels(self, layer: nn.Module, idxs):
            raise SurgeryError(f"the output channels of {layer} cannot be removed")

        def prune_in_channels(self, layer: nn.Module, idxs):
            raise SurgeryError(f"the input channels of {layer} cannot be removed")

        def get_out_channels(self, layer: ChannelShuffle) -> int:
            return layer.channels

        def get_in_channels(self, layer: ChannelShuffle) -> int:
            return layer.channels

    class DeployBarrier(Barrier):
        def get_out_channels(self, layer: WidthBypassDeploy) -> int:
            return layer.out_channels

        def get_in_channels(self, layer: WidthBypassDeploy) -> int:
            return layer.main.in_channels

    class ScatterPruner(Barrier):
        def prune_in_channels(self, layer: ChannelScatter, idxs):
            keep = torch.ones(len(layer.kept), dtype=torch.bool)
            keep[torch.as_tensor(list(idxs), dtype=torch.long)] = False
            layer.kept = layer.kept[keep.to(layer.kept.device)]
            return layer

        def get_out_channels(self, layer: ChannelScatter) -> int:
            return layer.width

        def get_in_channels(self, layer: ChannelScatter) -> int:
            return len(layer.kept)

    return {ChannelShuffle: Barrier(), WidthBypassDeploy: DeployBarrier(), ChannelScatter: ScatterPruner()}


def matches_ignore(name: str, patterns: Iterable[str]) -> bool:
    """Whether module `name` matches one of the `--ignore` fnmatch patterns."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not is_depthwise(module)


@dataclass
class ChannelGroups:
    """The result of `analyze`: groups, per-module channel maps and layer geometry of one model."""

    model: nn.Module
    graph: object  # torch_pruning.DependencyGraph
    example_inputs: torch.Tensor
    groups: list[ChannelGroup]
    layers: dict[str, LayerChannels]  # canonical name -> maps (conv, linear and every norm a group spans)
    # canonical conv name -> canonical BN name, for each conv whose only consumer is that BN (folds away)
    bn_after_conv: dict[str, str]
    # output elements per channel per sample, summed over calls, of every conv/linear layer
    positions: dict[str, int]
    fingerprint: tuple = ()  # parameter names and shapes at analysis time (see `check_fresh`)

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    @property
    def global_channels(self) -> int:
        return sum(g.channels for g in self.prunable)

    def check_fresh(self) -> None:
        """Raise SurgeryError when the model's parameters changed shape since this analysis (channels were
        removed): its channel maps no longer describe the model; analyse it again."""
        if self.fingerprint != model_fingerprint(self.model):
            raise SurgeryError(
                "the channel-group analysis is stale: the model's channels changed since it was made; "
                "call analyze(model, example_inputs) again"
            )

    def group(self, group_id: str) -> ChannelGroup:
        for g in self.groups:
            if g.id == group_id:
                return g
        raise SurgeryError(f"the model has no channel group {group_id!r}")

    def prunable_group(self, group_id: str) -> ChannelGroup:
        g = self.group(group_id)
        if not g.prunable:
            raise SurgeryError(f"channel group {group_id!r} cannot be pruned: {g.excluded}")
        return g


def model_fingerprint(model: nn.Module) -> tuple:
    """Names and shapes of every parameter: changes whenever channels are removed or modules replaced."""
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def _terminal_nodes(graph) -> set:
    """Graph nodes whose output leaves the network (the logits)."""
    return {node for node in graph.module2node.values() if not node.outputs}


def _norm_reason(optype_name: str) -> str | None:
    if optype_name in ("LN", "GN"):
        return (
            "its channels pass through a LayerNorm/GroupNorm, which normalises across channels, so removing "
            "a channel changes the others' outputs (not an exact removal)"
        )
    return None


@dataclass
class _GroupScan:
    """What one torch-pruning group says about its modules, before it becomes a ChannelGroup."""

    producers: dict[str, bool] = field(default_factory=dict)  # conv/linear name -> numbers channels as the root
    spanned: set[str] = field(default_factory=set)  # modules whose outputs the group spans
    reasons: list[str] = field(default_factory=list)  # why it cannot be pruned (first one reported)
    segment_counts: list[int] = field(default_factory=list)  # `groups` of the grouped convs it feeds
    # ((canonical module name, "in"/"out"), the module's channel indices, the matching root channel indices)
    entries: list[tuple[tuple[str, str], torch.Tensor, torch.Tensor]] = field(default_factory=list)


def _scan_group(tp_group, graph, model: nn.Module, names: dict, terminal: set, patterns: list[str]) -> _GroupScan:
    scan = _GroupScan()
    for item in tp_group:
        node, is_out = item.dep.target, graph.is_out_channel_pruning_fn(item.dep.handler)
        module = node.module
        if is_out and node in terminal:
            scan.reasons.append("it feeds the network's output (classifier classes)")
        norm_reason = _norm_reason(node.type.name) if is_out else None
        if norm_reason:
            scan.reasons.append(norm_reason)
        if not (isinstance(module, nn.Module) and module in names):
            continue  # functional ops (add, cat, reshape) and unwrapped parameters carry no channels of their own
        if isinstance(module, ChannelShuffle):
            scan.reasons.append("its channels cross a channel shuffle (kept whole, so the shuffle stays exact)")
            continue
        if isinstance(module, ChannelScatter):
            if is_out:  # the input side is the main path's filters: their own, prunable group
                scan.reasons.append("its width is kept by width bypasses (their kxk filters are pruned instead)")
            continue
        if isinstance(module, WidthBypassDeploy):
            scan.reasons.append("it passes through a folded width bypass (deploy form, not pruned again)")
            continue
        name = canonical_name(model, names[module])
        is_layer = isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
        if is_out:
            scan.spanned.add(name)
            if is_layer:
                scan.producers[name] = list(item.idxs) == list(item.root_idxs)
            if matches_ignore(name, patterns):
                scan.reasons.append(f"module {name} matches an --ignore pattern")
        if is_out or is_layer:
            indices = (torch.as_tensor(item.idxs, dtype=torch.long), torch.as_tensor(item.root_idxs))
            scan.entries.append(((name, "out" if is_out else "in"), *indices))
        if _is_grouped(module):
            if list(item.idxs) != list(item.root_idxs):
                scan.reasons.append(f"grouped conv {name} sees the channels reordered")
            scan.segment_counts.append(module.groups)
    return scan


def _channel_group(scan: _GroupScan, channels: int, order: dict[str, int]) -> ChannelGroup | None:
    """The group a scan describes, named by its first producer; None when no conv/linear produces it."""
    if not scan.producers:
        return None
    first = min(scan.producers, key=lambda n: order.get(n, len(order)))
    segments = math.lcm(*scan.segment_counts) if scan.segment_counts else 1
    reasons = list(scan.reasons)
    if not scan.producers[first]:
        reasons.append(f"its first producer {first} numbers the channels differently from torch-pruning's root")
    if channels < 2:
        reasons.append("it has a single channel")
    elif channels % segments:
        reasons.append(f"its {channels} channels do not split into the {segments} conv groups")
    return ChannelGroup(
        id=first,
        channels=channels,
        segments=segments,
        excluded=reasons[0] if reasons else None,
        modules=sorted(scan.spanned, key=lambda n: order.get(n, len(order))),
    )


def _layer_maps(model: nn.Module, groups: list[ChannelGroup], pending: dict) -> dict[str, LayerChannels]:
    """Every module's input/output index maps into the global channel vector (-1: not prunable)."""
    layers: dict[str, LayerChannels] = {}
    for (name, direction), entries in pending.items():
        module = resolve_module(model, name)
        index_map = torch.full((_width(module, direction),), -1, dtype=torch.long)
        for layer_idxs, group_index, group_channel in entries:
            g = groups[group_index]
            if g.prunable:
                index_map[layer_idxs] = g.offset + group_channel
        layer = layers.setdefault(name, LayerChannels(name=name, module=module))
        if direction == "out":
            layer.out_map = index_map
        else:
            layer.in_map = index_map
    for layer in layers.values():
        if is_depthwise(layer.module) and layer.in_map is None:
            layer.in_map = layer.out_map  # a depthwise conv's input channel i is its output channel i
    return layers


def analyze(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    ignore: Iterable[str] = (),
) -> ChannelGroups:
    """Find the channel groups of `model` and map every layer's channels onto them.

    `ignore` holds fnmatch patterns of module names (e.g. "layer4.*", "features.0"); a group spanning a
    matched module is not prunable. Never prunable either: groups that reach the network's output (the
    classifier's classes), groups normalised across channels (LayerNorm/GroupNorm), single channels.
    The network's input channels are never a group (only module outputs are).
    """
    graph = build_dependency_graph(model, example_inputs)
    names = {module: name for name, module in model.named_modules()}
    order = {name: i for i, name in enumerate(names.values())}
    terminal = _terminal_nodes(graph)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp_groups = list(graph.get_all_groups())
    groups: list[ChannelGroup] = []
    pending: dict[tuple[str, str], list[tuple[torch.Tensor, int, torch.Tensor]]] = {}
    for tp_group in tp_groups:
        scan = _scan_group(tp_group, graph, model, names, terminal, list(ignore))
        group = _channel_group(scan, len(tp_group[0].idxs), order)
        if group is None:
            continue
        for key, layer_idxs, root_idxs in scan.entries:
            pending.setdefault(key, []).append((layer_idxs, len(groups), root_idxs))
        groups.append(group)
    offset = 0
    for g in groups:  # prunable groups lie end to end in the global channel vector
        if g.prunable:
            g.offset, offset = offset, offset + g.channels
    layers = _layer_maps(model, groups, pending)
    bn_after_conv = _bn_after_conv(model, graph, names)
    positions = _positions(model, example_inputs)
    return ChannelGroups(
        model, graph, example_inputs, groups, layers, bn_after_conv, positions, model_fingerprint(model)
    )


def _width(module: nn.Module, direction: str) -> int:
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if direction == "out" else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if direction == "out" else module.in_features
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.num_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    raise SurgeryError(f"cannot tell the channel count of {type(module).__name__}")


def is_norm_act(module: nn.Module) -> bool:
    """A BatchNorm fused with what follows it (timm's BatchNormAct2d: batch norm, then `drop`, then `act`)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and all(
        isinstance(getattr(module, part, None), nn.Module) for part in ("drop", "act")
    )


def after_norm(bn: nn.Module) -> nn.Module:
    """What takes a BatchNorm's place once its normalisation is folded into the conv before it: nothing for a
    plain BN; the dropout and activation of a norm-act module (timm's), in their order."""
    return nn.Sequential(bn.drop, bn.act) if is_norm_act(bn) else nn.Identity()


def _bn_of(consumer):
    """The BatchNorm module a conv's only consumer node is, or (a norm-act module, whose node sits at its
    activation) the module right after the batch-norm op that is; None otherwise."""
    bn = consumer.module
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return bn if len({n for n in consumer.inputs}) == 1 else None
    following = {n for n in consumer.outputs}
    if "BatchNorm" not in getattr(consumer, "name", "") or len(following) != 1:
        return None
    (node,) = following
    inputs = {n for n in node.inputs}
    return node.module if is_norm_act(node.module) and inputs == {consumer} else None


def _bn_after_conv(model: nn.Module, graph, names: dict) -> dict[str, str]:
    pairs = {}
    for module, node in graph.module2node.items():
        if not isinstance(module, nn.modules.conv._ConvNd) or module not in names:
            continue
        consumers = {n for n in node.outputs}
        if len(consumers) != 1:
            continue
        bn = _bn_of(next(iter(consumers)))
        if bn is not None and bn in names and bn.num_features == module.out_channels and bn.track_running_stats:
            pairs[canonical_name(model, names[module])] = canonical_name(model, names[bn])
    return pairs


@torch.no_grad()
def _positions(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, int]:
    """Output elements per channel per sample of every conv/linear layer (spatial positions; summed over calls)."""
    positions: dict[str, int] = {}
    handles = []
    batch = example_inputs.shape[0]

    def hook(name: str):
        def record(module: nn.Module, _inputs, output: torch.Tensor) -> None:
            channels = output.shape[1] if isinstance(module, nn.modules.conv._ConvNd) else output.shape[-1]
            positions[name] = positions.get(name, 0) + output.numel() // channels // batch

        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(module.register_forward_hook(hook(canonical_name(model, name))))
    was_training = model.training
    model.eval()
    try:
        model(example_inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return positions
