"""Models named by a spec instead of a registry entry: `timm:NAME` (a timm architecture) and
`package.module:factory` (the user's own builder, imported from the working directory or PYTHONPATH).

    spec = external_spec("timm:resnet18d")            # a ModelSpec, like a registered one
    model = spec.builder(num_classes=5, in_channels=1, **kwargs)

The spec text is what a run records as the architecture (config.yaml, model.pt), so `load_model` rebuilds
the same network in a new process; a builder that no longer imports is a one-line error naming it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from lappdeploy.errors import ConfigError
from lappdeploy.models.adapt import classifier_name, replace_classifier_, replace_stem_input_channels_, stem_name
from lappdeploy.models.spec import ModelSpec
from lappdeploy.optional import require

__all__ = [
    "TIMM_PREFIX",
    "check_runs_on",
    "external_spec",
    "is_external_spec",
    "timm_family",
    "timm_module",
]

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_external_spec(name: str) -> bool:
    """Whether `name` names a model by spec (timm:NAME or module:factory) rather than by registry name."""
    return ":" in name


def external_spec(name: str) -> ModelSpec:
    """The ModelSpec of `timm:NAME` or `package.module:factory`; raises ConfigError naming what is wrong."""
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name[len(TIMM_PREFIX) :])
    if not _FACTORY.match(name):
        raise ConfigError(
            f"--model {name!r} is neither a registered name, timm:NAME nor package.module:factory "
            "(e.g. mypackage.models:build_net)"
        )
    _factory(name)  # imports it now: a module that does not import fails before anything is written
    return ModelSpec(name, functools.partial(build_from_factory, name), "module", 1, f"{name} (your builder)")


# --------------------------------------------------------------------------------------------------
# timm


def timm_module() -> Any:
    return require("timm", purpose="timm models (--model timm:NAME)")


def _timm_spec(timm_name: str) -> ModelSpec:
    timm = timm_module()
    if not timm.is_model(timm_name):
        close = difflib.get_close_matches(timm_name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"did you mean {', '.join('timm:' + c for c in close)}?" if close else "`lappdeploy list models --timm`"
        raise ConfigError(f"timm has no model {timm_name!r} (timm {timm.__version__}); {hint}")
    return ModelSpec(
        TIMM_PREFIX + timm_name,
        functools.partial(build_timm_model, timm_name),
        "timm",
        _timm_min_input_size(timm_name),
        f"timm {timm_name} ({timm_family(timm_name)})",
    )


def _timm_min_input_size(timm_name: str) -> int:
    """The smallest input (px) timm's default config states for the architecture: its min_input_size, or its
    input size where it is fixed (positional embeddings); otherwise any size."""
    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(timm_name)
    if config is None:
        return 1
    if config.min_input_size:
        return int(config.min_input_size[-1])
    return int(config.input_size[-1]) if config.fixed_input_size else 1


@functools.cache
def _timm_families() -> dict[str, str]:
    timm = timm_module()
    return {name: family for family in timm.list_modules() for name in timm.list_models(module=family)}


def timm_family(timm_name: str) -> str:
    """The timm module (family) an architecture is defined in, e.g. resnet18d -> resnet."""
    from timm.models import get_arch_name

    return _timm_families().get(get_arch_name(timm_name), "?")


def build_timm_model(timm_name: str, *, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """timm's architecture with random weights for `in_channels` and `num_classes` (named pretrained weights
    are loaded by `lappdeploy.models.weights`, from the local cache)."""
    timm = timm_module()
    try:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"timm:{timm_name} does not take these --model-kwargs {kwargs}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# the user's builder


def _factory(spec: str) -> Callable[..., Any]:
    """Import `package.module:factory` (the working directory first on the path, as `python -m` has it)."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error the module raises while importing
        raise ConfigError(
            f"model builder {spec}: module {module_name!r} does not import ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); run from the directory that holds it or add that "
            "directory to PYTHONPATH"
        ) from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"model builder {spec}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"model builder {spec}: {attribute!r} is not callable (a function or class that returns the model)"
        )
    return target


def _accepts(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def build_from_factory(spec: str, *, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    """Call the user's builder with `kwargs` (and num_classes / in_channels where it takes them), then fit
    its stem and classifier to the dataset where it could not be told."""
    factory = _factory(spec)
    call = dict(kwargs)
    if _accepts(factory, "num_classes"):
        call["num_classes"] = num_classes
    channel_argument = next((n for n in ("in_channels", "in_chans") if _accepts(factory, n)), None)
    if channel_argument is not None:
        call[channel_argument] = in_channels
    try:
        model = factory(**call)
    except TypeError as exc:
        raise ConfigError(f"model builder {spec} cannot be called with {call}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model builder {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    _fit_to_dataset_(model, spec, num_classes=num_classes, in_channels=in_channels)
    return model


def _fit_to_dataset_(model: nn.Module, spec: str, *, num_classes: int, in_channels: int) -> None:
    head = classifier_name(model)
    if head is not None:
        layer = model.get_submodule(head)
        outputs = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if outputs != num_classes:
            replace_classifier_(model, num_classes)
            log.info(
                "%s: classifier %s resized from %d to %d classes (fresh weights)", spec, head, outputs, num_classes
            )
    stem = stem_name(model)
    if stem is not None and model.get_submodule(stem).in_channels != in_channels:
        replace_stem_input_channels_(model, in_channels)
        log.info("%s: stem %s now reads %d input channels (fresh weights)", spec, stem, in_channels)


def check_runs_on(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int, name: str) -> None:
    """One forward pass of a batch of 2 at `input_shape` (eval mode): a model built elsewhere must accept the
    input and return (batch, num_classes) logits; anything else is a ConfigError naming the fix."""
    import torch

    was_training = model.training
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros((2, *input_shape)))
    except Exception as exc:
        shape = "x".join(map(str, input_shape))
        raise ConfigError(
            f"--model {name} does not run on {shape} inputs ({type(exc).__name__}: {str(exc).splitlines()[0][:200]});"
            " try another --image-size"
        ) from None
    finally:
        model.train(was_training)
    if not torch.is_tensor(output) or tuple(output.shape) != (2, num_classes):
        got = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        raise ConfigError(
            f"--model {name} returns {got} for a batch of 2, not (2, {num_classes}) class logits; lappdeploy "
            "compresses classifiers that return one logits tensor"
        )
