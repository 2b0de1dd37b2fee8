"""The re-parameterizable bypass block, a leaf module (no other surgery module imports it back):
BN(conv_kxk(x)) + BN_b(conv_1x1(x)), the 1x1 branch aligned to the kxk kernel's centre tap, and the
BatchNorm fusion it folds with (docs/lapp.md#bypass)."""

from __future__ import annotations

import torch
from torch import nn

from lappdeploy.errors import SurgeryError

__all__ = ["RepConvBN", "bypass_branch", "centre_padding", "fuse_conv_bn"]


def centre_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Padding of a 1x1 conv that samples the kxk kernel's centre tap, or None when there is no such conv."""
    padding = []
    for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation, strict=True):
        if k % 2 == 0:
            return None
        centre = p - d * (k - 1) // 2
        if centre < 0:
            return None
        padding.append(centre)
    return tuple(padding)


def bypass_branch(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """A fresh 1x1 conv + BN reading the same input as `conv` and aligned to its kernel's centre tap (same
    output size), on the conv's device and dtype."""
    padding = centre_padding(conv)
    if padding is None or conv.groups != 1 or not isinstance(conv.padding, tuple):
        raise SurgeryError(f"{conv} has no centre-aligned 1x1 bypass (needs odd kernel, groups 1, int padding)")
    factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    bypass_conv = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride, padding=padding, bias=False)
    bypass_bn = nn.BatchNorm2d(conv.out_channels, eps=bn.eps, momentum=bn.momentum)
    return bypass_conv.to(**factory), bypass_bn.to(**factory)


class RepConvBN(nn.Module):
    """BN(conv_kxk(x)) + BN_b(conv_1x1(x)); folds into one kxk conv with bias (`fold_bypass_`)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.bypass_conv, self.bypass_bn = bypass_branch(conv, bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) + self.bypass_bn(self.bypass_conv(x))

    @torch.no_grad()
    def folded(self) -> nn.Conv2d:
        """One kxk conv with bias computing this block's eval-mode function."""
        weight, bias = fuse_conv_bn(self.conv, self.bn)
        bypass_weight, bypass_bias = fuse_conv_bn(self.bypass_conv, self.bypass_bn)
        k_h, k_w = self.conv.kernel_size
        # the 1x1 kernel becomes the centre tap of a kxk kernel
        weight[:, :, k_h // 2, k_w // 2] += bypass_weight[:, :, 0, 0]
        conv = nn.Conv2d(
            self.conv.in_channels,
            self.conv.out_channels,
            self.conv.kernel_size,
            stride=self.conv.stride,
            padding=self.conv.padding,
            dilation=self.conv.dilation,
            bias=True,
        ).to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias + bypass_bias)
        return conv


@torch.no_grad()
def fuse_conv_bn(
    conv: nn.modules.conv._ConvNd, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the conv equal to bn(conv(x)) in eval mode (computed in float64, returned in
    the conv's dtype)."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    weight = conv.weight.double() * scale.view(shape)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)
