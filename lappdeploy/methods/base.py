"""The pruning-method contract, importable without torch: the common config, the registry, the hook protocol.

A method is registered with its frozen config class (a `PruneConfig` subclass holding only that method's
options) and a handler, `prepare_(model, example_inputs, config) -> PruningHook`, named as
"module:function" and imported on first use (the handler imports torch; the CLI lists methods and their
options without it). The config's type selects the handler (`spec_for(config)`), as torchao's configs do.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from lappdeploy.config import (
    TrainConfig,
    at_least,
    check_choices,
    check_types,
    config_from_dict,
    config_to_dict,
    field_names,
    in_range,
    option,
)
from lappdeploy.errors import ConfigError
from lappdeploy.hooks import Hook
from lappdeploy.registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "RECONSTRUCT_MODES",
    "ROUND_TO_AUTO",
    "AttemptConfig",
    "MethodSpec",
    "PruneConfig",
    "PruningHook",
    "method_config",
    "method_section",
    "option_owners",
    "register_method",
    "spec_for",
]

DEFAULT_METHOD = "lapp"
DIAGNOSTIC_IMAGES = 256  # held-out images beyond the calibration ones, for the reconstruction's output errors
# What to refit after channels are removed (docs/ldrf.md#reconstruction): nothing, least squares of each
# affected layer's output (ls), of its input-side SVD embedding (ldrf: the projection; ldrf-joint: with the
# producer's kept filters), or of its output-side embedding (ldrf-patch)
RECONSTRUCT_MODES = ("none", "ls", "ldrf", "ldrf-patch", "ldrf-joint")
# --round-to auto (0 in a config): per group, the multiple the latency table's width-step probes show
ROUND_TO_AUTO = 0
C = TypeVar("C", bound="PruneConfig")


@dataclass(frozen=True)
class PruneConfig:
    """Options every pruning method has: the MACs target, the schedule, widths and what not to prune."""

    method: ClassVar[str] = ""  # the registered name; set by `register_method`
    # Methods that decide by evaluating candidate prunings need held-out training images (--holdout);
    # this many are held out when the run does not say.
    default_holdout: ClassVar[int] = 0
    # Methods that can budget measured latency (--target-latency) instead of MACs
    supports_latency: ClassVar[bool] = False

    target_macs: float = option(0.5, "Fraction of the dense deploy MACs to keep, in (0, 1].")
    prune_epochs: int = option(
        1,
        "Length of the pruning phase in epochs (for one-shot and iterative methods: the dense epochs before "
        "pruning starts; 0 with --init-from prunes the trained model at once; default 0 for ldrf).",
    )
    round_to: int = option(
        8,
        "Round every kept width to a multiple of K (Tensor Cores want 8 for FP16); 1 disables; auto (0 in a "
        "config; with a latency budget): per group, the multiple its latency steps at on the --latency-table.",
        cli_type="round_to",
    )
    min_channels: int = option(1, "Fewest channels a group keeps (at least --round-to when rounding).")
    ignore: tuple[str, ...] = option(
        (), "Never prune groups spanning these modules (comma-separated fnmatch patterns).", cli_type="str_list"
    )
    keep_streams: bool = option(
        False,
        "Never prune residual streams (groups several layers write into, coupled by additions): only channels "
        "inside residual blocks, the setting of layer-wise reconstruction methods (docs/ldrf.md#residual-streams).",
    )
    bypass: str = option(
        "none",
        "rep: train each prunable kxk conv with a 1x1 bypass folded away at the end; width: a 1x1 bypass that "
        "stays and keeps the layer's output width while its kxk filters are pruned, one threshold per layer "
        "(docs/lapp.md#bypass).",
        choices=("none", "rep", "width"),
    )
    log_every: int = option(10, "Log the pruning state to metrics.jsonl every N steps of the pruning phase.")
    recalibrate_bn: int = option(
        20, "After channels are removed, re-estimate BatchNorm statistics on N training batches (0: do not)."
    )
    reconstruct: str = option(
        "none",
        "After channels are removed, refit the layers that read them on held-out images: ls (least squares of "
        "each layer's output), ldrf (of its input's SVD embedding), ldrf-patch (of its output's), ldrf-joint "
        "(ldrf with the producing layer's kept filters); docs/ldrf.md#reconstruction (default ldrf for ldrf).",
        choices=RECONSTRUCT_MODES,
    )
    reconstruct_relu: bool = option(
        False, "--reconstruct ls / ldrf-patch: fit each layer's output after the BatchNorm and ReLU that follow it."
    )
    reconstruct_diagnostics: bool = option(
        False,
        "Measure every layer reading removed channels against the original network on held-out images the fits "
        "never saw (report.json: output_error); always on with --reconstruct, this gives plain removal's too.",
    )
    calib_images: int = option(
        512, "--reconstruct: held-out images the refits are computed on (at most --holdout; never the test split)."
    )
    calib_positions: int = option(10, "--reconstruct: spatial positions sampled per calibration image and layer.")
    calib_seed: int = option(
        0, "--reconstruct: seed of the calibration sample (which held-out images, which positions)."
    )
    reconstruct_ridge: float = option(
        1e-4, "--reconstruct: ridge of each least-squares fit, relative to the mean diagonal of its Gram matrix."
    )
    ldrf_energy: float = option(
        0.9,
        "ldrf: share of a layer's spectral energy its embedding keeps, in (0, 1] (the embedding's rank is the "
        "layer's valid capacity).",
    )

    target_latency: float = option(
        0.0,
        "lapp, uniform, global: budget measured latency instead of MACs, the fraction, in (0, 1), of the dense "
        "model's latency on the --latency-table's runtime and device (docs/latency.md); 0: budget --target-macs.",
    )
    target_latency_ms: float = option(
        0.0, "Budget latency in ms per batch (the table's batch size) on the --latency-table's runtime; 0: not used."
    )
    latency_table: str = option(
        "",
        "Latency table (JSON, from `lappdeploy profile`) for --target-latency / --target-latency-ms; empty: profile "
        "this model on ONNX Runtime CPU (batch 8), cached.",
    )
    force_table: bool = option(False, "Use a --latency-table measured on another device or runtime.")
    measured_landing: bool = option(
        False,
        "With a latency target and a table measured on this machine: time the landed plan's deploy model "
        "(interleaved with the dense one) and land again on a corrected limit until it measures within 3% of "
        "the target (at most 4 timings, a few seconds each). Off by default: on ResNet-20 it did not land "
        "closer than the table's prediction; for tables that mis-predict (docs/latency.md#the-measured-landing).",
    )

    def __post_init__(self) -> None:
        if self.round_to == "auto":  # from YAML or the Python API; the CLI passes ROUND_TO_AUTO
            object.__setattr__(self, "round_to", ROUND_TO_AUTO)
        check_types(self)
        in_range(self, "target_macs", 0.0, 1.0, lo_open=True)
        self._check_latency()
        at_least(self, "prune_epochs", 0)
        if self.round_to < ROUND_TO_AUTO:
            raise ConfigError(f"--round-to must be a multiple >= 1 or auto (got {self.round_to})")
        at_least(self, "min_channels", 1)
        at_least(self, "log_every", 1)
        at_least(self, "recalibrate_bn", 0)
        check_choices(self)
        self._check_reconstruction()

    @property
    def budgets_latency(self) -> bool:
        return self.target_latency > 0 or self.target_latency_ms > 0

    def _check_latency(self) -> None:
        if self.budgets_latency and not self.supports_latency:
            latency_methods = ", ".join(n for n in METHODS.names() if METHODS.get(n).config.supports_latency)
            raise ConfigError(
                f"--target-latency / --target-latency-ms: {self.method} budgets MACs only; methods that budget "
                f"latency: {latency_methods}"
            )
        if self.target_latency > 0 and self.target_latency_ms > 0:
            raise ConfigError("give --target-latency (a fraction of dense) or --target-latency-ms, not both")
        if not 0 <= self.target_latency < 1:
            raise ConfigError(
                f"--target-latency {self.target_latency} must be in (0, 1): a fraction of the dense model's latency"
            )
        if self.target_latency_ms < 0:
            raise ConfigError(f"--target-latency-ms must be > 0 (got {self.target_latency_ms})")
        if self.budgets_latency and self.bypass == "width":
            raise ConfigError(
                "--bypass width deploys two convs per layer, which latency tables do not time yet: budget "
                "MACs (--target-macs) with --bypass width, or use --bypass none/rep with a latency target"
            )
        if self.round_to == ROUND_TO_AUTO and not self.budgets_latency:
            raise ConfigError(
                "--round-to auto reads the width steps of a latency table: it needs --target-latency or "
                "--target-latency-ms (or give --round-to K)"
            )
        if (self.latency_table or self.force_table) and not self.budgets_latency:
            raise ConfigError("--latency-table / --force-table need --target-latency or --target-latency-ms")

    def _check_reconstruction(self) -> None:
        at_least(self, "calib_images", 1)
        at_least(self, "calib_positions", 1)
        in_range(self, "ldrf_energy", 0.0, 1.0, lo_open=True)
        if not self.reconstruct_ridge >= 0:
            raise ConfigError(f"reconstruct_ridge must be >= 0 (got {self.reconstruct_ridge})")
        if self.reconstruct_relu and self.reconstruct not in ("ls", "ldrf-patch"):
            raise ConfigError("--reconstruct-relu refits ls or ldrf-patch fits; give --reconstruct ls or ldrf-patch")
        if self.reconstruct != "none" and self.bypass != "none":
            raise ConfigError(
                f"--reconstruct cannot refit layers trained with --bypass {self.bypass}: every conv has a "
                "parallel bypass reading the same channels; use --bypass none"
            )

    def check_against(self, train: TrainConfig) -> None:
        """Raise ConfigError for combinations with the training config that cannot work."""
        if self.prune_epochs > train.epochs:
            raise ConfigError(
                f"prune_epochs ({self.prune_epochs}) must be <= epochs ({train.epochs}); the pruning phase is "
                "part of the training run"
            )
        if train.sync_bn:
            raise ConfigError("--sync-bn replaces the BatchNorm layers the pruning method tracks; drop --sync-bn")
        if self.prune_epochs == 0 and train.init_from is None:
            raise ConfigError("--prune-epochs 0 prunes before any training: it needs --init-from a trained model")
        if self.default_holdout and (train.holdout or 0) < train.batch_size:
            raise ConfigError(
                f"{self.method} decides on held-out training images: --holdout {train.holdout} is less than one "
                f"batch ({train.batch_size}); use --holdout {self.default_holdout} or leave it out"
            )
        if self.reconstruct != "none" and (train.holdout or 0) < self.calib_images:
            raise ConfigError(
                f"--calib-images {self.calib_images} is more than the {train.holdout or 0} held-out images "
                f"(--holdout): calibration reads held-out training images only, never the test split; raise "
                f"--holdout to {self.calib_images} or lower --calib-images"
            )

    def resolve_train(self, train: TrainConfig) -> TrainConfig:
        """`train` with the method's default --holdout filled in where the run gives none (with --reconstruct,
        at least --calib-images, plus the images the layers' output errors are measured on)."""
        if train.holdout is not None:
            return train
        calibration = self.calib_images if self.reconstruct != "none" else 0
        measured = DIAGNOSTIC_IMAGES if self.reconstruct != "none" or self.reconstruct_diagnostics else 0
        return train.replace(holdout=max(self.default_holdout, calibration + measured))

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        return config_from_dict(cls, data)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class AttemptConfig(PruneConfig):
    """Options of the methods that decide by attempts on held-out images (docs/criteria.md#attempts)."""

    default_holdout: ClassVar[int] = 5000

    prune_span: float = option(
        1.0,
        "Epochs over which the removal steps are spread (the training between them is the recovery); steps "
        "still needed at its end follow each other at once.",
    )
    decision_images: int = option(
        512, "Held-out images each attempt is evaluated on (the first N of --holdout), kept on the device."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prune_span > 0:
            raise ConfigError(f"prune_span must be > 0 epochs (got {self.prune_span})")
        at_least(self, "decision_images", 1)

    def check_against(self, train: TrainConfig) -> None:
        super().check_against(train)
        if self.prune_epochs + self.prune_span > train.epochs:
            raise ConfigError(
                f"--prune-epochs {self.prune_epochs} + --prune-span {self.prune_span:g} must be <= --epochs "
                f"{train.epochs}: the removal steps happen inside the training run"
            )


class PruningHook(Protocol):
    """What a method's handler returns: a training `Hook` that removes channels by the end of the pruning
    phase. After training, `result()` gives the plan applied and its costs (`methods.common.PruneResult`)."""

    name: str
    plan: Any  # the ChannelPlan applied, None until the channels are removed

    def detach_hooks(self) -> None:
        """Remove any forward hooks the method put on the model (masks); idempotent."""

    def result(self) -> Any:
        """The PruneResult once the plan is applied (raises before)."""


Handler = Callable[["torch.nn.Module", "torch.Tensor", PruneConfig], "Hook"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type[PruneConfig]
    handler: str  # "module:function" of prepare_(model, example_inputs, config) -> PruningHook
    summary: str  # one line: what the method does

    def prepare(self, model: torch.nn.Module, example_inputs: torch.Tensor, config: PruneConfig) -> Hook:
        """Run the handler: set `model` up for this method (in place) and return its pruning hook."""
        if type(config) is not self.config:
            raise ConfigError(f"method {self.name} needs a {self.config.__name__}, got a {type(config).__name__}")
        module, _, function = self.handler.partition(":")
        return getattr(importlib.import_module(module), function)(model, example_inputs, config)


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, config: type[PruneConfig], *, handler: str, summary: str) -> MethodSpec:
    """Register method `name`: its config class (a PruneConfig subclass; every config type belongs to one
    method) and its handler as "module:function"."""
    if not (isinstance(config, type) and issubclass(config, PruneConfig)):
        raise TypeError(f"the config of method {name!r} must subclass PruneConfig")
    if config.method and config.method != name:
        raise ValueError(f"{config.__name__} is the config of method {config.method!r} already")
    spec = METHODS.add(name, MethodSpec(name, config, handler, summary))
    config.method = name
    return spec


def spec_for(config: PruneConfig) -> MethodSpec:
    """The method a config belongs to (its type decides)."""
    if not type(config).method:
        raise ConfigError(f"{type(config).__name__} is not the config of a registered method")
    return METHODS.get(type(config).method)


def option_owners(name: str) -> list[str]:
    """The methods that have an option called `name`."""
    return [m for m in METHODS.names() if name in field_names(METHODS.get(m).config)]


def method_config(section: Mapping[str, Any], *, legacy: bool = False) -> PruneConfig:
    """The typed config of a `method:` section ({"name": method, **options}; name defaults to lapp).

    An option that belongs to another method is an error naming both. With `legacy` (flat config files
    of earlier versions, which saved every method's options) such options are dropped instead.
    """
    options = {str(k).replace("-", "_"): v for k, v in section.items()}
    name = str(options.pop("name", options.pop("method", DEFAULT_METHOD)))
    spec = METHODS.get(name)
    own = field_names(spec.config)
    for key in [k for k in options if k not in own]:
        owners = option_owners(key)
        if legacy and owners:
            del options[key]
        elif owners:
            raise ConfigError(
                f"--{key.replace('_', '-')} is an option of method {', '.join(owners)}, not of {name}; "
                f"drop it or choose --method {owners[0]}"
            )
        else:
            close = difflib.get_close_matches(key, own, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"{name}'s options: {', '.join(own)}"
            raise ConfigError(f"unknown option {key!r} for method {name}; {hint}")
    return spec.config(**options)


def method_section(config: PruneConfig) -> dict[str, Any]:
    """The `method:` section of config.yaml for `config`: {"name": method, **options}."""
    return {"name": spec_for(config).name, **config.to_dict()}
