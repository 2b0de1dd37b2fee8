"""Latency as a pruning budget (docs/latency.md): per-layer latency tables measured on the target runtime
(`profile_model`, `lappdeploy profile`), and a differentiable model of a masked network's latency built
from them (`LatencyModel`), which LAPP budgets with `--target-latency`.

`LatencyTable` and its checks import no torch; the profiler and the model load on first use.
"""

from __future__ import annotations

from lappdeploy.latency.table import (
    LatencyTable,
    LatencyTableError,
    LayerTable,
    check_fingerprint,
    device_fingerprint,
)
from lappdeploy.optional import lazy_exports

__all__ = [
    "LatencyModel",
    "LatencyTable",
    "LatencyTableError",
    "LayerTable",
    "check_fingerprint",
    "device_fingerprint",
    "interpolate",
    "measure_model_ms",
    "profile_model",
    "synthetic_table",
    "width_grid",
]

_LAZY = {
    "LatencyModel": "lappdeploy.latency.model",
    "interpolate": "lappdeploy.latency.model",
    "measure_model_ms": "lappdeploy.latency.profile",
    "profile_model": "lappdeploy.latency.profile",
    "width_grid": "lappdeploy.latency.profile",
    "synthetic_table": "lappdeploy.latency.synthetic",
}

__getattr__ = lazy_exports(globals(), __name__, _LAZY)
