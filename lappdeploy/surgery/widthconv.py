"""The width-preserving bypass (`--bypass width`, docs/lapp.md#the-width-bypass), a leaf module like
`repconv.py`.

`WidthBypassConvBN` computes bypass_bn(conv_1x1(x)) + scatter(bn(conv_kxk(x))). The main path's filters
are a channel group of their own (one threshold per layer; its mask multiplies the main BN's output); the
1x1 bypass is never pruned, so the layer's output keeps its width whatever the main path keeps, and a
layer pruned very narrow still passes every output channel on. `ChannelScatter` places the main path's
kept filters at their output channels (zeros elsewhere); the surgery registers it with torch-pruning as
a barrier, which is what separates the main filters from the output's group.

`folded()` gives the deploy form: BN folded into both paths, the 1x1 folded into the centre tap of the
kept kxk filters, the other outputs computed by the 1x1 alone, the two merged in channel order. Per
output position that is k*k*C_in*K + C_in*(C - K) MACs for K kept of C filters, against k*k*C_in*C dense.
"""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.models.tracing import one_op_active
from lappdeploy.surgery.repconv import bypass_branch, fuse_conv_bn

__all__ = ["ChannelScatter", "WidthBypassConvBN", "WidthBypassDeploy"]


def _scatter(x: torch.Tensor, kept: torch.Tensor, width: int) -> torch.Tensor:
    if len(kept) == width:  # kept is sorted, so all of them is the identity
        return x
    return x.new_zeros((x.shape[0], width, *x.shape[2:])).index_copy(1, kept, x)


class _ScatterAsOneOp(torch.autograd.Function):
    """The scatter as a single autograd node (for the dependency trace)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kept: torch.Tensor, width: int) -> torch.Tensor:
        ctx.save_for_backward(kept)
        return _scatter(x, kept, width)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kept,) = ctx.saved_tensors
        return grad.index_select(1, kept), None, None


class ChannelScatter(nn.Module):
    """Put input channel i at output channel kept[i] of `width` channels, zeros elsewhere. `kept` is a
    buffer (sorted), cut by torch-pruning when the main path's filters are removed."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.register_buffer("kept", torch.arange(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if one_op_active():
            return _ScatterAsOneOp.apply(x, self.kept, self.width)
        return _scatter(x, self.kept, self.width)

    def extra_repr(self) -> str:
        return f"kept={len(self.kept)}, width={self.width}"


class WidthBypassConvBN(nn.Module):
    """bypass_bn(bypass_conv(x)) + scatter(bn(conv(x))); the conv's filters prunable on their own."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.scatter = ChannelScatter(conv.out_channels)
        self.bypass_conv, self.bypass_bn = bypass_branch(conv, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bypass_bn(self.bypass_conv(x)) + self.scatter(self.bn(self.conv(x)))

    @torch.no_grad()
    def folded(self) -> nn.Module:
        """The deploy form computing this block's eval-mode function: one kxk conv where every filter
        is kept, else a `WidthBypassDeploy`."""
        weight, bias = fuse_conv_bn(self.conv, self.bn)
        bypass_weight, bypass_bias = fuse_conv_bn(self.bypass_conv, self.bypass_bn)
        kept = self.scatter.kept
        k_h, k_w = self.conv.kernel_size
        weight[:, :, k_h // 2, k_w // 2] += bypass_weight[kept, :, 0, 0]  # the 1x1 as the centre tap
        main = _conv_like(self.conv, weight, bias + bypass_bias[kept])
        rest = torch.ones(self.scatter.width, dtype=torch.bool, device=kept.device)
        rest[kept] = False
        if not bool(rest.any()):
            return main
        rest_idx = rest.nonzero().flatten()
        others = _conv_like(self.bypass_conv, bypass_weight[rest_idx], bypass_bias[rest_idx])
        # output channel c is entry order[c] of cat([main outputs, other outputs])
        order = torch.argsort(torch.cat([kept, rest_idx]))
        return WidthBypassDeploy(main, others, order)


def _conv_like(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    out = nn.Conv2d(
        conv.in_channels,
        weight.shape[0],
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=True,
    ).to(device=weight.device, dtype=weight.dtype)
    out.weight.copy_(weight)
    out.bias.copy_(bias)
    return out


class _DeployAsOneOp(torch.autograd.Function):
    """A deploy block as a single autograd node whose only input is x (for the dependency trace only)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, block: WidthBypassDeploy) -> torch.Tensor:
        return block.merge(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise RuntimeError("a folded width bypass is traced, not trained")


class WidthBypassDeploy(nn.Module):
    """Deploy form of a width bypass: `main` (kxk, the kept filters with the 1x1 in their centre tap) and
    `others` (1x1, the outputs whose kxk filter was removed), merged in channel order."""

    def __init__(self, main: nn.Conv2d, others: nn.Conv2d, order: torch.Tensor) -> None:
        super().__init__()
        self.main = main
        self.others = others
        self.register_buffer("order", order.clone())

    @property
    def out_channels(self) -> int:
        return len(self.order)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.main(x), self.others(x)], 1).index_select(1, self.order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if one_op_active():
            return _DeployAsOneOp.apply(x, self)
        return self.merge(x)
