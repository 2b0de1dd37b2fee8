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
    "RESUMABLE_CHANGES",
    "BenchConfig",
    "ExportConfig",
    "TrainConfig",
    "at_least",
    "check_choices",
    "check_types",
    "config_from_dict",
    "config_to_dict",
    "field_default",
    "field_names",
    "in_range",
    "load_yaml_mapping",
    "option",
    "parse_int_list",
    "parse_shape",
    "resolve_opset",
    "split_sections",
]

C = TypeVar("C")


def option(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its CLI help; `extra` may give `choices` and a `cli_type` (shape, int_list,
    str_list, json) for the option generated from it. A dict default is copied for every instance."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a config field (made by its factory where it has one)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


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


DISTILL_ALPHA = 0.3  # chosen on held-out images (docs/distillation.md#defaults)
DISTILL_TEMPERATURE = 2.0
SCRATCH_LR = 0.1  # SGD peak learning rate from random weights
FINE_TUNE_LR = 0.03  # from --init-from: fine-tuning a trained model (docs/own-model.md#fine-tuning-defaults)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and nothing about where its files go)."""

    # what to train
    model: str = option(
        "resnet20",
        "Architecture: a registered name (`lappdeploy list models`), timm:NAME (a timm model, the timm extra), or "
        "package.module:factory (your own builder, imported from the working directory or PYTHONPATH).",
    )
    model_kwargs: dict[str, Any] = option(  # noqa: RUF009 (option gives a dict default a default_factory)
        {}, "Keyword arguments of the model's builder, as JSON, e.g. '{\"width\": 0.5}'.", cli_type="json"
    )
    dataset: str = option("fashion-mnist", "Dataset name (`lappdeploy list datasets`).")
    # data
    data_dir: str | None = option(
        None, "Dataset directory (searched first; then $LAPPDEPLOY_DATA, then the system location)."
    )
    download: bool = option(
        False,
        "Download what is not found locally: the dataset (torchvision), and named pretrained weights of --init-from "
        "(torchvision:TAG, timm:TAG), which are otherwise read from the local torch-hub / Hugging Face cache only.",
    )
    image_size: int | None = option(
        None, "Input resolution in pixels (default: the dataset's own, raised to the model's minimum)."
    )
    augment: bool = option(True, "Standard training augmentation of the dataset (crop, flip).")
    train_subset: int | None = option(None, "Train on the first N images of a fixed shuffle (quick runs).")
    val_subset: int | None = option(None, "Evaluate on the first N validation images of a fixed shuffle.")
    holdout: int | None = option(
        None,
        "Hold N images of the training set out of training (a fixed split, the same for every method and seed): "
        "pruning methods decide on them and their top-1 is logged as holdout_top1, for choosing knobs without "
        "the test split [default: 0; laasp and pcp: 5000; with --reconstruct or ldrf: at least --calib-images + 256].",
    )
    init_from: str | None = option(
        None,
        "Start from these weights instead of random ones: a lappdeploy run directory or model.pt, a state dict "
        "(.pt/.pth), a .safetensors file, a checkpoint dict holding one (state_dict, model, model_state_dict, ema), "
        "or named pretrained weights torchvision:TAG / timm:TAG (docs/own-model.md). A classifier of another class "
        "count is replaced by a fresh one.",
    )
    mean: tuple[float, ...] | None = option(
        None,
        "Per-channel input mean (pixels in [0, 1]), comma-separated [default: the named weights' own, else the "
        "dataset's].",
    )
    std: tuple[float, ...] | None = option(
        None, "Per-channel input std, comma-separated [default: the named weights' own, else the dataset's]."
    )
    synthetic_shape: tuple[int, int, int] = option(
        (3, 32, 32), "Synthetic dataset: image shape CxHxW.", cli_type="shape"
    )
    synthetic_classes: int = option(10, "Synthetic dataset: number of classes.")
    synthetic_samples: int = option(2048, "Synthetic dataset: training images (validation gets a quarter).")
    # optimisation
    epochs: int = option(2, "Training epochs (0 with --init-from: no training, the given model is evaluated).")
    batch_size: int = option(128, "Images per step per process (the global batch is this x processes).")
    lr: float | None = option(
        None, "Peak learning rate of SGD [default: 0.1 from scratch; 0.03 with --init-from (fine-tuning)]."
    )
    momentum: float = option(0.9, "SGD momentum.")
    nesterov: bool = option(True, "Nesterov momentum.")
    weight_decay: float = option(5e-4, "L2 weight decay.")
    lr_schedule: str = option("cosine", "Learning-rate schedule: cosine or step.", choices=("cosine", "step"))
    lr_milestones: tuple[int, ...] = option(
        (),
        "Step schedule: epochs at which the LR is multiplied by --lr-gamma (default: 50% and 75%).",
        cli_type="int_list",
    )
    lr_gamma: float = option(0.1, "Step schedule: LR factor at each milestone.")
    warmup_epochs: float = option(0.0, "Linear LR warm-up length in (fractional) epochs.")
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy loss.")
    # distillation
    distill: str | None = option(
        None,
        "Distil from a teacher: init (the model the run starts from, --init-from: the usual post-training case), "
        "or anything --init-from accepts (docs/distillation.md). Same classes and input; any architecture.",
    )
    distill_model: str | None = option(
        None, "Architecture of a --distill teacher given as plain weights (a state dict) [default: --model]."
    )
    distill_alpha: float = option(
        DISTILL_ALPHA, "Weight of the distillation term, in [0, 1] (1 - alpha weighs the cross-entropy)."
    )
    distill_temperature: float = option(DISTILL_TEMPERATURE, "Softmax temperature T of the distillation term (> 0).")
    # execution
    amp: bool = option(False, "Automatic mixed precision (autocast) for training.")
    amp_dtype: str = option("bf16", "AMP dtype: bf16, or fp16 (CUDA, with gradient scaling).", choices=("bf16", "fp16"))
    channels_last: bool = option(
        False, "channels_last memory format (often faster, on CPUs too: see benchmarks/train_throughput.py)."
    )
    sync_bn: bool = option(False, "Synchronise BatchNorm statistics across processes (DDP).")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (CUDA when available).")
    workers: int | None = option(None, "DataLoader worker processes per training process (default: auto).")
    seed: int = option(0, "Random seed: same seed, same machine -> same weights.")
    deterministic: bool = option(False, "Force deterministic kernels (slower on GPU).")
    tensorboard: bool = option(
        False, "Also write the metrics, pruning lines and plots as TensorBoard events in RUN/tensorboard (extra)."
    )

    def __post_init__(self) -> None:
        check_types(self)
        if self.lr is None:  # a trained model is fine-tuned: a tenth of the from-scratch rate (docs/own-model.md)
            object.__setattr__(self, "lr", FINE_TUNE_LR if self.init_from is not None else SCRATCH_LR)
        self._check_model_inputs()
        self._check_epochs()
        at_least(self, "batch_size", 1)
        at_least(self, "synthetic_classes", 1)
        at_least(self, "synthetic_samples", 1)
        for name in ("image_size", "train_subset", "val_subset"):
            if getattr(self, name) is not None:
                at_least(self, name, 1)
        if self.holdout is not None:
            at_least(self, "holdout", 0)
        if self.workers is not None:
            at_least(self, "workers", 0)
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0 (got {self.lr})")
        in_range(self, "momentum", 0.0, 1.0, hi_open=True)
        in_range(self, "label_smoothing", 0.0, 1.0, hi_open=True)
        in_range(self, "lr_gamma", 0.0, 1.0, lo_open=True)
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0 (got {self.weight_decay})")
        if self.warmup_epochs < 0 or (self.warmup_epochs > 0 and self.warmup_epochs >= self.epochs):
            raise ConfigError(f"warmup_epochs must be in [0, epochs={self.epochs}) (got {self.warmup_epochs})")
        object.__setattr__(self, "synthetic_shape", parse_shape(self.synthetic_shape))
        milestones = tuple(self.lr_milestones)
        if any(not 0 < m < self.epochs for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise ConfigError(
                f"lr_milestones must be increasing epochs inside (0, {self.epochs}) (got {list(milestones)})"
            )
        object.__setattr__(self, "lr_milestones", milestones)
        check_choices(self)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0; pass --no-nesterov or set --momentum")
        self._check_distillation()

    def _check_distillation(self) -> None:
        in_range(self, "distill_alpha", 0.0, 1.0)
        if not self.distill_temperature > 0:
            raise ConfigError(f"distill_temperature must be > 0 (got {self.distill_temperature})")
        if self.distill == "init" and self.init_from is None:
            raise ConfigError("--distill init teaches with the model the run starts from: it needs --init-from")
        if self.distill is None and self.distill_model is not None:
            raise ConfigError("--distill-model names the architecture of a --distill teacher; give --distill too")

    def _check_model_inputs(self) -> None:
        if not isinstance(self.model_kwargs, dict) or not all(isinstance(k, str) for k in self.model_kwargs):
            raise ConfigError(f"model_kwargs must be a mapping of argument names to values (got {self.model_kwargs!r})")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and not values:
                raise ConfigError(f"--{name} needs one value per input channel (got none)")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"--std values must be > 0 (got {list(self.std)})")
        if (self.mean is None) != (self.std is None) or (self.mean and len(self.mean) != len(self.std)):
            raise ConfigError("give --mean and --std together, one value per input channel each")

    def _check_epochs(self) -> None:
        """At least one epoch; 0 only for a given model (--init-from), which is then evaluated (and pruned,
        by methods that prune before the first step) without training."""
        fewest = 0 if self.init_from is not None else 1
        if self.epochs < fewest:
            hint = "; --epochs 0 (no training: evaluate, or prune, a given model) needs --init-from" if fewest else ""
            raise ConfigError(f"epochs must be >= {fewest} (got {self.epochs}){hint if self.epochs == 0 else ''}")

    # YAML round trip
    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# TrainConfig fields that may differ between an interrupted and a resumed session (where the data lives,
# how it is loaded); everything else would change the result.
RESUMABLE_CHANGES = frozenset({"data_dir", "download", "workers", "device", "tensorboard"})


EXPORTERS = ("auto", "legacy", "dynamo")
# legacy: the TorchScript exporter at opset 17, what TensorRT 8.5/8.6 (older JetPack) parses;
# dynamo: torch.export-based, needs opset >= 18 (18 is the most widely parsed of those);
# auto: legacy, and dynamo where the legacy exporter cannot export the model (recorded).
DEFAULT_OPSET = {"auto": 17, "legacy": 17, "dynamo": 18}
MIN_OPSET = {"auto": 9, "legacy": 9, "dynamo": 18}
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

    onnx: bool = option(
        True, "Export the ONNX model (--no-onnx: reuse OUT/model.onnx of an earlier export, e.g. for --trt)."
    )
    trt: bool = option(
        False, "Build a TensorRT engine too; without the tensorrt package, write trtexec.sh and exit with code 3."
    )
    precision: str = option("fp32", "TensorRT precision.", choices=("fp32", "fp16", "int8"))
    openvino: bool = option(
        False,
        "Also write OpenVINO IR (model.xml + model.bin) from the ONNX, parity-checked against PyTorch on "
        "OpenVINO's CPU plugin at fp32 (the openvino extra).",
    )
    batch: tuple[int, ...] = option(
        (1, 8, 32),
        "Batch sizes min,opt,max of the dynamic batch dimension (TensorRT profile; ONNX parity runs at min and max).",
        cli_type="int_list",
    )
    opset: int | None = option(None, "ONNX opset (default: 17 with the legacy exporter, 18 with dynamo).")
    exporter: str = option(
        "auto",
        "torch.onnx exporter: legacy (TorchScript; opset 17 parses on TensorRT 8.5/8.6), dynamo (torch.export), "
        "or auto: legacy, and dynamo where legacy cannot export the model (recorded in export.json).",
        choices=EXPORTERS,
    )
    fallback: bool = option(
        False, "If the dynamo exporter fails, export with the legacy one (recorded in export.json)."
    )
    simplify: bool = option(True, "Simplify the graph with onnxslim.")
    calib_images: int = option(
        512, "INT8: calibration images from the run's training set (fixed shuffle, no augmentation)."
    )
    data_dir: str | None = option(None, "INT8: dataset directory (default: the run's config, then the usual places).")
    workspace_mib: int = option(1024, "TensorRT builder workspace limit (MiB).")
    opt_level: int = option(3, "TensorRT builder optimization level 0-5 (TensorRT's default: 3).")
    trt_version: str | None = option(
        None,
        "TensorRT family of the target when tensorrt is not installed here (trtexec.sh): 8.5 (JetPack 5.1), "
        "8.6 (JetPack 6.0), 10 (JetPack 6.x), 11, or auto (the script reads trtexec's version on the target) "
        "[default: 10].",
        choices=("auto", "8.5", "8.6", "10", "11"),
    )
    cuda_graph: bool = option(
        True,
        "trtexec.sh: time with CUDA graphs (trtexec 11's default, spelled out for older families); "
        "--no-cuda-graph launches every inference (8.5-10 only). `lappdeploy bench --runtime trt` has the same flag.",
    )
    timing_cache_dir: str | None = option(
        None, "Directory of the per-device TensorRT timing caches [default: ~/.cache/lappdeploy/tensorrt]."
    )
    tf32: bool = option(
        False,
        "TensorRT fp32 engines may use TF32 Tensor Cores (the builder's TF32 flag, trtexec without --noTF32); "
        "off: fp32 means fp32, as `lappdeploy bench --no-tf32` does for torch and ONNX Runtime.",
    )
    seed: int = option(0, "Seed of the random parity inputs.")

    def __post_init__(self) -> None:
        check_types(self)
        check_choices(self)
        batch = tuple(sorted(self.batch))
        if not 1 <= len(batch) <= 3 or batch[0] < 1 or len(set(batch)) != len(batch):
            raise ConfigError(f"batch must be 1 to 3 distinct sizes >= 1, e.g. 1,8,32 (got {list(self.batch)})")
        object.__setattr__(self, "batch", batch)
        at_least(self, "calib_images", 1)
        at_least(self, "workspace_mib", 1)
        in_range(self, "opt_level", 0, 5)
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


def _no_ort_options(cfg: BenchConfig) -> None:
    if cfg.ort_provider is not None:
        raise ConfigError("ort_provider chooses ONNX Runtime's execution provider; it needs --runtime ort")


def _no_torch_options(cfg: BenchConfig) -> None:
    if cfg.channels_last or cfg.compile:
        raise ConfigError("--channels-last and --compile apply to --runtime torch only")


def _no_bf16(cfg: BenchConfig) -> None:
    if cfg.precision == "bf16":
        raise ConfigError(
            f"--precision bf16 is timed on OpenVINO's CPU kernels (--runtime openvino), not {cfg.runtime}"
        )


def _check_torch_bench(cfg: BenchConfig) -> None:
    _no_ort_options(cfg)
    _no_bf16(cfg)
    if cfg.precision == "int8":
        raise ConfigError("torch eager has no int8 path here; use --runtime trt or ort with an int8 export")
    if cfg.precision == "fp16" and cfg.device == "cpu":
        raise ConfigError("torch fp16 on the CPU is emulated and meaningless to time; use --device cuda or fp32")


def _check_tensorrt_bench(cfg: BenchConfig) -> None:
    _no_ort_options(cfg)
    _no_bf16(cfg)
    if cfg.device == "cpu":
        raise ConfigError(f"--runtime {cfg.runtime} runs TensorRT engines on a GPU; drop --device cpu")
    _no_torch_options(cfg)


def _check_ort_bench(cfg: BenchConfig) -> None:
    _no_torch_options(cfg)
    _no_bf16(cfg)


def _check_openvino_bench(cfg: BenchConfig) -> None:
    _no_ort_options(cfg)
    _no_torch_options(cfg)
    if cfg.device == "cuda":
        raise ConfigError("--runtime openvino times OpenVINO's CPU plugin; drop --device cuda")
    if cfg.precision == "fp16":
        raise ConfigError("OpenVINO on the CPU runs fp32, bf16 or int8: use one of those with --runtime openvino")
    if cfg.tf32:
        raise ConfigError("--tf32 is a GPU setting; it does not apply to --runtime openvino")


# each benchmark runtime's own checks of a BenchConfig; the keys are the names --runtime accepts, and
# lappdeploy.bench.runtimes registers how each one runs (it checks that it covers exactly these)
_BENCH_RUNTIME_CHECKS = {
    "torch": _check_torch_bench,
    "ort": _check_ort_bench,
    "trt": _check_tensorrt_bench,
    "trtexec": _check_tensorrt_bench,
    "openvino": _check_openvino_bench,
}
RUNTIMES = tuple(_BENCH_RUNTIME_CHECKS)


@dataclass(frozen=True)
class BenchConfig:
    """How `lappdeploy bench` measures latency (not what it measures or where the records go).

    The timing defaults follow docs/deployment.md#measuring-latency: warm up by time after every
    build or shape change, then sample until both a minimum count and a minimum duration are reached.
    """

    runtime: str = option(
        "ort",
        "torch (eager, optionally compiled), ort (ONNX Runtime), trt (a TensorRT engine), trtexec "
        "(read the JSON trtexec wrote on the target) or openvino (OpenVINO's CPU plugin).",
        choices=RUNTIMES,
    )
    device: str = option(
        "auto",
        "cpu or cuda; auto: cuda for trt/trtexec, else cuda when the runtime can use it here, else cpu.",
        choices=("auto", "cpu", "cuda"),
    )
    ort_provider: str | None = option(
        None,
        "ONNX Runtime execution provider: cpu, cuda or tensorrt [default: from --device]. A provider that "
        "falls back to the CPU is refused.",
        choices=("cpu", "cuda", "tensorrt"),
    )
    precision: str = option(
        "fp32",
        "fp32; fp16 (CUDA for torch; an FP16 graph for ort; the engine for trt); bf16 (openvino, on a CPU with "
        "AMX or AVX-512 BF16; refused elsewhere); int8 (trt/trtexec engines, or the Q/DQ ONNX of `lappdeploy "
        "export --trt --precision int8` for ort and openvino).",
        choices=("fp32", "fp16", "bf16", "int8"),
    )
    batch: tuple[int, ...] = option((1, 8), "Batch sizes to sweep.", cli_type="int_list")
    min_seconds: float = option(10.0, "Measure each model for at least this long per batch size (s).")
    min_samples: int = option(50, "...and for at least this many timed calls per batch size.")
    warmup_seconds: float = option(
        2.0, "Warm-up after every build or batch-size change: at least this long (s) and at least 50 calls."
    )
    tf32: bool = option(
        False,
        "fp32 on a GPU may use TF32 Tensor Cores: torch (cuDNN and matmul), ONNX Runtime's CUDA provider, and "
        "for --runtime trt the engine (built with `lappdeploy export --tf32`); off: fp32 means fp32. Recorded.",
    )
    cuda_graph: bool = option(
        True,
        "--runtime trt: launch each inference as a CUDA graph, as trtexec.sh does with the same flag (recorded).",
    )
    threads: int | None = option(
        None, "CPU threads of torch and ONNX Runtime (intra-op) [default: torch's, usually the physical cores]."
    )
    channels_last: bool = option(False, "torch: channels_last memory format for weights and inputs.")
    compile: bool = option(False, "torch: torch.compile the model (compiled once per batch size, in the warm-up).")
    vs_dense: bool = option(
        False, "Also time each run's dense architecture (random weights: latency does not depend on them)."
    )
    seed: int = option(0, "Seed of the random input batches.")

    def __post_init__(self) -> None:
        check_types(self)
        check_choices(self)
        batch = tuple(self.batch)
        if not batch or min(batch) < 1 or len(set(batch)) != len(batch):
            raise ConfigError(f"batch must be distinct sizes >= 1, e.g. 1,8,32 (got {list(batch)})")
        object.__setattr__(self, "batch", tuple(sorted(batch)))
        if not self.min_seconds > 0 or not self.warmup_seconds >= 0:
            raise ConfigError(
                f"min_seconds must be > 0 and warmup_seconds >= 0 (got {self.min_seconds}, {self.warmup_seconds})"
            )
        at_least(self, "min_samples", 1)
        if self.threads is not None:
            at_least(self, "threads", 1)
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


def check_choices(cfg: Any) -> None:
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)} (got {value!r})")


def at_least(cfg: Any, name: str, low: int) -> None:
    value = getattr(cfg, name)
    if value < low:
        raise ConfigError(f"{name} must be >= {low} (got {value})")


def in_range(cfg: Any, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    value = getattr(cfg, name)
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{name} must be in {interval} (got {value})")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a config class's fields (they are strings under `from __future__ import
    annotations`); class variables are not fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


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


def check_types(cfg: Any) -> None:
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


SECTIONS = ("train", "method")  # the stages of a nested config file (config.yaml of a run)


def split_sections(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, bool]:
    """(train options, method section or None, legacy) of a config mapping: nested by stage (any of the
    keys `train:` / `method:` holding a mapping, or empty), or the flat layout of earlier versions, whose
    keys outside TrainConfig were the compress settings. A file mixing the two layouts is refused."""
    nested = [k for k in SECTIONS if k in data and (data[k] is None or isinstance(data[k], dict))]
    if nested:
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(
                f"config mixes sections ({', '.join(nested)}:) with top-level option {unknown[0]!r}; put every "
                "option under train: or method:"
            )
        train, method = data.get("train") or {}, data.get("method")
        if not isinstance(train, dict) or (method is not None and not isinstance(method, dict)):
            raise ConfigError("the train: and method: sections of a config must be mappings of option: value")
        train = {str(k).replace("-", "_"): v for k, v in train.items()}
        method = {str(k).replace("-", "_"): v for k, v in method.items()} if method is not None else None
        return train, method, False
    names = set(field_names(TrainConfig))
    train = {k: v for k, v in data.items() if k in names}
    rest = {k: v for k, v in data.items() if k not in names}
    if not rest:
        return train, None, True
    return train, {"name": rest.pop("method", "lapp"), **rest}, True


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
