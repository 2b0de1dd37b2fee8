"""Deploy cost of a (masked) model, analytically: MACs per sample and parameters of the pruned, folded
network, from the kept-channel mask alone.

Deploy form = channels removed, bypass blocks folded, every conv->BN pair folded into a conv with bias.
Per layer, with kept channel counts c_in, c_out from the mask (LAPP.md section 4):
  conv       positions * k_h * k_w * (c_in / groups) * c_out  (+ positions * c_out for the bias)
  depthwise  positions * k_h * k_w * c_out                    (+ positions * c_out)
  linear     positions * c_in * c_out                         (+ positions * c_out)
where positions = output elements per channel per sample. This is how `models.macs.count_macs` (and
torch-pruning's `count_ops_and_params`) count conv+linear layers, so the two agree exactly on the
pruned, folded model. With a soft (0..1) mask the same expression is differentiable in the mask; it is
bilinear in the kept counts of a layer's producer and consumer groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lappdeploy.surgery.bypass import RepConvBN
from lappdeploy.surgery.graph import ChannelGroups, _is_depthwise, canonical_name

__all__ = ["DeployCost", "deploy_cost", "plan_cost"]


@dataclass(frozen=True)
class DeployCost:
    macs: int  # conv + linear MACs per sample of the deploy model
    params: int  # all parameters of the deploy model


def _kept(index_map: torch.Tensor | None, extended_mask: torch.Tensor, width: int) -> torch.Tensor | float:
    if index_map is None:
        return float(width)
    # index -1 picks the mask's last element, a constant 1 for channels no prunable group owns
    return extended_mask[index_map.to(extended_mask.device)].sum()


def deploy_cost(groups: ChannelGroups, keep_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MACs, params) of the deploy model for a kept mask over the global channel vector, as float64
    tensors differentiable in `keep_mask` (exact integers for a 0/1 mask)."""
    mask = torch.cat([keep_mask.to(torch.float64), keep_mask.new_ones(1, dtype=torch.float64)])
    macs = mask.new_zeros(())
    params = mask.new_zeros(())
    model = groups.model
    folded_bns = set(groups.bn_after_conv.values())
    counted = set()
    for name, module in model.named_modules():
        canonical = canonical_name(model, name)
        layer = groups.layers.get(canonical)
        in_map = layer.in_map if layer is not None else None
        out_map = layer.out_map if layer is not None else None
        if isinstance(module, RepConvBN):
            counted.update(id(m) for m in module.modules())
            module = module.conv  # the block folds into its main conv (with bias)
            bias = True
        elif id(module) in counted:
            continue
        else:
            bias = getattr(module, "bias", None) is not None or canonical in groups.bn_after_conv
        if isinstance(module, nn.modules.conv._ConvNd):
            c_out = _kept(out_map, mask, module.out_channels)
            area = 1
            for k in module.kernel_size:
                area *= k
            if _is_depthwise(module):
                per_out = area
            else:
                per_out = area * _kept(in_map, mask, module.in_channels) / module.groups
            positions = groups.positions.get(canonical, 0)
            macs = macs + positions * (per_out + int(bias)) * c_out
            params = params + (per_out + int(bias)) * c_out
        elif isinstance(module, nn.Linear):
            c_out = _kept(out_map, mask, module.out_features)
            c_in = _kept(in_map, mask, module.in_features)
            positions = groups.positions.get(canonical, 0)
            macs = macs + positions * (c_in + int(bias)) * c_out
            params = params + (c_in + int(bias)) * c_out
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if canonical not in folded_bns and module.affine:
                params = params + 2 * _kept(out_map, mask, module.num_features)
        else:
            params = params + sum(p.numel() for p in module.parameters(recurse=False))
    return macs, params


def plan_cost(groups: ChannelGroups, plan) -> DeployCost:
    """Exact deploy MACs and params of `groups.model` pruned by `plan` and folded."""
    with torch.no_grad():
        macs, params = deploy_cost(groups, plan.keep_mask(groups))
    return DeployCost(macs=round(macs.item()), params=round(params.item()))
