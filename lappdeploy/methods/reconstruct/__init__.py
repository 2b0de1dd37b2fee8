"""Reconstruction after channel removal (docs/ldrf.md#reconstruction): the layers that read removed channels
are refitted in closed form so that, from the surviving channels, they reproduce what they computed in the
network before removal.

    record = reconstruct_(teacher, model, groups, plan, images, ReconstructionSettings(mode="ldrf"))

`teacher` is a frozen copy of the network before removal, `groups` its analysis (the numbering of `plan`),
`model` the network after `remove_channels_(model, plan, ...)`, `images` calibration images (held-out
training images, never the test split). Two objectives:

- `ls`: the layer's output before its BatchNorm, from k x k patches of its kept inputs (the least-squares
  reconstruction of CP and ThiNet);
- `ldrf`: the layer's embedding. A cross-channel SVD writes the layer as a 1x1 projection of its input
  channels onto the directions holding `energy` of its spectrum, followed by the rest of the layer; the
  projection of the kept channels is refitted, pixel by pixel, to reproduce the original embedding, and the
  change is recomposed into the one layer.

Either way the result is an ordinary layer of the pruned width (no layer is added), solved front to back,
each through the already refitted upstream network. A layer whose removed inputs also feed other layers (a
residual stream) is left as plain removal (docs/ldrf.md#residual-streams).
"""

from lappdeploy.methods.reconstruct.calibration import sample_rows
from lappdeploy.methods.reconstruct.layers import (
    Consumer,
    check_calibration,
    group_readers,
    plan_consumers,
    valid_capacity,
)
from lappdeploy.methods.reconstruct.linalg import Embedding, embed, energy_rank, recompose, ridge_solve
from lappdeploy.methods.reconstruct.run import ReconstructionLog, ReconstructionRecord, ResourceMeter, reconstruct_
from lappdeploy.methods.reconstruct.settings import MODES, ReconstructionSettings

__all__ = [
    "MODES",
    "Consumer",
    "Embedding",
    "ReconstructionLog",
    "ReconstructionRecord",
    "ReconstructionSettings",
    "ResourceMeter",
    "check_calibration",
    "embed",
    "energy_rank",
    "group_readers",
    "plan_consumers",
    "recompose",
    "reconstruct_",
    "ridge_solve",
    "sample_rows",
    "valid_capacity",
]
