"""Read what trtexec measured on a target device where only trtexec exists (a Jetson venv without the
TensorRT Python package): `lappdeploy export --trt` wrote trtexec.sh there, running it wrote

    times_<precision>.json   --exportTimes: one entry per inference (ms since the start of the run):
                             startComputeMs/endComputeMs, computeMs (GPU compute), latencyMs (H2D +
                             compute + D2H; equal to computeMs with --noDataTransfers), h2dMs, d2hMs...
    trtexec_<precision>.log  the console log: TensorRT version, device, "Throughput: N qps"

and this module turns them into the same statistics as the in-process runtimes. docs/deployment.md#trtexecsh: compare
pruned and dense engines on GPU Compute Time, so latency is computeMs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lappdeploy.bench.protocol import LatencyStats
from lappdeploy.errors import BenchError
from lappdeploy.export.trt_recipes import trtexec_log_file, trtexec_times_file
from lappdeploy.rundir import EXPORT_FILE

__all__ = ["TrtexecResult", "compute_ms", "read_trtexec"]

_SHAPES = re.compile(r"^--shapes=[^:]+:(\d+)x")
_THROUGHPUT = re.compile(r"Throughput:\s*([0-9.]+)\s*qps")
_VERSION = re.compile(r"TensorRT version:\s*([0-9.]+)")
_DEVICE = re.compile(r"Selected Device:\s*(.+?)\s*$")


@dataclass
class TrtexecResult:
    batch: int
    latency: LatencyStats  # GPU compute time per inference (ms)
    host_latency: LatencyStats | None  # latencyMs: with the transfers when trtexec timed them
    measured_s: float
    throughput_ips: float  # images / s: trtexec's qps x batch (its pipeline is full), else from the trace
    trt_version: str | None
    device_name: str | None
    args: list[str]


def compute_ms(path: str | Path) -> list[float]:
    """GPU compute time (ms) of every inference in a trtexec --exportTimes file."""
    return [float(e["computeMs"]) for e in _entries(Path(path))]


def _entries(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path} is not trtexec --exportTimes JSON ({exc}); re-run trtexec.sh on the target") from None
    if not isinstance(data, list):
        raise BenchError(f"{path} is not trtexec --exportTimes JSON (expected a list of timings)")
    # older trtexec versions start the list with {"count": N}
    entries = [e for e in data if isinstance(e, dict) and "computeMs" in e]
    if len(entries) < 2:
        raise BenchError(f"{path} holds {len(entries)} timed inferences; re-run trtexec.sh with a longer --duration")
    return entries


def read_trtexec(export_dir: str | Path, precision: str) -> TrtexecResult:
    """The timing trtexec wrote into `export_dir` for `precision` (see the module docstring)."""
    export_dir = Path(export_dir)
    times = export_dir / trtexec_times_file(precision)
    if not times.is_file():
        raise BenchError(
            f"no trtexec timing in {export_dir} ({times.name} is missing): run `bash trtexec.sh` there on the "
            f"target device (written by `lappdeploy export --trt --precision {precision}`), then bench that directory"
        )
    args: list[str] = []
    export_json = export_dir / EXPORT_FILE
    if export_json.is_file():
        args = (json.loads(export_json.read_text()).get("tensorrt") or {}).get("trtexec_args") or []
        if isinstance(args, dict):  # --trt-version auto: one command per family, all with the same shapes
            args = next(iter(args.values()), [])
        args = list(args)
    batch = next((int(m.group(1)) for a in args if (m := _SHAPES.match(a))), None)
    if batch is None:
        raise BenchError(f"{export_json} does not say which batch trtexec timed (no --shapes); re-export with --trt")
    entries = _entries(times)
    compute = [float(e["computeMs"]) for e in entries]
    host = [float(e["latencyMs"]) for e in entries if "latencyMs" in e]
    span_ms = float(entries[-1]["endComputeMs"]) - float(entries[0]["startComputeMs"])
    log = export_dir / trtexec_log_file(precision)
    text = log.read_text(errors="replace") if log.is_file() else ""
    qps = _THROUGHPUT.search(text)
    throughput = float(qps.group(1)) * batch if qps else len(entries) * batch / (span_ms / 1e3)
    version = _VERSION.search(text)
    device = next((m.group(1) for line in text.splitlines() if (m := _DEVICE.search(line))), None)
    return TrtexecResult(
        batch=batch,
        latency=LatencyStats.of(compute),
        host_latency=LatencyStats.of(host) if host else None,
        measured_s=sum(compute) / 1e3,
        throughput_ips=throughput,
        trt_version=version.group(1) if version else None,
        device_name=device,
        args=args,
    )
