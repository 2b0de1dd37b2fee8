"""Option groups a method's config is composed of, importable without torch.

Every method has the core options (`base.PruneConfig`) and the budget group; a method declares the other
groups it supports by inheriting them:

    @dataclass(frozen=True)
    class UniformConfig(CriterionOptions, ReconstructionOptions, PruneConfig): ...

The CLI lists each group's options in a --help section of its own (`OptionGroup.title`), and an option of a
group the chosen method does not declare is a one-line error naming the methods that have it. Each group
checks its own values (`check_options`), what it needs of the training run (`check_against`) and the
held-out images it reads (`holdout_needed`); the three are cooperative, so a config runs every group's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from lappdeploy.config import at_least, field_default, in_range, option
from lappdeploy.errors import ConfigError

if TYPE_CHECKING:
    from lappdeploy.config import TrainConfig

__all__ = [
    "BUDGET_FLAGS",
    "DIAGNOSTIC_IMAGES",
    "RECONSTRUCT_MODES",
    "ROUND_TO_AUTO",
    "BudgetOptions",
    "CriterionOptions",
    "OptionGroup",
    "ReconstructionOptions",
    "group_defaults",
    "group_fields",
    "option_groups",
]

# --round-to auto (0 in a config): per group, the multiple the latency table's width-step probes show
ROUND_TO_AUTO = 0
# What to refit after channels are removed (docs/ldrf.md#reconstruction): nothing, least squares of each
# affected layer's output (ls; ls-joint: with the producer's kept filters), of its input-side SVD embedding
# (ldrf: the projection; ldrf-joint: with the producer's kept filters), or of its output-side embedding (ldrf-patch)
RECONSTRUCT_MODES = ("none", "ls", "ldrf", "ldrf-patch", "ldrf-joint", "ls-joint")
DIAGNOSTIC_IMAGES = 256  # held-out images beyond the calibration ones, for the reconstruction's output errors
# the options that set a budget other than --target-macs, and what each budgets (`budgets.resolve_budget`)
BUDGET_FLAGS = {"target_params": "params", "target_latency": "latency", "target_latency_ms": "latency"}


class OptionGroup:
    """The cooperative checks of an option group; a group's dataclass fields are its options."""

    title: ClassVar[str] = ""  # its --help section; empty: the core options

    def check_options(self) -> None:
        """Raise ConfigError for a value (or combination) of this group's options that cannot work."""

    def check_against(self, train: TrainConfig) -> None:
        """Raise ConfigError for combinations with the training config that cannot work."""

    def holdout_needed(self) -> int:
        """Held-out training images the group's options read (the run's --holdout when it gives none)."""
        return 0


def option_groups(config_class: type) -> list[type[OptionGroup]]:
    """The titled option groups a method's config class declares, in its MRO order."""
    return [c for c in config_class.__mro__ if issubclass(c, OptionGroup) and vars(c).get("title")]


def group_defaults(group: type) -> dict[str, Any]:
    """The defaults of the options `group` itself declares, as config.yaml writes them (tuples as lists)."""
    by_name = {f.name: field_default(f) for f in fields(group)}
    return {name: list(by_name[name]) if isinstance(by_name[name], tuple) else by_name[name]
            for name in group_fields(group)}  # fmt: skip


def group_fields(group: type) -> list[str]:
    """The options a config or group class itself declares (not those of the classes it builds on)."""
    return [f.name for f in fields(group) if f.name in vars(group).get("__annotations__", {})]


@dataclass(frozen=True)
class BudgetOptions(OptionGroup):
    """What the method prunes toward: MACs (default), parameters or measured latency; every method has them."""

    title: ClassVar[str] = "Budget (every method; one of --target-macs, --target-params, --target-latency[-ms])"

    target_macs: float = option(0.5, "Fraction of the dense deploy MACs to keep, in (0, 1].")
    target_params: float = option(
        0.0, "Budget parameters instead: the fraction, in (0, 1], of the dense deploy model's to keep; 0: not used."
    )
    target_latency: float = option(
        0.0,
        "Budget measured latency instead: the fraction, in (0, 1), of the dense model's latency on the "
        "--latency-table's runtime and device (docs/latency.md); 0: not used.",
    )
    target_latency_ms: float = option(
        0.0, "Budget latency in ms per batch (the table's batch size) on the --latency-table's runtime; 0: not used."
    )
    latency_table: str = option(
        "",
        "Latency table (JSON, from `lappdeploy profile`) for a latency budget; empty: profile this model on ONNX "
        "Runtime CPU (batch 8), cached.",
    )
    force_table: bool = option(False, "Use a --latency-table measured on another device or runtime.")
    measured_landing: bool = option(
        False,
        "With a latency target and a table measured on this machine: time the landed plan's deploy model "
        "(interleaved with the dense one) and land again on a corrected limit until it measures within 3% of "
        "the target (at most 4 timings, a few seconds each). Off by default: on ResNet-20 it did not land "
        "closer than the table's prediction; for tables that mis-predict (docs/latency.md#the-measured-landing).",
    )
    round_to: int = option(
        8,
        "Round every kept width to a multiple of K (Tensor Cores want 8 for FP16); 1 disables; auto (0 in a "
        "config; with a latency budget): per group, the multiple its latency steps at on the --latency-table.",
        cli_type="round_to",
    )

    def budget_kind(self) -> str:
        """macs, params or latency: which target the options set (the one given besides --target-macs)."""
        given = {BUDGET_FLAGS[name] for name in BUDGET_FLAGS if getattr(self, name) > 0}
        return given.pop() if len(given) == 1 else "macs"

    def check_options(self) -> None:
        super().check_options()
        in_range(self, "target_macs", 0.0, 1.0, lo_open=True)
        in_range(self, "target_params", 0.0, 1.0)
        if not 0 <= self.target_latency < 1:
            raise ConfigError(
                f"--target-latency {self.target_latency} must be in (0, 1): a fraction of the dense model's latency"
            )
        if self.target_latency_ms < 0:
            raise ConfigError(f"--target-latency-ms must be > 0 (got {self.target_latency_ms})")
        given = [name for name in BUDGET_FLAGS if getattr(self, name) > 0]
        if len(given) > 1:
            flags = " and ".join("--" + name.replace("_", "-") for name in given)
            raise ConfigError(f"{flags} set two budgets: give one target (besides the default --target-macs)")
        if self.round_to < ROUND_TO_AUTO:
            raise ConfigError(f"--round-to must be a multiple >= 1 or auto (got {self.round_to})")
        self._check_latency_options()

    def _check_latency_options(self) -> None:
        latency = self.budget_kind() == "latency"
        if self.round_to == ROUND_TO_AUTO and not latency:
            raise ConfigError(
                "--round-to auto reads the width steps of a latency table: it needs --target-latency or "
                "--target-latency-ms (or give --round-to K)"
            )
        if (self.latency_table or self.force_table or self.measured_landing) and not latency:
            raise ConfigError(
                "--latency-table / --force-table / --measured-landing need --target-latency or --target-latency-ms"
            )


@dataclass(frozen=True)
class CriterionOptions(OptionGroup):
    """The channel criterion of the methods that rank channels by one (`lappdeploy list criteria`)."""

    title: ClassVar[str] = "Criterion"

    criterion: str = option("l2", "The criterion that ranks channels (`lappdeploy list criteria`).")


@dataclass(frozen=True)
class ReconstructionOptions(OptionGroup):
    """Refitting the layers that read removed channels (docs/ldrf.md#reconstruction), for the methods that
    remove channels from a network that computed with them (not LAPP, which trains them masked)."""

    title: ClassVar[str] = "Reconstruction after removal"

    reconstruct: str = option(
        "none",
        "After channels are removed, refit the layers that read them on held-out images: ls (least squares of "
        "each layer's output), ldrf (of its input's SVD embedding), ldrf-patch (of its output's), ldrf-joint "
        "(ldrf with the producing layer's kept filters), ls-joint (ls with them); docs/ldrf.md#reconstruction "
        "(default ldrf-joint for ldrf).",
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

    @property
    def refits(self) -> bool:
        """Whether removals are followed by a refit (--reconstruct other than none)."""
        return self.reconstruct != "none"

    @property
    def diagnoses_removal(self) -> bool:
        """Whether removals are measured against the original network on held-out images (output errors)."""
        return self.refits or self.reconstruct_diagnostics

    def check_options(self) -> None:
        super().check_options()
        at_least(self, "calib_images", 1)
        at_least(self, "calib_positions", 1)
        in_range(self, "ldrf_energy", 0.0, 1.0, lo_open=True)
        if not self.reconstruct_ridge >= 0:
            raise ConfigError(f"reconstruct_ridge must be >= 0 (got {self.reconstruct_ridge})")
        if self.reconstruct_relu and self.reconstruct not in ("ls", "ldrf-patch"):
            raise ConfigError("--reconstruct-relu refits ls or ldrf-patch fits; give --reconstruct ls or ldrf-patch")

    def check_against(self, train: TrainConfig) -> None:
        super().check_against(train)
        if self.refits and (train.holdout or 0) < self.calib_images:
            raise ConfigError(
                f"--calib-images {self.calib_images} is more than the {train.holdout or 0} held-out images "
                f"(--holdout): calibration reads held-out training images only, never the test split; raise "
                f"--holdout to {self.calib_images} or lower --calib-images"
            )

    def holdout_needed(self) -> int:
        calibration = self.calib_images if self.refits else 0
        measured = DIAGNOSTIC_IMAGES if self.refits or self.reconstruct_diagnostics else 0
        return max(super().holdout_needed(), calibration + measured)
