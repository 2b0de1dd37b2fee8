"""Naming a model without a run directory (inspect, profile, export, bench): a spec (registered name,
timm:NAME or package.module:factory), its builder's arguments, its weights, and what it is fed (a dataset,
or an input shape and a class count)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from lappdeploy.cli.common import JsonParam, ShapeParam
from lappdeploy.errors import LappDeployError

__all__ = ["SOURCE_OPTIONS", "model_from_name", "model_source_options"]

# the keyword arguments model_source_options adds to a command (minus --model and --data-dir where absent)
SOURCE_OPTIONS = (
    "model_kwargs",
    "init_from",
    "download",
    "dataset",
    "data_dir",
    "synthetic_shape",
    "image_size",
    "input_shape",
    "num_classes",
)


def model_source_options(*, model_option: bool = False, data_dir: bool = True) -> Callable[[Callable], Callable]:
    """Decorator adding the options of `model_from_name` to a click command (with `model_option`, --model
    too, for commands whose arguments are run directories; without `data_dir`, where the command has one)."""
    options = [
        click.option("--model-kwargs", type=JsonParam(), default=None,
                     help='The builder\'s keyword arguments as JSON, e.g. \'{"width": 0.5}\'.'),
        click.option("--init-from", default=None,
                     help="Weights: a state dict (.pt/.pth), .safetensors, checkpoint, lappdeploy model.pt, or "
                          "torchvision:TAG / timm:TAG from the local cache [default: random weights]."),
        click.option("--download", is_flag=True, help="Fetch named weights (torchvision:/timm:) not in the cache."),
        click.option("--dataset", default=None, help="Take input channels, size and classes from this dataset."),
        click.option("--synthetic-shape", type=ShapeParam(), default=None, help="With --dataset synthetic: CxHxW."),
        click.option("--image-size", type=click.IntRange(min=1), default=None,
                     help="With --dataset: input resolution (px), as for train [default: the dataset's, or what "
                          "named weights were trained at]."),
        click.option("--input-shape", type=ShapeParam(), default=None,
                     help="Without --dataset: input CxHxW [default: 3x224x224; 3x32x32 for CIFAR models]."),
        click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="Output classes [default: the dataset's; else 1000, 10 for CIFAR models]."),
    ]  # fmt: skip
    if data_dir:
        options.insert(4, click.option("--data-dir", default=None, help="Where --dataset lives."))
    if model_option:
        options.insert(
            0,
            click.option("--model", "model_name", default=None,
                         help="A dense model to use as is, no run needed: a registered name, timm:NAME or "
                              "package.module:factory, with --init-from its weights."),
        )  # fmt: skip

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _dataset_input(name: str, dataset: str, data_dir, synthetic_shape, image_size, init_from) -> dict[str, Any]:
    from lappdeploy.data import DataRequest, locate_dataset
    from lappdeploy.models import resolve_input_shape
    from lappdeploy.models.weights import preprocessing_defaults

    request = DataRequest(data_dir=data_dir, synthetic_shape=synthetic_shape or (3, 32, 32))
    info = locate_dataset(dataset, request)
    native = info.image_hw[0] if info.image_hw else None
    seen = preprocessing_defaults(init_from, name, in_channels=info.in_channels, native_size=native)
    size = image_size if image_size is not None else seen.get("image_size")
    return {
        "input_shape": resolve_input_shape(name, info.in_channels, info.image_hw, size),
        "num_classes": info.num_classes,
        "mean": seen.get("mean", info.mean),
        "std": seen.get("std", info.std),
        "dataset": dataset,
        "class_names": list(info.class_names) or None,
    }


def _shape_input(name: str, input_shape, image_size) -> dict[str, Any]:
    from lappdeploy.models import model_spec, resolve_input_shape

    spec = model_spec(name)
    small = spec.family in ("cifar", "testing")
    channels, height, width = input_shape or ((3, 32, 32) if small else (3, 224, 224))
    shape = resolve_input_shape(name, channels, (height, width), image_size)
    if input_shape is not None and shape[1:] != (height, width):
        raise LappDeployError(
            f"{name} needs inputs of at least {spec.min_input_size}x{spec.min_input_size} px; "
            f"--input-shape {'x'.join(map(str, input_shape))} is too small"
        )
    return {"input_shape": shape, "num_classes": 10 if small else 1000}


def model_from_name(
    name: str,
    *,
    dataset=None,
    data_dir=None,
    synthetic_shape=None,
    image_size=None,
    input_shape=None,
    num_classes=None,
    model_kwargs=None,
    init_from=None,
    download: bool = False,
):
    """(LoadedModel, what --init-from loaded or None) of model spec `name` for a dataset (its input shape
    resolved exactly as `train` does) or for an explicit --input-shape; eval mode."""
    from lappdeploy.surgery.portable import model_from_spec

    if dataset is not None:
        if input_shape is not None:
            raise LappDeployError("--input-shape is for a model without --dataset; use --image-size with --dataset")
        fed = _dataset_input(name, dataset, data_dir, synthetic_shape, image_size, init_from)
    else:
        fed = _shape_input(name, input_shape, image_size)
    if num_classes is not None:
        fed["num_classes"] = num_classes
    return model_from_spec(name, model_kwargs=model_kwargs, init_from=init_from, download=download, **fed)
