"""Deploy cost of a (masked) model, analytically: MACs per sample and parameters of the pruned, folded
network, from the kept-channel mask alone.

Deploy form = channels removed, bypass blocks folded, every conv->BN pair folded into a conv with bias.
Per layer, with kept channel counts c_in, c_out from the mask (docs/lapp.md#deploy-macs):
  conv       positions * k_h * k_w * (c_in / groups) * c_out  (+ positions * c_out for the bias)
  depthwise  positions * k_h * k_w * c_out                    (+ positions * c_out)
  linear     positions * c_in * c_out                         (+ positions * c_out)
where positions = output elements per channel per sample. A width bypass block (widthconv.py) counts its
kxk conv over the kept filters K plus its 1x1 over the other C - K outputs, as its deploy form computes.
This is how `models.macs.count_macs` (and
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
from lappdeploy.surgery.widthconv import WidthBypassConvBN

__all__ = ["CostModel", "DeployCost", "cost_model", "deploy_cost", "plan_cost"]


@dataclass(frozen=True)
class DeployCost:
    macs: int  # conv + linear MACs per sample of the deploy model
    params: int  # all parameters of the deploy model


class _LayerTerms:
    """Per-layer index maps and cost coefficients, collected while walking the model once."""

    def __init__(self) -> None:
        self.out_index, self.in_index, self.out_layer, self.in_layer = [], [], [], []
        self.out_sign, self.out_base = [], []  # c_out = out_base + sum(out_sign * mask[out_index])
        self.coeffs: list[tuple[float, float, float, float]] = []  # macs_a, macs_b, params_a, params_b
        self.names: list[str] = []
        self.kinds: list[str] = []

    def add(self, name, kind, in_map, out_map, in_width, out_width, coeffs, *, complement=False) -> None:
        """complement: the layer computes the channels of `out_map` that a mask drops (width - kept)."""
        layer = len(self.coeffs)
        self.names.append(name)
        self.kinds.append(kind)
        for index, width, indices, layers in (
            (out_map, out_width, self.out_index, self.out_layer),
            (in_map, in_width, self.in_index, self.in_layer),
        ):
            index = torch.full((width,), -1, dtype=torch.long) if index is None else index
            indices.append(index)
            layers.append(torch.full((len(index),), layer, dtype=torch.long))
        width = len(self.out_index[-1])
        self.out_sign.append(torch.full((width,), -1.0 if complement else 1.0, dtype=torch.float64))
        self.out_base.append(float(width) if complement else 0.0)
        self.coeffs.append(tuple(float(c) for c in coeffs))

    def add_conv(self, name, module, in_map, out_map, positions: int, bias: int, *, complement=False) -> None:
        area = math.prod(module.kernel_size)
        if is_depthwise(module):  # one kxk filter per channel: linear in c_out
            coeffs, kind = (0, positions * (area + bias), 0, area + bias), "depthwise"
        else:
            per_pair = area / module.groups
            coeffs, kind = (positions * per_pair, positions * bias, per_pair, bias), "conv"
        widths = (module.in_channels, module.out_channels)
        self.add(name, kind, in_map, out_map, *widths, coeffs, complement=complement)


class CostModel:
    """The deploy cost of one analysed model as a function of the kept mask, precomputed once.

    Every layer contributes `a * c_in * c_out + b * c_out + c` MACs (and likewise parameters), where
    c_in / c_out are its kept input / output channel counts: sums of the mask over the layer's index
    maps (a channel no prunable group owns counts as a constant 1; the 1x1 of a width bypass counts the
    channels its kxk conv drops). Evaluating it is one gather and two `index_add`s, cheap enough to run
    at every training step (LAPP's penalty) and in bisections.
    """

    def __init__(self, groups: ChannelGroups) -> None:
        terms = _LayerTerms()
        self.constant_params = 0  # parameters of layers whose size no mask changes (per model)
        counted: set[int] = set()  # modules already accounted for as part of a bypass block
        folded_bns = set(groups.bn_after_conv.values())
        for name, module in groups.model.named_modules():
            if id(module) in counted:
                continue
            if isinstance(module, (RepConvBN, WidthBypassConvBN)):
                counted.update(id(m) for m in module.modules())
            self._add_module(terms, groups, folded_bns, canonical_name(groups.model, name), module)
        # per layer entry: the deploy module's canonical name and kind (conv, depthwise, linear, bn), so
        # other cost models (measured latency) can attach their own per-layer terms to the same kept counts
        self.names, self.kinds = terms.names, terms.kinds
        self.layers = len(terms.coeffs)
        cat = (lambda xs: torch.cat(xs)) if terms.coeffs else (lambda xs: torch.zeros(0, dtype=torch.long))
        self._out_index, self._out_layer = cat(terms.out_index), cat(terms.out_layer)
        self._in_index, self._in_layer = cat(terms.in_index), cat(terms.in_layer)
        self._out_sign = cat(terms.out_sign).double()
        self._out_base = torch.tensor(terms.out_base, dtype=torch.float64)
        self._coeffs = torch.tensor(terms.coeffs, dtype=torch.float64).reshape(-1, 4).T.contiguous()
        self._on: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _add_module(
        self, terms: _LayerTerms, groups: ChannelGroups, folded_bns: set[str], canonical: str, module: nn.Module
    ) -> None:
        layer = groups.layers.get(canonical)
        in_map, out_map = (layer.in_map, layer.out_map) if layer is not None else (None, None)
        positions = groups.positions.get(canonical, 0)  # output elements per channel per sample
        if isinstance(module, WidthBypassConvBN):
            main_name = f"{canonical}.conv"
            main = groups.layers.get(main_name)
            in_map, out_map = (main.in_map, main.out_map) if main is not None else (None, None)
            positions = groups.positions.get(main_name, 0)
            terms.add_conv(main_name, module.conv, in_map, out_map, positions, 1)
            # the 1x1 computes the outputs whose kxk filter is dropped; with every filter kept it folds away
            bypass = f"{canonical}.bypass_conv"
            terms.add_conv(bypass, module.bypass_conv, in_map, out_map, positions, 1, complement=True)
        elif isinstance(module, RepConvBN):  # the block folds into its main conv (with bias)
            terms.add_conv(canonical, module.conv, in_map, out_map, positions, 1)
        elif isinstance(module, nn.modules.conv._ConvNd):
            bias = int(module.bias is not None or canonical in groups.bn_after_conv)
            terms.add_conv(canonical, module, in_map, out_map, positions, bias)
        elif isinstance(module, nn.Linear):
            bias = int(module.bias is not None or canonical in groups.bn_after_conv)
            coeffs = (positions, positions * bias, 1, bias)
            terms.add(canonical, "linear", in_map, out_map, module.in_features, module.out_features, coeffs)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if canonical not in folded_bns and module.affine:  # an unfolded BN keeps gamma and beta
                terms.add(canonical, "bn", None, out_map, 1, module.num_features, (0, 0, 0, 2))
        else:
            self.constant_params += sum(p.numel() for p in module.parameters(recurse=False))

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._on:  # copied to each device once, not at every evaluation
            self._on[device] = tuple(
                t.to(device)
                for t in (
                    self._out_index, self._out_layer, self._in_index, self._in_layer, self._coeffs,
                    self._out_sign, self._out_base,
                )
            )  # fmt: skip
        return self._on[device]

    def kept_counts(self, keep_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_in, c_out) of every layer, float64, differentiable in `keep_mask`."""
        mask = torch.cat([keep_mask.to(torch.float64), keep_mask.new_ones(1, dtype=torch.float64)])
        out_index, out_layer, in_index, in_layer, _, out_sign, out_base = self._tensors(mask.device)
        c_out = out_base.index_add(0, out_layer, mask[out_index] * out_sign)
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
