"""PCP: progressive channel pruning, attempt -> select -> prune (docs/pcp.md).

Every few training steps: tentatively remove `attempt_fraction` of every group's channels with a base
criterion, measure each attempt's accuracy drop on held-out images, remove the channels of the
`groups_per_step` groups that lose the least accuracy per MAC saved, and repeat to the target. Runs from
scratch after `prune_epochs`, or on a trained model (`--init-from`, `--prune-epochs 0`). This module holds
the config and registration and imports no torch; `hook` is the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from lappdeploy.config import at_least, in_range, option
from lappdeploy.methods.base import AttemptConfig, register_method
from lappdeploy.methods.options import CriterionOptions, ReconstructionOptions

__all__ = ["PcpConfig"]


@dataclass(frozen=True)
class PcpConfig(CriterionOptions, ReconstructionOptions, AttemptConfig):
    criterion: str = option("l1", "PCP: the base criterion that picks the channels of each attempt.")
    attempt_fraction: float = option(
        0.1, "PCP: each attempt removes this fraction of a group's current channels (at least --round-to)."
    )
    groups_per_step: int = option(2, "PCP: groups pruned per removal step (those losing least per MAC saved).")

    def check_options(self) -> None:
        super().check_options()
        in_range(self, "attempt_fraction", 0.0, 1.0, lo_open=True)
        at_least(self, "groups_per_step", 1)


register_method(
    "pcp",
    PcpConfig,
    handler="lappdeploy.methods.pcp.hook:prepare_pcp_",
    summary="repeatedly attempt a small cut in every group, prune the K of least held-out accuracy drop per cost",
)
