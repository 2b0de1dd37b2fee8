"""Channel masks on a dense model: zero the dropped channels where they are produced.

The mask multiplies a group's channels at every producer: the output of each BatchNorm in the group, or
the conv/linear output where no BN follows, so a masked channel is exactly zero everywhere downstream
and physical removal changes nothing (docs/lapp.md#masks-and-the-straight-through-gradient). LAPP drives
the mask with learned thresholds; tests use it to check that removal computes the masked function.
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
            module = layer.module
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                self._handles += self._affine_hooks(module, layer.out_map)
            else:
                channel_dim = -1 if isinstance(module, nn.Linear) else 1
                self._handles.append(module.register_forward_hook(self._output_hook(layer.out_map, channel_dim)))

    def _channel_mask(self, out_map: torch.Tensor, cache: dict) -> torch.Tensor:
        device = self._extended.device
        index = cache.get(device)
        if index is None:
            index = cache[device] = out_map.to(device)
        return self._extended[index]

    def _output_hook(self, out_map: torch.Tensor, channel_dim: int):
        cache: dict[torch.device, torch.Tensor] = {}

        def apply(_module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor | None:
            if self._extended is None:
                return None
            channel_mask = self._channel_mask(out_map, cache).to(device=output.device, dtype=output.dtype)
            shape = [1] * output.dim()
            shape[channel_dim] = -1
            return output * channel_mask.view(shape)

        return apply

    def _affine_hooks(self, bn: nn.modules.batchnorm._BatchNorm, out_map: torch.Tensor) -> list:
        """Mask a BatchNorm through its affine parameters: m * (gamma * x^ + beta) = (m * gamma) * x^ +
        m * beta. Same function and gradients as multiplying the output, without another pass over the
        activation (forward and backward): for narrow CNNs that pass costs a third of a training step.
        For the duration of the forward call the parameters are swapped for their masked versions."""
        cache: dict[torch.device, torch.Tensor] = {}
        originals: dict[str, nn.Parameter] = {}

        def before(module: nn.Module, _inputs) -> None:
            if self._extended is None:
                return
            channel_mask = self._channel_mask(out_map, cache)
            for key in ("weight", "bias"):
                originals[key] = module._parameters[key]
                masked = originals[key] * channel_mask.to(device=originals[key].device, dtype=originals[key].dtype)
                module._parameters[key] = masked  # a plain tensor for this call; autograd reaches the Parameter

        def after(module: nn.Module, _inputs, _output) -> None:
            while originals:
                key, parameter = originals.popitem()
                module._parameters[key] = parameter

        return [bn.register_forward_pre_hook(before), bn.register_forward_hook(after, always_call=True)]

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
