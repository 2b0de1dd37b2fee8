"""Validated, frozen configuration dataclasses, one per stage, that round-trip through YAML.

Each field carries its CLI help in `metadata["help"]`; the CLI builds its options from these fields,
so a flag, its YAML key and its validation are defined once. Values are checked in `__post_init__`
and a bad value raises `ConfigError` naming the field and the accepted range.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lappdeploy.errors import ConfigError

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "BenchConfig",
    "CompressConfig",
    "ExportConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "field_names",
    "load_yaml_mapping",
    "parse_int_list",
    "parse_shape",
    "resolve_opset",
]

C = TypeVar("C")


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def parse_int_list(text: str | list | tuple) -> list:
    """'1, 2,3' or [1, 2, 3] -> the items, to be converted (separators: commas, 'x', spaces)."""
    if isinstance(text, (list, tuple)):
        return list(text)
    return [v for v in re.split(r"[,x\s]+", str(text).strip()) if v]


def parse_shape(text: str | list | tuple) -> tuple[int, int, int]:
    """'3x64x64' or [3, 64, 64] -> (3, 64, 64) as channels, height, width."""
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = re.split(r"[x,]", str(text).strip().lower())
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"shape {text!r} is not of the form CxHxW, e.g. 3x64x64") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"shape {text!r} is not of the form CxHxW with positive sizes, e.g. 3x64x64")
    return shape  # type: ignore[return-value]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and nothing about where its files go)."""

    # what to train
    model: str = _opt("resnet20", "Architecture name (`lappdeploy list models`).")
    dataset: str = _opt("fashion-mnist", "Dataset name (`lappdeploy list datasets`).")
    # data
    data_dir: str | None = _opt(
        None, "Dataset directory (searched first; then $LAPPDEPLOY_DATA, then the system location)."
    )
    download: bool = _opt(False, "Download the dataset with torchvision if it is not found locally.")
    image_size: int | None = _opt(
        None, "Input resolution in pixels (default: the dataset's own, raised to the model's minimum)."
    )
    augment: bool = _opt(True, "Standard training augmentation of the dataset (crop, flip).")
    train_subset: int | None = _opt(None, "Train on the first N images of a fixed shuffle (quick runs).")
    val_subset: int | None = _opt(None, "Evaluate on the first N validation images of a fixed shuffle.")
    synthetic_shape: tuple[int, int, int] = _opt((3, 32, 32), "Synthetic dataset: image shape CxHxW.", cli_type="shape")
    synthetic_classes: int = _opt(10, "Synthetic dataset: number of classes.")
    synthetic_samples: int = _opt(2048, "Synthetic dataset: training images (validation gets a quarter).")
    # optimisation
    epochs: int = _opt(2, "Training epochs.")
    batch_size: int = _opt(128, "Images per step per process (the global batch is this x processes).")
    lr: float = _opt(0.1, "Peak learning rate of SGD.")
    momentum: float = _opt(0.9, "SGD momentum.")
    nesterov: bool = _opt(True, "Nesterov momentum.")
    weight_decay: float = _opt(5e-4, "L2 weight decay.")
    lr_schedule: str = _opt("cosine", "Learning-rate schedule: cosine or step.", choices=("cosine", "step"))
    lr_milestones: tuple[int, ...] = _opt(
        (),
        "Step schedule: epochs at which the LR is multiplied by --lr-gamma (default: 50% and 75%).",
        cli_type="int_list",
    )
    lr_gamma: float = _opt(0.1, "Step schedule: LR factor at each milestone.")
    warmup_epochs: float = _opt(0.0, "Linear LR warm-up length in (fractional) epochs.")
    label_smoothing: float = _opt(0.0, "Label smoothing of the cross-entropy loss.")
    # execution
    amp: bool = _opt(False, "Automatic mixed precision (autocast) for training.")
    amp_dtype: str = _opt("bf16", "AMP dtype: bf16, or fp16 (CUDA, with gradient scaling).", choices=("bf16", "fp16"))
    channels_last: bool = _opt(
        False, "channels_last memory format (often faster, on CPUs too: see benchmarks/train_throughput.py)."
    )
    sync_bn: bool = _opt(False, "Synchronise BatchNorm statistics across processes (DDP).")
    device: str = _opt("auto", "cpu, cuda, cuda:N, or auto (CUDA when available).")
    workers: int | None = _opt(None, "DataLoader worker processes per training process (default: auto).")
    seed: int = _opt(0, "Random seed: same seed, same machine -> same weights.")
    deterministic: bool = _opt(False, "Force deterministic kernels (slower on GPU).")

    def __post_init__(self) -> None:
        _check_types(self)
        _at_least(self, "epochs", 1)
        _at_least(self, "batch_size", 1)
        _at_least(self, "synthetic_classes", 1)
        _at_least(self, "synthetic_samples", 1)
        for name in ("image_size", "train_subset", "val_subset"):
            if getattr(self, name) is not None:
                _at_least(self, name, 1)
        if self.workers is not None:
            _at_least(self, "workers", 0)
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0 (got {self.lr})")
        _in_range(self, "momentum", 0.0, 1.0, hi_open=True)
        _in_range(self, "label_smoothing", 0.0, 1.0, hi_open=True)
        _in_range(self, "lr_gamma", 0.0, 1.0, lo_open=True)
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0 (got {self.weight_decay})")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(f"warmup_epochs must be in [0, epochs={self.epochs}) (got {self.warmup_epochs})")
        object.__setattr__(self, "synthetic_shape", parse_shape(self.synthetic_shape))
        milestones = tuple(self.lr_milestones)
        if any(not 0 < m < self.epochs for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise ConfigError(
                f"lr_milestones must be increasing epochs inside (0, {self.epochs}) (got {list(milestones)})"
            )
        object.__setattr__(self, "lr_milestones", milestones)
        _check_choices(self)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0; pass --no-nesterov or set --momentum")

    # YAML round trip
    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


EXPORTERS = ("legacy", "dynamo")
# legacy: the TorchScript exporter at opset 17, what TensorRT 8.5/8.6 (older JetPack) parses;
# dynamo: torch.export-based, needs opset >= 18 (18 is the most widely parsed of those).
DEFAULT_OPSET = {"legacy": 17, "dynamo": 18}
MIN_OPSET = {"legacy": 9, "dynamo": 18}
MAX_OPSET = 20


def resolve_opset(exporter: str, opset: int | None) -> int:
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)} (got {exporter!r})")
    if opset is None:
        return DEFAULT_OPSET[exporter]
    if not MIN_OPSET[exporter] <= opset <= MAX_OPSET:
        raise ConfigError(
            f"the {exporter} exporter supports opset {MIN_OPSET[exporter]}..{MAX_OPSET} (got {opset})"
            + ("; use --exporter legacy for older opsets" if exporter == "dynamo" else "")
        )
    return opset


@dataclass(frozen=True)
class ExportConfig:
    """What `lappdeploy export` produces from a trained or pruned model (not where the files go)."""

    onnx: bool = _opt(
        True, "Export the ONNX model (--no-onnx: reuse OUT/model.onnx of an earlier export, e.g. for --trt)."
    )
    trt: bool = _opt(
        False, "Build a TensorRT engine too; without the tensorrt package, write trtexec.sh and exit with code 3."
    )
    precision: str = _opt("fp32", "TensorRT precision.", choices=("fp32", "fp16", "int8"))
    batch: tuple[int, ...] = _opt(
        (1, 8, 32),
        "Batch sizes min,opt,max of the dynamic batch dimension (TensorRT profile; ONNX parity runs at min and max).",
        cli_type="int_list",
    )
    opset: int | None = _opt(None, "ONNX opset (default: 17 with the legacy exporter, 18 with dynamo).")
    exporter: str = _opt(
        "legacy",
        "torch.onnx exporter: legacy (TorchScript; opset 17 parses on TensorRT 8.5/8.6) or dynamo (torch.export).",
        choices=("legacy", "dynamo"),
    )
    fallback: bool = _opt(False, "If the dynamo exporter fails, export with the legacy one (recorded in export.json).")
    simplify: bool = _opt(True, "Simplify the graph with onnxslim.")
    calib_images: int = _opt(
        512, "INT8: calibration images from the run's training set (fixed shuffle, no augmentation)."
    )
    data_dir: str | None = _opt(None, "INT8: dataset directory (default: the run's config, then the usual places).")
    workspace_mib: int = _opt(1024, "TensorRT builder workspace limit (MiB).")
    opt_level: int = _opt(3, "TensorRT builder optimization level 0-5 (TensorRT's default: 3).")
    trt_version: str | None = _opt(
        None,
        "TensorRT family of the target when tensorrt is not installed here (trtexec.sh): 8.6, 10 or 11 [default: 10].",
        choices=("8.6", "10", "11"),
    )
    timing_cache_dir: str | None = _opt(
        None, "Directory of the per-device TensorRT timing caches [default: ~/.cache/lappdeploy/tensorrt]."
    )
    seed: int = _opt(0, "Seed of the random parity inputs.")

    def __post_init__(self) -> None:
        _check_types(self)
        _check_choices(self)
        batch = tuple(sorted(self.batch))
        if not 1 <= len(batch) <= 3 or batch[0] < 1 or len(set(batch)) != len(batch):
            raise ConfigError(f"batch must be 1 to 3 distinct sizes >= 1, e.g. 1,8,32 (got {list(self.batch)})")
        object.__setattr__(self, "batch", batch)
        _at_least(self, "calib_images", 1)
        _at_least(self, "workspace_mib", 1)
        _in_range(self, "opt_level", 0, 5)
        resolve_opset(self.exporter, self.opset)
        if self.fallback and self.exporter != "dynamo":
            raise ConfigError("fallback replaces a failed dynamo export by a legacy one; it needs --exporter dynamo")
        if not self.onnx and not self.trt:
            raise ConfigError("--no-onnx reuses an earlier ONNX to build an engine; it needs --trt")

    @property
    def resolved_opset(self) -> int:
        return resolve_opset(self.exporter, self.opset)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportConfig:
        return config_from_dict(cls, data)

    def replace(self, **changes: Any) -> ExportConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CompressConfig:
    """How `lappdeploy compress` prunes while it trains (the training itself is a TrainConfig).

    The defaults of the LAPP knobs are the settings of LAPP.md section 7b (tau 0.1, lambda 2,
    threshold learning rate 0.01), measured on ResNet-20 / Fashion-MNIST.
    """

    method: str = _opt("lapp", "Pruning method (`lappdeploy list methods`): lapp, uniform or global.")
    target_macs: float = _opt(0.5, "Fraction of the dense deploy MACs to keep, in (0, 1].")
    prune_epochs: int = _opt(
        1, "Length of the pruning phase in epochs; channels are removed at its end, training goes on compact."
    )
    round_to: int = _opt(8, "Round every kept width to a multiple of K (Tensor Cores want 8 for FP16); 1 disables.")
    bypass: str = _opt(
        "none",
        "rep: train each prunable conv with a foldable 1x1 bypass (LAPP.md section 7; folded away at the end).",
        choices=("none", "rep"),
    )
    score: str = _opt("bn", "Channel importance: bn (|gamma|) or l2 (weight norm).", choices=("bn", "l2"))
    tau: float = _opt(0.1, "LAPP: temperature of the straight-through sigmoid surrogate.")
    penalty: float = _opt(2.0, "LAPP: weight lambda of the MACs penalty (log(MACs / budget))^2.")
    threshold_lr: float = _opt(0.01, "LAPP: Adam learning rate of the per-group thresholds.")
    min_channels: int = _opt(1, "Fewest channels a group keeps (at least --round-to when rounding).")
    ignore: tuple[str, ...] = _opt(
        (), "Never prune groups spanning these modules (comma-separated fnmatch patterns).", cli_type="str_list"
    )
    log_every: int = _opt(10, "Log budget, MACs, penalty and thresholds to metrics.jsonl every N steps.")

    def __post_init__(self) -> None:
        _check_types(self)
        from lappdeploy.methods import METHODS  # the registry validates the name (lazy: methods import torch)

        METHODS.get(self.method)
        _in_range(self, "target_macs", 0.0, 1.0, lo_open=True)
        _at_least(self, "prune_epochs", 1)
        _at_least(self, "round_to", 1)
        _at_least(self, "min_channels", 1)
        _at_least(self, "log_every", 1)
        for name in ("tau", "threshold_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.penalty < 0:
            raise ConfigError(f"penalty must be >= 0 (got {self.penalty})")
        _check_choices(self)

    def check_against(self, train: TrainConfig) -> None:
        """Raise ConfigError for combinations with the training config that cannot work."""
        if self.prune_epochs > train.epochs:
            raise ConfigError(
                f"prune_epochs ({self.prune_epochs}) must be <= epochs ({train.epochs}); the pruning phase is "
                "part of the training run"
            )

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressConfig:
        return config_from_dict(cls, data)

    def replace(self, **changes: Any) -> CompressConfig:
        return dataclasses.replace(self, **changes)


def _no_ort_options(cfg: BenchConfig) -> None:
    if cfg.ort_provider is not None:
        raise ConfigError("ort_provider chooses ONNX Runtime's execution provider; it needs --runtime ort")


def _no_torch_options(cfg: BenchConfig) -> None:
    if cfg.channels_last or cfg.compile:
        raise ConfigError("--channels-last and --compile apply to --runtime torch only")


def _check_torch_bench(cfg: BenchConfig) -> None:
    _no_ort_options(cfg)
    if cfg.precision == "int8":
        raise ConfigError("torch eager has no int8 path here; use --runtime trt or ort with an int8 export")
    if cfg.precision == "fp16" and cfg.device == "cpu":
        raise ConfigError("torch fp16 on the CPU is emulated and meaningless to time; use --device cuda or fp32")


def _check_tensorrt_bench(cfg: BenchConfig) -> None:
    _no_ort_options(cfg)
    if cfg.device == "cpu":
        raise ConfigError(f"--runtime {cfg.runtime} runs TensorRT engines on a GPU; drop --device cpu")
    _no_torch_options(cfg)


# each benchmark runtime's own checks of a BenchConfig; the keys are the names --runtime accepts, and
# lappdeploy.bench.runtimes registers how each one runs (it checks that it covers exactly these)
_BENCH_RUNTIME_CHECKS = {
    "torch": _check_torch_bench,
    "ort": _no_torch_options,
    "trt": _check_tensorrt_bench,
    "trtexec": _check_tensorrt_bench,
}
RUNTIMES = tuple(_BENCH_RUNTIME_CHECKS)


@dataclass(frozen=True)
class BenchConfig:
    """How `lappdeploy bench` measures latency (not what it measures or where the records go).

    The timing defaults follow DEPLOY.md "Measuring latency honestly": warm up by time after every
    build or shape change, then sample until both a minimum count and a minimum duration are reached.
    """

    runtime: str = _opt(
        "ort",
        "torch (eager, optionally compiled), ort (ONNX Runtime), trt (a TensorRT engine) or trtexec "
        "(read the JSON trtexec wrote on the target).",
        choices=RUNTIMES,
    )
    device: str = _opt(
        "auto",
        "cpu or cuda; auto: cuda for trt/trtexec, else cuda when the runtime can use it here, else cpu.",
        choices=("auto", "cpu", "cuda"),
    )
    ort_provider: str | None = _opt(
        None,
        "ONNX Runtime execution provider: cpu, cuda or tensorrt [default: from --device]. A provider that "
        "falls back to the CPU is refused.",
        choices=("cpu", "cuda", "tensorrt"),
    )
    precision: str = _opt(
        "fp32",
        "fp32; fp16 (CUDA for torch; an FP16 graph for ort; the engine for trt); int8 (trt/trtexec engines, "
        "or the Q/DQ ONNX of `lappdeploy export --precision int8` for ort).",
        choices=("fp32", "fp16", "int8"),
    )
    batch: tuple[int, ...] = _opt((1, 8), "Batch sizes to sweep.", cli_type="int_list")
    min_seconds: float = _opt(10.0, "Measure each model for at least this long per batch size (s).")
    min_samples: int = _opt(50, "...and for at least this many timed calls per batch size.")
    warmup_seconds: float = _opt(
        2.0, "Warm-up after every build or batch-size change: this long (s), or 50 calls if sooner."
    )
    threads: int | None = _opt(
        None, "CPU threads of torch and ONNX Runtime (intra-op) [default: torch's, usually the physical cores]."
    )
    channels_last: bool = _opt(False, "torch: channels_last memory format for weights and inputs.")
    compile: bool = _opt(False, "torch: torch.compile the model (compiled once per batch size, in the warm-up).")
    vs_dense: bool = _opt(
        False, "Also time each run's dense architecture (random weights: latency does not depend on them)."
    )
    seed: int = _opt(0, "Seed of the random input batches.")

    def __post_init__(self) -> None:
        _check_types(self)
        _check_choices(self)
        batch = tuple(self.batch)
        if not batch or min(batch) < 1 or len(set(batch)) != len(batch):
            raise ConfigError(f"batch must be distinct sizes >= 1, e.g. 1,8,32 (got {list(batch)})")
        object.__setattr__(self, "batch", tuple(sorted(batch)))
        if not self.min_seconds > 0 or not self.warmup_seconds >= 0:
            raise ConfigError(
                f"min_seconds must be > 0 and warmup_seconds >= 0 (got {self.min_seconds}, {self.warmup_seconds})"
            )
        _at_least(self, "min_samples", 1)
        if self.threads is not None:
            _at_least(self, "threads", 1)
        _BENCH_RUNTIME_CHECKS[self.runtime](self)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        return config_from_dict(cls, data)

    def replace(self, **changes: Any) -> BenchConfig:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------------
# generic helpers shared by every stage's config


def _check_choices(cfg: Any) -> None:
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)} (got {value!r})")


def _at_least(cfg: Any, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if value < low:
        raise ConfigError(f"{name} must be >= {low} (got {value})")


def _in_range(cfg: Any, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    value = getattr(cfg, name)
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{name} must be in {interval} (got {value})")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config class (they are strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a YAML/CLI value to the field's annotated type, or raise a ConfigError naming the field."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner)
    if origin is tuple:
        item_type = args[0]
        if isinstance(value, str):
            # names may contain "x" or spaces: split them on commas only
            value = [v.strip() for v in value.split(",") if v.strip()] if item_type is str else parse_int_list(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name} must be a list (got {value!r})")
        return tuple(_coerce(name, v, item_type) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false (got {value!r})")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name} must be an integer (got {value!r})")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer (got {value!r})") from None
        if not as_float.is_integer():
            raise ConfigError(f"{name} must be an integer (got {value!r})")
        return int(as_float)
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number (got {value!r})")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number (got {value!r})") from None
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string (got {value!r})")
        return value
    return value


def _check_types(cfg: Any) -> None:
    for name, hint in _field_types(type(cfg)).items():
        object.__setattr__(cfg, name, _coerce(name, getattr(cfg, name), hint))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def field_names(cls: type) -> list[str]:
    """The option names of a config dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def config_from_dict(cls: type[C], data: dict[str, Any]) -> C:
    if not isinstance(data, dict):
        raise ConfigError(f"a {cls.__name__} must be a mapping of option names to values (got {type(data).__name__})")
    names = field_names(cls)
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid keys: {', '.join(names)}"
        raise ConfigError(f"unknown option {key!r} in config; {hint}")
    return cls(**data)


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold one mapping; keys may use dashes or underscores."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping of option: value (got a {type(data).__name__})")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
