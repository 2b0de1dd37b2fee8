"""Model registry: CIFAR-style networks of our own and every torchvision classification CNN.

    model = create_model("resnet20", num_classes=10, in_channels=1)

Builders take keyword-only arguments; `num_classes` and `in_channels` are always accepted, and the
architecture name and kwargs are recorded on the model so it can be saved portably.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from torch import nn

from lappdeploy.errors import ConfigError
from lappdeploy.models import cifar, tiny
from lappdeploy.models.macs import LayerCost, MacsReport, count_macs
from lappdeploy.models.portable import ModelCard, checkpoint_in, model_card, read_checkpoint, unwrap
from lappdeploy.models.sources import external_spec, is_external_spec
from lappdeploy.models.spec import ModelSpec
from lappdeploy.registry import Registry

__all__ = [
    "MODELS",
    "LayerCost",
    "MacsReport",
    "ModelCard",
    "ModelSpec",
    "checkpoint_in",
    "count_macs",
    "create_model",
    "list_models",
    "model_card",
    "model_spec",
    "read_checkpoint",
    "register_model",
    "resolve_input_shape",
    "unwrap",
]

MODELS: Registry[ModelSpec] = Registry("model")


def register_model(
    name: str | None = None, *, family: str = "user", min_input_size: int = 1, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a builder `fn(*, num_classes, in_channels, **kwargs) -> nn.Module`."""

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(name or fn.__name__, ModelSpec(name or fn.__name__, fn, family, min_input_size, description))
        return fn

    return decorate


def list_models(family: str | None = None) -> list[str]:
    return [n for n in MODELS.names() if family is None or MODELS.get(n).family == family]


def model_spec(name: str) -> ModelSpec:
    """The ModelSpec of a registered name, of `timm:NAME` or of `package.module:factory` (the user's builder)."""
    return external_spec(name) if is_external_spec(name) else MODELS.get(name)


def create_model(name: str, *, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build architecture `name` (a registered name, `timm:NAME` or `package.module:factory`) from scratch
    (random init, seeded by the caller); the name and kwargs are recorded on the model for portable saving."""
    spec = model_spec(name)
    if num_classes < 1 or in_channels < 1:
        raise ConfigError(f"num_classes and in_channels must be >= 1 (got {num_classes}, {in_channels})")
    arch_kwargs = {"num_classes": int(num_classes), "in_channels": int(in_channels), **kwargs}
    try:
        json.dumps(arch_kwargs)
    except TypeError:
        raise ConfigError(f"model kwargs must be plain values (numbers, strings, lists): {arch_kwargs}") from None
    try:
        model = spec.builder(**arch_kwargs)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise ConfigError(f"model {name} does not take these arguments {kwargs} (--model-kwargs): {exc}") from None
    model.lappdeploy_arch = {"name": name, "kwargs": arch_kwargs}
    return model


DEFAULT_VARIABLE_SIZE = 224  # px for datasets whose images vary in size (ImageFolder), as for ImageNet


def resolve_input_shape(
    name: str, in_channels: int, native_hw: tuple[int, int] | None, requested: int | None = None
) -> tuple[int, int, int]:
    """The (C, H, W) to feed architecture `name`: `requested` x `requested` if given, else the dataset's
    native size, raised to a square of the architecture's minimum (rounded up to a multiple of 8 px)
    when the native size is too small for it (e.g. VGG on 28x28 Fashion-MNIST -> 32x32)."""
    minimum = model_spec(name).min_input_size
    if requested is not None:
        if requested < minimum:
            raise ConfigError(
                f"{name} needs inputs of at least {minimum}x{minimum} px; --image-size {requested} is too small"
            )
        return (in_channels, requested, requested)
    height, width = native_hw or (max(DEFAULT_VARIABLE_SIZE, minimum),) * 2
    if min(height, width) >= minimum:
        return (in_channels, height, width)
    size = -(-minimum // 8) * 8
    return (in_channels, size, size)


def _register_builtin(registry: Registry[ModelSpec]) -> None:
    for depth in (20, 32, 44, 56, 110):
        registry.add(
            f"resnet{depth}",
            ModelSpec(
                f"resnet{depth}",
                functools.partial(cifar.cifar_resnet, depth),
                "cifar",
                description=f"CIFAR ResNet-{depth} (16/32/64 channels, projection shortcuts)",
            ),
        )
    registry.add(
        "vgg16_bn_cifar",
        ModelSpec("vgg16_bn_cifar", cifar.vgg16_bn_cifar, "cifar", 16, "CIFAR VGG-16 with BN, global-pool head"),
    )
    registry.add("tiny_convnet", ModelSpec("tiny_convnet", tiny.tiny_convnet, "testing", 1, "2-conv net for tests"))
    registry.add(
        "tiny_resnet",
        ModelSpec("tiny_resnet", tiny.tiny_resnet, "testing", 1, "ResNet-8, 8/16/32 channels, for tests"),
    )


def _register_torchvision(registry: Registry[ModelSpec]) -> None:
    from lappdeploy.models import torchvision_zoo as zoo

    for name in zoo.torchvision_cnn_names():
        if name in registry._entries:  # our CIFAR definitions take precedence (none clash today)
            continue
        registry.add(
            name,
            ModelSpec(
                name,
                functools.partial(zoo.build_torchvision_model, name),
                "torchvision",
                zoo.min_input_size(name),
                f"torchvision {name}, adapted to the dataset's channels and classes",
            ),
        )


MODELS.add_loader(_register_builtin)
MODELS.add_loader(_register_torchvision)
