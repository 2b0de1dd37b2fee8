"""Channel masks on a dense model: zero the dropped channels where they are produced.

The mask multiplies a group's channels at every producer (LAPP.md section 3): the output of each
BatchNorm in the group, or the conv/linear output where no BN follows, so a masked channel is exactly
zero everywhere downstream and physical removal changes nothing. LAPP drives the mask with learned
thresholds; tests use it to check that removal computes the masked function.
"""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.surgery.graph import ChannelGroups

__all__ = ["ChannelMasker"]


class ChannelMasker:
    """Forward hooks applying a kept-mask over the global channel vector of `groups`.

    `set(mask)` takes a float tensor of shape (global_channels,) (1 = kept; soft values and autograd
    pass through) or a ChannelPlan; `remove()` detaches the hooks. Usable as a context manager.
    """

    def __init__(self, groups: ChannelGroups) -> None:
        self.groups = groups
        self._extended: torch.Tensor | None = None
        self._handles = []
        masked_by_bn = {
            conv
            for conv, bn in groups.bn_after_conv.items()
            if groups.layers.get(bn) is not None and groups.layers[bn].out_map is not None
        }
        for name, layer in groups.layers.items():
            if layer.out_map is None or not bool((layer.out_map >= 0).any()) or name in masked_by_bn:
                continue
            channel_dim = -1 if isinstance(layer.module, nn.Linear) else 1
            self._handles.append(layer.module.register_forward_hook(self._hook(layer.out_map, channel_dim)))

    def _hook(self, out_map: torch.Tensor, channel_dim: int):
        cache: dict[torch.device, torch.Tensor] = {}

        def apply(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor | None:
            if self._extended is None:
                return None
            device = self._extended.device
            index = cache.get(device)
            if index is None:
                index = cache[device] = out_map.to(device)
            channel_mask = self._extended[index].to(device=output.device, dtype=output.dtype)
            shape = [1] * output.dim()
            shape[channel_dim] = -1
            return output * channel_mask.view(shape)

        return apply

    def set(self, mask) -> None:
        """Use `mask` (tensor over the global channel vector, or a ChannelPlan) from the next forward on."""
        if not torch.is_tensor(mask):
            mask = mask.keep_mask(self.groups)
        self._extended = torch.cat([mask, mask.new_ones(1)])  # index -1: channels outside prunable groups

    def clear(self) -> None:
        self._extended = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._extended = None

    def __enter__(self) -> ChannelMasker:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
