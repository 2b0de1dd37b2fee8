"""Weights from outside lappdeploy, for `--init-from`: a plain state dict (`.pt` / `.pth`, read with
`torch.load(weights_only=True)`), a `.safetensors` file, a checkpoint dict holding a state dict under a usual
key, and named pretrained weights (`torchvision:TAG`, `timm:TAG`) read from the local torch-hub or Hugging
Face cache (fetched only when asked to download).

    weights = read_weights("r18.pth", architecture="resnet18")
    report = load_weights_(model, weights)     # strict, with the classifier and stem exceptions below

Keys are matched strictly after stripping the prefixes wrappers add (`module.` of DDP, `_orig_mod.` of
torch.compile, `model.` of training wrappers). Two differences are allowed, and recorded: a classifier of
another class count is left freshly initialised (a 1000-class checkpoint fine-tunes on 5 classes), and a
3-channel stem is adapted to another channel count (summed for 1 channel, timm's convention).
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from lappdeploy.errors import ConfigError
from lappdeploy.models.adapt import classifier_name, stem_name
from lappdeploy.optional import require

__all__ = [
    "NAMED_WEIGHTS",
    "STATE_DICT_KEYS",
    "ExternalWeights",
    "is_named_weights",
    "load_weights_",
    "named_preprocessing",
    "preprocessing_defaults",
    "read_weights",
]

NAMED_WEIGHTS = ("torchvision:", "timm:")
# where checkpoint dicts of common trainers keep the model's weights, in the order they are tried
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "ema", "state_dict_ema", "model_ema")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP / DataParallel, torch.compile, Lightning-style wrappers
_RESAVE = "torch.save(model.state_dict(), 'weights.pt')"


@dataclass
class Preprocessing:
    """How the images the weights were trained on were fed, where the weights say."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int  # px, the square input (after the centre crop) at evaluation


@dataclass
class ExternalWeights:
    state_dict: dict[str, torch.Tensor]
    source: str  # what --init-from said
    format: str  # "state dict", "safetensors", "checkpoint['model']", "torchvision IMAGENET1K_V2", ...
    preprocessing: Preprocessing | None = None
    lappdeploy: bool = False  # a lappdeploy model.pt / checkpoint.pt (rebuilt by load_model instead)
    notes: list[str] = field(default_factory=list)


def is_named_weights(source: str) -> bool:
    """`torchvision:TAG` or `timm:TAG` (and not a file of that name)."""
    return source.startswith(NAMED_WEIGHTS) and not Path(source).exists()


def read_weights(source: str, *, architecture: str, download: bool = False) -> ExternalWeights:
    """The weights `source` names, for a model of `architecture` (a --model spec); raises ConfigError with
    one line saying what is wrong and how to fix it."""
    if is_named_weights(source):
        kind, _, tag = source.partition(":")
        reader = _torchvision_weights if kind == "torchvision" else _timm_weights
        return reader(source, tag, architecture, download)
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"--init-from {source} does not exist")
    if path.is_dir():
        raise ConfigError(f"--init-from {source} is a directory without model.pt or checkpoint.pt")
    if path.suffix == ".safetensors":
        return ExternalWeights(_safetensors(path), source, "safetensors")
    return _torch_file(path, source)


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    safetensors_torch = require("safetensors.torch", purpose=f"--init-from {path.name} (a .safetensors file)")
    try:
        return dict(safetensors_torch.load_file(str(path), device="cpu"))
    except Exception as exc:
        raise ConfigError(f"--init-from {path} is not a readable safetensors file: {_first(exc)}") from None


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _torch_file(path: Path, source: str) -> ExternalWeights:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # not a pickled class: no pickle of a model at all
            raise ConfigError(f"--init-from {source} is neither a torch checkpoint nor a .safetensors file") from None
        raise ConfigError(
            f"--init-from {source} needs code execution to load (it pickles Python objects, e.g. a whole model "
            f"saved with torch.save(model)); re-save its weights as a state dict where it was made: {_RESAVE}"
        ) from None
    except Exception as exc:
        raise ConfigError(
            f"--init-from {source} is neither a torch checkpoint nor a .safetensors file ({_first(exc)})"
        ) from None
    if isinstance(payload, dict) and "card" in payload and "state_dict" in payload:
        return ExternalWeights(payload["state_dict"], source, "lappdeploy", lappdeploy=True)
    state, where = _state_dict_in(payload, source)
    return ExternalWeights(state, source, where)


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(torch.is_tensor(v) for v in value.values())


def _state_dict_in(payload: Any, source: str) -> tuple[dict[str, torch.Tensor], str]:
    if _is_state_dict(payload):
        return dict(payload), "state dict"
    if isinstance(payload, dict):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(payload.get(key)):
                return dict(payload[key]), f"checkpoint[{key!r}]"
        keys = ", ".join(map(str, list(payload)[:6]))
        raise ConfigError(
            f"--init-from {source} is a dict without a state dict under any of {', '.join(STATE_DICT_KEYS)} "
            f"(its keys: {keys}); save the model's weights with {_RESAVE}"
        )
    raise ConfigError(
        f"--init-from {source} holds a {type(payload).__name__}, not a state dict; save it with {_RESAVE}"
    )


# --------------------------------------------------------------------------------------------------
# named pretrained weights, from the local caches


def _torchvision_entry(source: str, tag: str, architecture: str):
    from lappdeploy.models import model_spec

    if ":" in architecture or model_spec(architecture).family != "torchvision":
        raise ConfigError(
            f"--init-from {source} names torchvision weights; --model {architecture} is not torchvision's"
        )
    import torchvision.models

    available = torchvision.models.get_model_weights(architecture)
    if tag not in available.__members__:
        raise ConfigError(
            f"torchvision has no weights {tag!r} for {architecture}; available: {', '.join(available.__members__)}"
        )
    return available[tag]


def _torch_hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _torchvision_weights(source: str, tag: str, architecture: str, download: bool) -> ExternalWeights:
    entry = _torchvision_entry(source, tag, architecture)
    path = _torch_hub_file(entry.url)
    if not path.is_file():
        if not download:
            raise ConfigError(
                f"--init-from {source}: {architecture}'s weights are not in the local torch-hub cache ({path}); "
                "add --download to fetch them, or copy the file there"
            )
        torch.hub.load_state_dict_from_url(entry.url, progress=False, check_hash=True)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return ExternalWeights(dict(state), source, f"torchvision {tag} ({path})", _torchvision_preprocessing(entry))


def _torchvision_preprocessing(entry) -> Preprocessing | None:
    transforms = entry.transforms()
    if not all(hasattr(transforms, a) for a in ("mean", "std", "crop_size")):
        return None
    return Preprocessing(tuple(transforms.mean), tuple(transforms.std), int(transforms.crop_size[0]))


def _timm_config(source: str, tag: str, architecture: str):
    from lappdeploy.models.sources import TIMM_PREFIX, timm_module

    if not architecture.startswith(TIMM_PREFIX):
        raise ConfigError(f"--init-from {source} names timm weights; it needs --model timm:NAME (got {architecture})")
    timm = timm_module()
    from timm.models import get_arch_name, get_pretrained_cfg

    arch = get_arch_name(architecture[len(TIMM_PREFIX) :])
    full = tag if "." in tag else f"{arch}.{tag}"
    try:
        config = get_pretrained_cfg(full) if get_arch_name(full) == arch else None
    except RuntimeError:  # timm: "Invalid pretrained tag"
        config = None
    if config is None:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise ConfigError(f"timm has no pretrained weights {tag!r} for {arch}; available: {', '.join(tags) or 'none'}")
    return full, config


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return constants.HF_HUB_CACHE


def _timm_file(source: str, config, download: bool) -> Path:
    """The cached file of timm's pretrained `config` (Hugging Face hub, else its URL in the torch-hub cache)."""
    if config.hf_hub_id:
        import huggingface_hub

        repo = config.hf_hub_id.split("@")[0]
        names = [config.hf_hub_filename] if config.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        cache = _hf_cache_dir()
        for name in names:
            found = huggingface_hub.try_to_load_from_cache(repo, name, cache_dir=cache)
            if isinstance(found, str):
                return Path(found)
        if download:
            return Path(huggingface_hub.hf_hub_download(repo, names[0], cache_dir=cache))
        where = f"the Hugging Face cache ({cache}, repository {repo})"
    elif config.url:
        path = _torch_hub_file(config.url)
        if path.is_file():
            return path
        if download:
            torch.hub.download_url_to_file(config.url, str(path), progress=False)
            return path
        where = f"the torch-hub cache ({path})"
    else:
        raise ConfigError(f"--init-from {source}: timm gives no download location for these weights")
    raise ConfigError(f"--init-from {source}: the weights are not in {where}; add --download to fetch them")


def _timm_weights(source: str, tag: str, architecture: str, download: bool) -> ExternalWeights:
    full, config = _timm_config(source, tag, architecture)
    path = _timm_file(source, config, download)
    timm = require("timm", purpose="timm weights")
    # timm builds its own model from the file, so its per-architecture checkpoint filters apply
    reference = timm.create_model(full, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    state = {k: v.detach().clone() for k, v in reference.state_dict().items()}
    size = int(config.input_size[-1])
    return ExternalWeights(
        state, source, f"timm {full} ({path})", Preprocessing(tuple(config.mean), tuple(config.std), size)
    )


def preprocessing_defaults(
    source: str | None, architecture: str, *, in_channels: int, native_size: int | None
) -> dict[str, Any]:
    """What named pretrained weights (`source`) were trained with, as defaults for a run on images of
    `in_channels` channels and `native_size` px: {"mean", "std"} where the channel counts agree, and
    {"image_size"} where it differs from the native size. Empty for other sources."""
    seen = named_preprocessing(source, architecture) if source else None
    if seen is None:
        return {}
    defaults: dict[str, Any] = {}
    if len(seen.mean) == in_channels:
        defaults.update(mean=seen.mean, std=seen.std)
    if seen.image_size != native_size:
        defaults["image_size"] = seen.image_size
    return defaults


def named_preprocessing(source: str, architecture: str) -> Preprocessing | None:
    """The mean, std and image size the named weights `source` were trained with (no file is read)."""
    if not is_named_weights(source):
        return None
    kind, _, tag = source.partition(":")
    if kind == "torchvision":
        return _torchvision_preprocessing(_torchvision_entry(source, tag, architecture))
    _, config = _timm_config(source, tag, architecture)
    return Preprocessing(tuple(config.mean), tuple(config.std), int(config.input_size[-1]))


# --------------------------------------------------------------------------------------------------
# loading into a model


def _strip_wrappers(state: dict[str, torch.Tensor], wanted: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """`state` without the prefixes wrappers put before every key, while its keys do not match `wanted`."""
    stripped = ""
    while not set(state) <= wanted:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
        stripped += prefix
    return state, stripped


def _layer_key_pair(state, target, name: str | None) -> list[str]:
    """The weight/bias keys of layer `name` whose shapes differ between `state` and `target`."""
    if name is None:
        return []
    keys = [f"{name}.weight", f"{name}.bias"]
    return [k for k in keys if k in state and k in target and state[k].shape != target[k].shape]


def _drop_other_classifier(model: nn.Module, state, target) -> dict[str, Any] | None:
    """Leave a classifier of another class count freshly initialised (its keys dropped from `state`)."""
    head = classifier_name(model)
    keys = _layer_key_pair(state, target, head)
    if not keys or any(state[k].shape[1:] != target[k].shape[1:] for k in keys):
        return None
    classes = int(state[keys[0]].shape[0])
    for k in (f"{head}.weight", f"{head}.bias"):
        state.pop(k, None)
    return {"module": head, "weights_classes": classes, "classes": int(target[f"{head}.weight"].shape[0])}


def _adapt_stem(model: nn.Module, state, target) -> dict[str, Any] | None:
    """Fit a stem trained on another number of input channels: summed over RGB for one channel, else
    repeated and rescaled (timm's convention), so the stem's response to a grey image is kept."""
    key = f"{stem_name(model)}.weight"
    if key not in _layer_key_pair(state, target, stem_name(model)):
        return None
    weight, want = state[key], target[key]
    if weight.dim() != 4 or weight.shape[0] != want.shape[0] or weight.shape[2:] != want.shape[2:]:
        return None
    have, channels = int(weight.shape[1]), int(want.shape[1])
    if channels == 1:
        adapted = weight.sum(dim=1, keepdim=True)
    else:
        adapted = weight.repeat(1, math.ceil(channels / have), 1, 1)[:, :channels] * (have / channels)
    state[key] = adapted.to(want.dtype)
    return {"module": key.rsplit(".", 1)[0], "weights_channels": have, "channels": channels}


def _check_keys(state, target, source: str, architecture: str, fresh: set[str]) -> None:
    missing = [k for k in target if k not in state and k not in fresh and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    mismatched = [k for k in state if k in target and state[k].shape != target[k].shape]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
    if mismatched:
        k = mismatched[0]
        parts.append(f"shape mismatch at {k}: {tuple(state[k].shape)} in the weights, {tuple(target[k].shape)} here")
    raise ConfigError(
        f"--init-from {source} does not fit --model {architecture}: {'; '.join(parts)}; are these weights of "
        "another architecture (or of other --model-kwargs)?"
    )


def load_weights_(model: nn.Module, weights: ExternalWeights) -> dict[str, Any]:
    """Load `weights` into `model` in place (strict matching, see the module's doc); returns what was done."""
    target = model.state_dict()
    architecture = getattr(model, "lappdeploy_arch", {}).get("name", type(model).__name__)
    state, stripped = _strip_wrappers(dict(weights.state_dict), set(target))
    head = _drop_other_classifier(model, state, target)
    stem = _adapt_stem(model, state, target)
    fresh = {f"{head['module']}.weight", f"{head['module']}.bias"} if head else set()
    _check_keys(state, target, weights.source, architecture, fresh)
    state = {k: v.to(target[k].dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=False)
    return {
        "source": weights.source,
        "format": weights.format,
        "prefix_stripped": stripped or None,
        "classifier_replaced": head,
        "stem_adapted": stem,
    }
