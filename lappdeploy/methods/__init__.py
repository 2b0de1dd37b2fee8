"""Pruning methods as typed plug-ins: each turns a model (and its training run) into a ChannelPlan that is
applied mid-training; everything downstream (surgery, export, bench) is shared.

    config = LappConfig(target_macs=0.5, prune_epochs=3)       # the config's type selects the method
    hook = spec_for(config).prepare(model, example_inputs, config)
    Trainer(model, ..., hooks=[hook]).fit(); result = hook.result()

Built in: `lapp` (docs/lapp.md), `uniform` and `global` (docs/baselines.md), `laasp` (docs/laasp.md),
`pcp` (docs/pcp.md) and `ldrf` (docs/ldrf.md). A new method is one package registered with
`register_method(name, ConfigClass, handler="module:function", summary=...)` and declared in the
`lappdeploy.methods` entry-point group, where the built-in ones are declared too (README, "Adding a
pruning method"). Importing this package does not import torch.
"""

from __future__ import annotations

from lappdeploy.methods import baselines, laasp, lapp, ldrf, pcp
from lappdeploy.methods.base import (
    DEFAULT_METHOD,
    ENTRY_POINT_GROUP,
    METHODS,
    AttemptConfig,
    MethodSpec,
    PruneConfig,
    PruningHook,
    method_config,
    method_section,
    option_owners,
    register_method,
    spec_for,
)
from lappdeploy.methods.baselines import GlobalConfig, UniformConfig
from lappdeploy.methods.laasp import LaaspConfig
from lappdeploy.methods.lapp import LappConfig
from lappdeploy.methods.ldrf import LdrfConfig
from lappdeploy.methods.pcp import PcpConfig
from lappdeploy.optional import lazy_exports

__all__ = [
    "DEFAULT_METHOD",
    "ENTRY_POINT_GROUP",
    "METHODS",
    "AttemptConfig",
    "GlobalConfig",
    "LaaspConfig",
    "LappConfig",
    "LdrfConfig",
    "MethodSpec",
    "PcpConfig",
    "PruneConfig",
    "PruneResult",
    "PruningHook",
    "UniformConfig",
    "baselines",
    "laasp",
    "lapp",
    "ldrf",
    "method_config",
    "method_section",
    "option_owners",
    "pcp",
    "register_method",
    "run_compress",
    "spec_for",
]

_LAZY = {"PruneResult": "lappdeploy.methods.common", "run_compress": "lappdeploy.methods.compress"}


__getattr__ = lazy_exports(globals(), __name__, _LAZY)
