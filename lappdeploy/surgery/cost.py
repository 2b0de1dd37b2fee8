"""Deploy cost of a (masked) model, analytically: MACs per sample and parameters of the pruned, folded
network, from the kept-channel mask alone.

Deploy form = channels removed, bypass blocks folded, every conv->BN pair folded into a conv with bias.
Per layer, with kept channel counts c_in, c_out from the mask (docs/lapp.md#deploy-macs):
  conv       positions * k_h * k_w * (c_in / groups) * c_out  (+ positions * c_out for the bias)
  depthwise  positions * k_h * k_w * c_out                    (+ positions * c_out)
  linear     positions * c_in * c_out                         (+ positions * c_out)
where positions = output elements per channel per sample. This is how `models.macs.count_macs` (and
torch-pruning's `count_ops_and_params`) count conv+linear layers, so the two agree exactly on the
pruned, folded model. With a soft (0..1) mask the same expression is differentiable in the mask; it is
bilinear in the kept counts of a layer's producer and consumer groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lappdeploy.surgery.graph import ChannelGroups, canonical_name, is_depthwise
from lappdeploy.surgery.repconv import RepConvBN

__all__ = ["CostModel", "DeployCost", "cost_model", "deploy_cost", "plan_cost"]


@dataclass(frozen=True)
class DeployCost:
    macs: int  # conv + linear MACs per sample of the deploy model
    params: int  # all parameters of the deploy model


class CostModel:
    """The deploy cost of one analysed model as a function of the kept mask, precomputed once.

    Every layer contributes `a * c_in * c_out + b * c_out + c` MACs (and likewise parameters), where
    c_in / c_out are its kept input / output channel counts: sums of the mask over the layer's index
    maps (a channel no prunable group owns counts as a constant 1). Evaluating it is one gather and two
    `index_add`s, cheap enough to run at every training step (LAPP's penalty) and in bisections.
    """

    def __init__(self, groups: ChannelGroups) -> None:
        model = groups.model
        folded_bns = set(groups.bn_after_conv.values())
        counted: set[int] = set()
        out_index, in_index, out_layer, in_layer = [], [], [], []
        macs_a, macs_b, params_a, params_b = [], [], [], []
        self.constant_params = 0  # parameters of layers whose size no mask changes (per model)
        # per layer entry: the deploy module's canonical name and kind (conv, depthwise, linear, bn), so
        # other cost models (measured latency) can attach their own per-layer terms to the same kept counts
        self.names: list[str] = []
        self.kinds: list[str] = []

        def add_layer(in_map, out_map, in_width, out_width, coeffs, kind) -> None:
            layer = len(macs_a)
            self.names.append(canonical)
            self.kinds.append(kind)
            for index, width, indices, layers in (
                (out_map, out_width, out_index, out_layer),
                (in_map, in_width, in_index, in_layer),
            ):
                index = torch.full((width,), -1, dtype=torch.long) if index is None else index
                indices.append(index)
                layers.append(torch.full((len(index),), layer, dtype=torch.long))
            for store, value in zip((macs_a, macs_b, params_a, params_b), coeffs, strict=True):
                store.append(float(value))

        for name, module in model.named_modules():
            canonical = canonical_name(model, name)
            layer = groups.layers.get(canonical)
            in_map = layer.in_map if layer is not None else None
            out_map = layer.out_map if layer is not None else None
            if isinstance(module, RepConvBN):
                counted.update(id(m) for m in module.modules())
                module = module.conv  # the block folds into its main conv (with bias)
                bias = 1
            elif id(module) in counted:
                continue
            else:
                bias = int(getattr(module, "bias", None) is not None or canonical in groups.bn_after_conv)
            positions = groups.positions.get(canonical, 0)  # output elements per channel per sample
            if isinstance(module, nn.modules.conv._ConvNd):
                area = math.prod(module.kernel_size)
                depthwise = is_depthwise(module)
                if depthwise:  # one kxk filter per channel: linear in c_out
                    coeffs = (0, positions * (area + bias), 0, area + bias)
                else:
                    per_pair = area / module.groups
                    coeffs = (positions * per_pair, positions * bias, per_pair, bias)
                kind = "depthwise" if depthwise else "conv"
                add_layer(in_map, out_map, module.in_channels, module.out_channels, coeffs, kind)
            elif isinstance(module, nn.Linear):
                coeffs = (positions, positions * bias, 1, bias)
                add_layer(in_map, out_map, module.in_features, module.out_features, coeffs, "linear")
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                if canonical not in folded_bns and module.affine:  # an unfolded BN keeps gamma and beta
                    add_layer(None, out_map, 1, module.num_features, (0, 0, 0, 2), "bn")
            else:
                self.constant_params += sum(p.numel() for p in module.parameters(recurse=False))
        self.layers = len(macs_a)
        cat = (lambda xs: torch.cat(xs)) if macs_a else (lambda xs: torch.zeros(0, dtype=torch.long))
        self._out_index, self._out_layer = cat(out_index), cat(out_layer)
        self._in_index, self._in_layer = cat(in_index), cat(in_layer)
        self._coeffs = torch.tensor([macs_a, macs_b, params_a, params_b], dtype=torch.float64).reshape(4, -1)
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on:  # copied to each device once, not at every evaluation
            self._on[device] = tuple(
                t.to(device) for t in (self._out_index, self._out_layer, self._in_index, self._in_layer, self._coeffs)
            )
        return self._on[device]

    def kept_counts(self, keep_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_in, c_out) of every layer, float64, differentiable in `keep_mask`."""
        mask = torch.cat([keep_mask.to(torch.float64), keep_mask.new_ones(1, dtype=torch.float64)])
        out_index, out_layer, in_index, in_layer, _ = self._tensors(mask.device)
        c_out = mask.new_zeros(self.layers).index_add(0, out_layer, mask[out_index])
        c_in = mask.new_zeros(self.layers).index_add(0, in_layer, mask[in_index])
        return c_in, c_out

    def __call__(self, keep_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(MACs per sample, params) of the deploy model, float64 scalars differentiable in `keep_mask`."""
        c_in, c_out = self.kept_counts(keep_mask)
        coeffs = self._tensors(c_in.device)[4]
        pair, single = c_in * c_out, c_out
        macs = (coeffs[0] * pair + coeffs[1] * single).sum()
        params = (coeffs[2] * pair + coeffs[3] * single).sum() + self.constant_params
        return macs, params


def cost_model(groups: ChannelGroups) -> CostModel:
    """The (cached) CostModel of an `analyze` result."""
    cached = getattr(groups, "_cost_model", None)
    if cached is None:
        cached = CostModel(groups)
        groups._cost_model = cached
    return cached


def deploy_cost(groups: ChannelGroups, keep_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MACs, params) of the deploy model for a kept mask over the global channel vector, as float64
    tensors differentiable in `keep_mask` (exact integers for a 0/1 mask)."""
    return cost_model(groups)(keep_mask)


def plan_cost(groups: ChannelGroups, plan) -> DeployCost:
    """Exact deploy MACs and params of `groups.model` pruned by `plan` and folded."""
    with torch.no_grad():
        macs, params = deploy_cost(groups, plan.keep_mask(groups))
    return DeployCost(macs=round(macs.item()), params=round(params.item()))
