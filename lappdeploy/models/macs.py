"""Per-layer cost of a network: MACs per sample and parameters of every conv and linear layer.

MACs are counted the way torch-pruning's `count_ops_and_params` counts these layers, so numbers are
comparable with the ecosystem: a conv costs H_out * W_out * k_h * k_w * (C_in / groups) * C_out
multiply-accumulates, plus one add per output element when it has a bias; a linear layer costs
C_in * C_out, plus C_out for a bias. Element-wise layers (BN, ReLU, pooling) are not counted: they
fold away or are memory-bound at deployment, and pruning budgets are stated in conv+linear MACs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["LayerCost", "MacsReport", "count_macs"]


@dataclass
class LayerCost:
    name: str  # qualified module name
    kind: str  # module class name
    output_shape: tuple[int, ...]  # per sample, e.g. (C, H, W)
    kernel: tuple[int, ...]  # (k_h, k_w) for convs, () for linear
    groups: int
    params: int
    macs: int  # per sample; summed over calls if the module runs more than once
    calls: int = 1


@dataclass
class MacsReport:
    input_shape: tuple[int, ...]  # per sample, (C, H, W)
    output_shape: tuple[int, ...]
    macs: int  # conv + linear MACs per sample
    params: int  # all parameters of the model (not only conv/linear)
    layers: list[LayerCost] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "macs": self.macs,
            "params": self.params,
            "layers": [
                {**vars(layer), "output_shape": list(layer.output_shape), "kernel": list(layer.kernel)}
                for layer in self.layers
            ],
        }


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    per_sample_outputs = math.prod(output.shape[1:])
    bias_adds = per_sample_outputs if getattr(module, "bias", None) is not None else 0
    if isinstance(module, nn.modules.conv._ConvNd):
        positions = per_sample_outputs // module.out_channels
        per_position = math.prod(module.kernel_size) * (module.in_channels // module.groups) * module.out_channels
        return positions * per_position + bias_adds
    # nn.Linear: every output element is a dot product over in_features
    return per_sample_outputs * module.in_features + bias_adds


@torch.no_grad()
def count_macs(
    model: nn.Module, input_shape: tuple[int, ...] | list[int], *, device: str | torch.device = "cpu"
) -> MacsReport:
    """Run one sample of shape `input_shape` (C, H, W) through `model` in eval mode and cost its layers.

    The model's training/eval mode is restored afterwards.
    """
    input_shape = tuple(int(s) for s in input_shape)
    costs: dict[str, LayerCost] = {}
    handles = []

    def hook(name: str):
        def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            macs = _layer_macs(module, output)
            if name in costs:
                costs[name].macs += macs
                costs[name].calls += 1
                return
            kernel = tuple(module.kernel_size) if hasattr(module, "kernel_size") else ()
            costs[name] = LayerCost(
                name=name,
                kind=type(module).__name__,
                output_shape=tuple(output.shape[1:]),
                kernel=kernel,
                groups=getattr(module, "groups", 1),
                params=sum(p.numel() for p in module.parameters(recurse=False)),
                macs=macs,
            )

        return record

    for name, module in model.named_modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        output = model(torch.zeros((1, *input_shape), device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    layers = list(costs.values())  # execution order
    return MacsReport(
        input_shape=input_shape,
        output_shape=tuple(output.shape[1:]),
        macs=sum(layer.macs for layer in layers),
        params=sum(p.numel() for p in model.parameters()),
        layers=layers,
    )
