"""Fitting a network built elsewhere (torchvision, timm, the user's own builder) to a dataset: the stem conv
to its input channels, the classifier to its classes; and finding those two layers by name.

The classifier is the last Linear of the network in `named_modules()` order (or, for fully convolutional
heads such as SqueezeNet's, the last 1x1 Conv2d), unless the model names it itself (timm's
`pretrained_cfg["classifier"]`); the stem is the first Conv2d (or timm's `pretrained_cfg["first_conv"]`).
"""

from __future__ import annotations

import logging

from torch import nn

from lappdeploy.errors import ConfigError

__all__ = ["classifier_name", "replace_classifier_", "replace_stem_input_channels_", "stem_name"]

log = logging.getLogger(__name__)


def _named(model: nn.Module, attribute: str) -> str | None:
    """The module name a timm model's pretrained config gives for `attribute`, if it names one of its modules."""
    config = getattr(model, "pretrained_cfg", None) or {}
    value = config.get(attribute)
    names = [value] if isinstance(value, str) else list(value or [])
    modules = dict(model.named_modules())
    for name in names:
        if name in modules and isinstance(modules[name], (nn.Linear, nn.Conv2d)):
            return name
    return None


def classifier_name(model: nn.Module) -> str | None:
    """The qualified name of the layer that produces the class logits, or None when none is recognisable."""
    named = _named(model, "classifier")
    if named is not None:
        return named
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linear:
        return linear[-1]
    pointwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    return pointwise[-1] if pointwise else None


def stem_name(model: nn.Module) -> str | None:
    """The qualified name of the first convolution (the one that reads the image)."""
    named = _named(model, "first_conv")
    if named is not None:
        return named
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)


def replace_classifier_(model: nn.Module, num_classes: int) -> str:
    """Give `model` a fresh classifier with `num_classes` outputs (same input width and bias); returns its name."""
    name = classifier_name(model)
    if name is None:
        raise ConfigError(
            f"{type(model).__name__} has no Linear or 1x1 Conv2d classifier to resize to {num_classes} classes; "
            "build it with the dataset's number of classes (a num_classes argument of your builder)"
        )
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
    _set(model, name, new.to(old.weight.device, old.weight.dtype))
    return name


def replace_stem_input_channels_(model: nn.Module, in_channels: int) -> str:
    """Swap the stem convolution for one that reads `in_channels` channels (fresh Kaiming weights); returns its name."""
    name = stem_name(model)
    if name is None:
        raise ConfigError(f"{type(model).__name__} has no Conv2d to adapt to {in_channels} input channels")
    old = model.get_submodule(name)
    if old.groups != 1:
        raise ConfigError(f"stem {name} of {type(model).__name__} is a grouped conv; cannot adapt it")
    stem = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    if stem.bias is not None:
        nn.init.zeros_(stem.bias)
    _set(model, name, stem.to(old.weight.device, old.weight.dtype))
    return name
