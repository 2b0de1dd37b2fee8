"""Reference numbers and model perturbations for tests that compare lappdeploy with torch-pruning."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["randomize_norms_", "torch_pruning_macs"]


def torch_pruning_macs(model: nn.Module, input_shape) -> int:
    """Conv + linear MACs per sample as torch-pruning's `count_ops_and_params` counts them."""
    import torch_pruning as tp

    _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape), layer_wise=True)
    return int(sum(v for m, v in layer_macs.items() if isinstance(m, (nn.Conv2d, nn.Linear)) and v))


@torch.no_grad()
def randomize_norms_(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random statistics and affine parameters, and every layer-scale parameter
    values near 1, so a freshly built model's dropped channels would change its logits if they leaked
    (at init, BN is the identity with beta = 0 and ConvNeXt's layer scales are 1e-6)."""
    generator = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> None:
        t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            uniform(module.running_mean, -0.5, 0.5)
            uniform(module.running_var, 0.5, 2.0)
            if module.affine:
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.5, 0.5)
        for param_name, param in module.named_parameters(recurse=False):
            if "layer_scale" in param_name:
                uniform(param, 0.5, 1.5)
    return model
