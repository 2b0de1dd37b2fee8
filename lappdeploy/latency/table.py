"""Latency tables: the measured latency of every conv and linear layer of one model over a grid of (input
width, output width), on one runtime, device, batch size and thread count (docs/latency.md#tables).

A table is JSON, written atomically. Its `fingerprint` says which machine and runtime measured it; using
a table somewhere else is refused (`check_fingerprint`) unless the caller forces it, because latency on
one CPU or GPU says little about another.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lappdeploy.environment import cpu_name, package_version
from lappdeploy.errors import LappDeployError
from lappdeploy.io import atomic_write_json

__all__ = [
    "TABLE_FORMAT",
    "LatencyTable",
    "LatencyTableError",
    "LayerTable",
    "check_fingerprint",
    "device_fingerprint",
]

TABLE_FORMAT = "lappdeploy.latency_table"
TABLE_VERSION = 2  # 2 added kind_scales
READABLE_VERSIONS = (1, 2)
RUNTIMES = ("ort", "torch", "openvino", "trtexec")


class LatencyTableError(LappDeployError):
    """A latency table is unreadable, belongs to another model or was measured on another device/runtime."""


@dataclass
class LayerTable:
    """One layer's measured latency, ms[i][j] at (in_grid[i], out_grid[j]) kept channels, in ms per batch.

    `tied` layers (depthwise convs) have one width: in_grid is [0] and only out_grid varies."""

    kind: str  # conv, depthwise or linear
    in_grid: list[int]
    out_grid: list[int]
    ms: list[list[float]]
    geometry: dict[str, Any] = field(default_factory=dict)  # channels, kernel, stride, padding, groups, input hw

    @property
    def tied(self) -> bool:
        return self.kind == "depthwise"

    def check(self, name: str) -> None:
        rows, cols = len(self.in_grid), len(self.out_grid)
        if rows == 0 or cols == 0 or len(self.ms) != rows or any(len(row) != cols for row in self.ms):
            raise LatencyTableError(f"layer {name!r}: ms is not a {rows} x {cols} grid")
        for grid in (self.in_grid, self.out_grid):
            if any(b <= a for a, b in itertools.pairwise(grid)):
                raise LatencyTableError(f"layer {name!r}: grid widths must increase ({grid})")
        if any(not (value >= 0) for row in self.ms for value in row):  # also refuses NaN
            raise LatencyTableError(f"layer {name!r}: latencies must be finite and >= 0")


@dataclass
class LatencyTable:
    model: str  # architecture name
    input_shape: list[int]  # per sample (C, H, W)
    batch: int
    threads: int
    runtime: str  # ort, torch or trtexec
    device: str  # cpu or cuda
    fingerprint: dict[str, Any]
    layers: dict[str, LayerTable]
    remainder_ms: float  # ms: predicted = sum over layers of layer_scale(kind) * value + remainder_ms
    dense_ms: float  # measured whole dense model (median, ms per batch)
    scale: float = 1.0  # fitted on whole models (`calibration`): isolated layers carry work a model shares
    kind_scales: dict[str, float] = field(default_factory=dict)  # layer kinds fitted apart (e.g. depthwise)
    calibration: list[dict[str, Any]] = field(default_factory=list)  # per whole model timed: layers_ms, measured_ms
    profile_s: float = 0.0  # wall time of the profiling
    points: int = 0  # most grid points per dimension
    step: int = 0  # grid spacing the narrow layers were measured at (channels)
    measurements: int = 0  # distinct (layer shape, widths) points timed
    provenance: dict[str, Any] = field(default_factory=dict)  # versions, timing settings
    # per probed layer (one per prunable group, `latency.steps`): consecutive output widths, their ms at full
    # input width, and the block size (channels) the latency steps at; read by --round-to auto
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the table") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise LatencyTableError(f"{source} is not a lappdeploy latency table (make one with `lappdeploy profile`)")
        if data.get("version") not in READABLE_VERSIONS:
            raise LatencyTableError(
                f"{source} has table version {data.get('version')}; this lappdeploy reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}: profile again or upgrade lappdeploy"
            )
        try:
            fields = {k: v for k, v in data.items() if k not in ("format", "version")}
            fields["layers"] = {name: LayerTable(**layer) for name, layer in fields["layers"].items()}
            table = cls(**fields)
        except (KeyError, TypeError, AttributeError) as exc:
            raise LatencyTableError(f"{source} is incomplete or malformed ({exc}); profile again") from None
        for name, layer in table.layers.items():
            layer.check(name)
        for name, probe in table.steps.items():
            _check_probe(name, probe, source)
        if not isinstance(table.kind_scales, dict) or any(not (v > 0) for v in table.kind_scales.values()):
            raise LatencyTableError(f"{source}: kind_scales must map layer kinds to positive numbers; profile again")
        if table.runtime not in RUNTIMES or table.batch < 1 or not table.dense_ms > 0:
            raise LatencyTableError(f"{source}: runtime, batch or dense latency out of range; profile again")
        return table

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise LatencyTableError(
                f"latency table {path} does not exist (make one with `lappdeploy profile`)"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LatencyTableError(f"latency table {path} is not readable JSON ({exc}); profile again") from None
        return cls.from_dict(data, source=f"latency table {path}")

    def digest(self) -> str:
        """A short hash of everything the table holds: two tables with one digest predict the same."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def layer_scale(self, kind: str) -> float:
        """The fitted factor on the table values of layers of this kind (conv, depthwise, linear)."""
        return self.kind_scales.get(kind, self.scale)

    def describe(self) -> str:
        precision = self.provenance.get("precision", "fp32")
        where = f"{self.runtime} on {self.fingerprint.get('processor')} ({self.device}), batch {self.batch}"
        return where if precision == "fp32" else f"{where}, {precision}"


def _check_probe(name: str, probe: Any, source: str) -> None:
    try:
        ok = len(probe["widths"]) == len(probe["ms"]) > 1 and int(probe["multiple"]) >= 1
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise LatencyTableError(f"{source}: the width-step probe of layer {name!r} is malformed; profile again")


def device_fingerprint(runtime: str, device: str) -> dict[str, Any]:
    """What a latency table's numbers depend on: the processor (GPU name on CUDA), the logical CPUs, the
    runtime and its version."""
    if device == "cuda":
        import torch  # only where a GPU table is asked for

        processor = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cuda (unavailable)"
    else:
        processor = cpu_name()
    version = {"ort": package_version("onnxruntime") or package_version("onnxruntime-gpu")}.get(runtime)
    if runtime in ("torch", "openvino"):
        version = package_version(runtime)
    return {
        "runtime": runtime,
        "runtime_version": version,
        "device": device,
        "processor": processor,
        "machine": platform.machine(),
        "logical_cpus": os.cpu_count(),
    }


def check_fingerprint(table: LatencyTable, path: str | os.PathLike[str], *, force: bool = False) -> None:
    """Refuse a table measured on another device or runtime (one line naming what differs), unless forced.
    trtexec tables come from the target device (a Jetson): there is nothing here to compare them with."""
    if force or table.runtime == "trtexec":
        return
    here = device_fingerprint(table.runtime, table.device)
    differing = [
        f"{key} {table.fingerprint.get(key)!r} (here: {value!r})"
        for key, value in here.items()
        if table.fingerprint.get(key) != value
    ]
    if differing:
        raise LatencyTableError(
            f"latency table {path} was measured elsewhere: {', '.join(differing)}; profile on this machine "
            "(`lappdeploy profile`) or pass --force-table to use it anyway"
        )
