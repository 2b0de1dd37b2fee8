"""LAASP: loss-aware automatic selection of structured pruning criteria (docs/laasp.md).

Train from scratch for `prune_epochs`; then, every few training steps, try every group under every
criterion of a pool, removing about `step_macs` of the dense MACs from that one group, and remove the
(group, criterion) pair whose masked model has the lowest held-out loss. This module holds the config and
registration and imports no torch; `hook` is the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from lappdeploy.config import in_range, option
from lappdeploy.errors import ConfigError
from lappdeploy.methods.base import AttemptConfig, register_method
from lappdeploy.methods.options import ReconstructionOptions

__all__ = ["LaaspConfig"]


@dataclass(frozen=True)
class LaaspConfig(ReconstructionOptions, AttemptConfig):
    criteria: tuple[str, ...] = option(
        ("l1", "l2", "fpgm", "cos"),
        "LAASP: the pool of criteria tried at every removal step (`lappdeploy list criteria`).",
        cli_type="str_list",
    )
    step_macs: float = option(
        0.1,
        "LAASP: each removal step cuts about this fraction of the dense MACs (of the dense parameters or latency "
        "under those budgets), in (0, 1].",
    )
    cap: float = option(0.75, "LAASP: the largest fraction of a group's dense channels it may lose, in (0, 1].")

    def check_options(self) -> None:
        super().check_options()
        if not self.criteria:
            raise ConfigError("criteria must name at least one criterion (`lappdeploy list criteria`)")
        in_range(self, "step_macs", 0.0, 1.0, lo_open=True)
        in_range(self, "cap", 0.0, 1.0, lo_open=True)


register_method(
    "laasp",
    LaaspConfig,
    handler="lappdeploy.methods.laasp.hook:prepare_laasp_",
    summary="after dense epochs, repeatedly cut ~step_macs of the cost: the group and criterion of least held-out loss",
)
