"""LDRF: layer decomposition-recomposition, a post-training method (docs/ldrf.md).

Prune a trained model (--init-from) once to the MACs target, with uniform widths or widths that respect
each group's valid capacity, and refit every layer that reads removed channels so that, through the
already pruned upstream network, the kept channels reproduce the layer's SVD embedding (--reconstruct
ldrf-joint by default, which also refits the kept filters producing those channels; ldrf, ldrf-patch, ls and
none are there for comparison); --epochs K fine-tunes afterwards, 0 evaluates only. This module
holds the config and registration and imports no torch; `hook` is the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from lappdeploy.config import TrainConfig, option
from lappdeploy.errors import ConfigError
from lappdeploy.methods.base import PruneConfig, register_method
from lappdeploy.methods.options import RECONSTRUCT_MODES, CriterionOptions, ReconstructionOptions

__all__ = ["LdrfConfig"]

WIDTHS = ("uniform", "capacity")


@dataclass(frozen=True)
class LdrfConfig(CriterionOptions, ReconstructionOptions, PruneConfig):
    """LDRF's options; --prune-epochs and --reconstruct default to what the method is (post-training,
    ldrf-joint: the LDRF variant with the best held-out top-1, docs/ldrf.md#measurements)."""

    prune_epochs: int = option(0, "Dense epochs before pruning (ldrf prunes the --init-from model at once by default).")
    reconstruct: str = option(
        "ldrf-joint",
        "After the channels are removed, refit the layers reading them: ldrf-joint (their SVD embedding, "
        "jointly with the kept filters producing their input), ldrf (the embedding alone), ldrf-patch (their "
        "output's embedding), ls (their output), ls-joint (ls jointly with the producing filters) or none; "
        "docs/ldrf.md#reconstruction.",
        choices=RECONSTRUCT_MODES,
    )
    ldrf_widths: str = option(
        "uniform",
        "LDRF: kept widths: uniform (the same fraction in every group) or capacity (no group below its valid "
        "capacity, the SVD rank holding --ldrf-energy of its readers' energy, unless the MACs target forces "
        "it); docs/ldrf.md#widths.",
        choices=WIDTHS,
    )

    def check_against(self, train: TrainConfig) -> None:
        if train.init_from is None:
            raise ConfigError(
                "--method ldrf prunes a trained model: give one with --init-from RUN (a run directory or model.pt)"
            )
        super().check_against(train)


register_method(
    "ldrf",
    LdrfConfig,
    handler="lappdeploy.methods.ldrf.hook:prepare_ldrf_",
    summary="post-training: prune a trained model once, refit layers reading removed channels to their SVD embedding",
)
