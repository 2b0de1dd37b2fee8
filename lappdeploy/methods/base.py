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
import logging
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
    option,
)
from lappdeploy.errors import ConfigError
from lappdeploy.hooks import Hook
from lappdeploy.methods.options import ROUND_TO_AUTO, BudgetOptions, group_defaults, option_groups
from lappdeploy.registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_METHOD",
    "ENTRY_POINT_GROUP",
    "METHODS",
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

log = logging.getLogger(__name__)

DEFAULT_METHOD = "lapp"
C = TypeVar("C", bound="PruneConfig")


@dataclass(frozen=True)
class PruneConfig(BudgetOptions):
    """The core options every pruning method has (the schedule, widths, what not to prune) and the budget
    group; a method's config adds its own options and the groups it supports (`methods.options`)."""

    method: ClassVar[str] = ""  # the registered name; set by `register_method`
    # Methods that decide by evaluating candidate prunings need held-out training images (--holdout);
    # this many are held out when the run does not say.
    default_holdout: ClassVar[int] = 0

    prune_epochs: int = option(
        1,
        "Length of the pruning phase in epochs (for one-shot and iterative methods: the dense epochs before "
        "pruning starts; 0 with --init-from prunes the trained model at once; default 0 for ldrf).",
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

    def __post_init__(self) -> None:
        if self.round_to == "auto":  # from YAML or the Python API; the CLI passes ROUND_TO_AUTO
            object.__setattr__(self, "round_to", ROUND_TO_AUTO)
        check_types(self)
        self.check_options()
        check_choices(self)

    @property
    def refits(self) -> bool:
        """Whether removals are followed by a refit (methods with the reconstruction group may say yes)."""
        return False

    @property
    def diagnoses_removal(self) -> bool:
        """Whether removals are measured against the original network on held-out images (output errors)."""
        return False

    def check_options(self) -> None:
        super().check_options()
        at_least(self, "prune_epochs", 0)
        at_least(self, "min_channels", 1)
        at_least(self, "log_every", 1)
        at_least(self, "recalibrate_bn", 0)
        if self.budget_kind() == "latency" and self.bypass == "width":
            raise ConfigError(
                "--bypass width deploys two convs per layer, which latency tables do not time yet: budget "
                "MACs (--target-macs) with --bypass width, or use --bypass none/rep with a latency target"
            )
        if self.refits and self.bypass != "none":
            raise ConfigError(
                f"--reconstruct cannot refit layers trained with --bypass {self.bypass}: every conv has a "
                "parallel bypass reading the same channels; use --bypass none"
            )

    def check_against(self, train: TrainConfig) -> None:
        """Raise ConfigError for combinations with the training config that cannot work."""
        super().check_against(train)
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

    def holdout_needed(self) -> int:
        return max(super().holdout_needed(), self.default_holdout)

    def resolve_train(self, train: TrainConfig) -> TrainConfig:
        """`train` with the held-out images the method reads (`holdout_needed`: its default --holdout; with
        --reconstruct, at least --calib-images plus the images the layers' output errors are measured on)
        where the run gives no --holdout."""
        if train.holdout is not None:
            return train
        return train.replace(holdout=self.holdout_needed())

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

    title: ClassVar[str] = "Attempts on held-out images"
    default_holdout: ClassVar[int] = 5000

    prune_span: float = option(
        1.0,
        "Epochs over which the removal steps are spread (the training between them is the recovery); steps "
        "still needed at its end follow each other at once.",
    )
    decision_images: int = option(
        512, "Held-out images each attempt is evaluated on (the first N of --holdout), kept on the device."
    )

    def check_options(self) -> None:
        super().check_options()
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
# Every method, built in or installed, is declared in this entry-point group: name = the module whose import
# registers it (its config module: no torch). The built-in ones are imported by lappdeploy.methods anyway.
ENTRY_POINT_GROUP = "lappdeploy.methods"


def _load_installed_methods(registry: Registry[MethodSpec]) -> None:
    """Import the method modules installed in ENTRY_POINT_GROUP that are not registered yet. A plug-in that
    fails to import is left out with a warning naming it, so one broken package does not break the CLI."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in registry.names():
            continue
        try:
            entry.load()
        except Exception as error:  # any error of a third-party import: report it and go on
            log.warning("method plug-in %r (%s) failed to import, left out: %s", entry.name, entry.value, error)
            continue
        if entry.name not in registry.names():
            log.warning("method plug-in %r (%s) registered no method of that name", entry.name, entry.value)


METHODS.add_loader(_load_installed_methods)


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


def method_config(section: Mapping[str, Any]) -> PruneConfig:
    """The typed config of a `method:` section ({"name": method, **options}; name defaults to lapp).

    An option that belongs to another method is an error naming both, unless it has its option group's
    default value (config.yaml of 0.2 runs, when LAPP had the reconstruction options too).
    """
    options = {str(k).replace("-", "_"): v for k, v in section.items()}
    name = str(options.pop("name", options.pop("method", DEFAULT_METHOD)))
    spec = METHODS.get(name)
    own = field_names(spec.config)
    for key in [k for k in options if k not in own]:
        owners = option_owners(key)
        if owners and _default_of(owners, key) == options[key]:
            del options[key]  # a config saved before the option moved to other methods (at their default)
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


def _default_of(methods: list[str], name: str) -> Any:
    """The default of option `name` in the option group that declares it (a method may give it another, e.g.
    ldrf's --reconstruct ldrf-joint), else a value no option has."""
    for group in option_groups(METHODS.get(methods[0]).config):
        defaults = group_defaults(group)
        if name in defaults:
            return defaults[name]
    return object()


def method_section(config: PruneConfig) -> dict[str, Any]:
    """The `method:` section of config.yaml for `config`: {"name": method, **options}."""
    return {"name": spec_for(config).name, **config.to_dict()}
