"""ShuffleNetV2's channel shuffle as a module, so channel surgery can see it (README, "Surgery").

torchvision calls `channel_shuffle` (view -> transpose -> view) inside each block's forward. torch-pruning
follows reshapes only where they flatten or split the channel dimension contiguously; an interleaving
permutation breaks its index mapping. Here every block calls a `ChannelShuffle` module instead (same
function, same state dict). While `as_one_op()` is active (the surgery's dependency trace) the module runs
as one autograd node, which the surgery registers as a barrier: the channels that cross a shuffle are kept
whole, the channels inside each branch stay prunable. Outside it the module runs the plain view/transpose,
which ONNX export and torch.fx trace as before.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from lappdeploy.models.tracing import as_one_op, one_op_active

__all__ = ["ChannelShuffle", "as_one_op", "use_shuffle_modules_"]


def _shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, channels, height, width)


class _ShuffleAsOneOp(torch.autograd.Function):
    """The shuffle as a single autograd node (its input is the node's only next function)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, groups: int) -> torch.Tensor:
        ctx.groups = groups
        return _shuffle(x, groups)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # the inverse of a shuffle of C channels in g groups is the shuffle in C / g groups
        return _shuffle(grad, grad.shape[1] // ctx.groups), None


class ChannelShuffle(nn.Module):
    """Interleave the channels of `groups` equal groups (ShuffleNet)."""

    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__()
        self.channels, self.groups = channels, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if one_op_active():
            return _ShuffleAsOneOp.apply(x, self.groups)
        return _shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, groups={self.groups}"


@functools.cache
def _shuffle_unit_class() -> type:
    """Built on first use: importing torchvision is not free, and `import lappdeploy` stays cheap."""
    from torchvision.models.shufflenetv2 import InvertedResidual

    class ShuffleUnit(InvertedResidual):
        """torchvision's ShuffleNetV2 block, calling its `shuffle` module instead of `channel_shuffle`."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return self.shuffle(out)

    ShuffleUnit.__module__, ShuffleUnit.__qualname__ = __name__, "ShuffleUnit"  # pickle finds it here
    return ShuffleUnit


def __getattr__(name: str):
    if name == "ShuffleUnit":
        return _shuffle_unit_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def use_shuffle_modules_(model: nn.Module) -> nn.Module:
    """Make every torchvision ShuffleNetV2 block of `model` call a `ChannelShuffle` module (in place; no
    parameter or buffer changes, so state dicts load either way)."""
    from torchvision.models.shufflenetv2 import InvertedResidual

    unit = _shuffle_unit_class()
    for module in model.modules():
        if isinstance(module, InvertedResidual) and not isinstance(module, unit):
            channels = module.branch2[-3].out_channels * 2  # the block's output: both branches concatenated
            module.__class__ = unit
            module.shuffle = ChannelShuffle(channels, groups=2)
    return model
