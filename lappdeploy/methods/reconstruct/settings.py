"""What a reconstruction is asked to do (the --reconstruct, --calib-* and --ldrf-energy options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lappdeploy.methods.options import RECONSTRUCT_MODES as MODES

__all__ = ["JOINT_MODES", "MODES", "ReconstructionSettings"]

# the modes that refit each layer jointly with the kept filters of the conv producing its input (joint.py)
JOINT_MODES = ("ldrf-joint", "ls-joint")


@dataclass(frozen=True)
class ReconstructionSettings:
    mode: str = "ldrf"  # one of MODES ("none" refits nothing)
    positions: int = 10  # spatial positions sampled per calibration image and layer
    ridge: float = 1e-4  # ridge strength, relative to the mean diagonal of each layer's Gram matrix
    energy: float = 0.9  # ldrf: share of the spectral energy of a layer's weight its embedding keeps
    seed: int = 0  # seeds which positions are sampled
    batch_size: int = 32  # calibration images per forward pass: bounds the activations held at once
    relu: bool = False  # ls, ldrf-patch: fit the output after the BatchNorm and ReLU that follow a layer
    # bytes of the pruned network's activations kept at the cut for all calibration images (passes.py); 0: every
    # pass runs from the input. 2 GiB: ResNet-50 at 224 px with 512 images caches from its first bottleneck's end
    cache_bytes: int = 2 * 2**30

    @classmethod
    def from_config(cls, config: Any) -> ReconstructionSettings:
        """The settings of a PruneConfig."""
        return cls(
            mode=config.reconstruct,
            positions=config.calib_positions,
            ridge=config.reconstruct_ridge,
            energy=config.ldrf_energy,
            seed=config.calib_seed,
            relu=config.reconstruct_relu,
        )
