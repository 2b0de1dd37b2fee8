"""Flat, typed benchmark records and the bench.jsonl file that collects them.

One `BenchRecord` is one (model/plan, runtime, device, precision, batch) measurement with everything a
reader needs to trust or reproduce it: MACs and params next to the latency statistics, the throughput
measured with the pipeline full, energy where the device reports it, and the environment. Formatting
and plots are a separate step (`lappdeploy.report`), as in timm's benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lappdeploy.errors import BenchError
from lappdeploy.io import atomic_write_text
from lappdeploy.rundir import BENCH_FILE
from lappdeploy.surgery.plan import plan_id

__all__ = ["BENCH_FILE", "BenchRecord", "append_records", "plan_id", "read_records"]


@dataclass
class BenchRecord:
    # what was timed
    label: str  # display name: the run directory's name, "<name> (dense)" for its dense twin
    model: str  # architecture
    source: str  # run directory, checkpoint or export directory it came from
    plan_id: str  # "dense", or a short hash of the channel plan (same plan, same id)
    method: str  # "dense", "lapp", "uniform", ...
    is_dense: bool
    input_shape: list[int]  # C, H, W
    macs: int  # conv + linear MACs per image of the deploy model
    params: int
    # how
    runtime: str  # torch | ort | trt | trtexec | openvino
    provider: str  # what actually ran: "CPUExecutionProvider", "torch-eager", "tensorrt-10.3.0" ...
    device: str  # cpu | cuda
    device_name: str
    precision: str
    batch: int
    threads: int | None  # CPU threads (torch / ONNX Runtime intra-op); None on GPU runtimes
    timing: str  # host-clock | cuda-events | trtexec-gpu-compute
    # latency of one call (one batch), ms
    latency_median_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    latency_std_ms: float
    latency_min_ms: float
    samples: int
    measured_s: float  # time spent in the timed calls
    throughput_ips: float  # images per second with the pipeline kept full (not batch / latency)
    host_latency_median_ms: float | None = None  # GPU: enqueue + wait as the host sees it
    warmup_s: float = 0.0
    warmup_calls: int = 0
    tf32: bool | None = None  # GPU fp32 math allowed TF32 (torch, ORT CUDA, the TensorRT engine); None on CPU
    cuda_graph: bool | None = None  # trt / trtexec: inferences launched as a CUDA graph; None elsewhere
    cpu_features: list[str] | None = None  # openvino: the CPU's matrix features (AMX, AVX-512 BF16 / VNNI)
    energy_mj_per_image: float | None = None  # Jetson: tegrastats total power integrated over the run
    power_w: float | None = None
    power_rail: str | None = None
    session: str = ""  # one `lappdeploy bench` call; records of one session were timed interleaved
    order: int = 0  # position of this model in the session's interleaving
    created_at: str = ""
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING} - {"environment"}
        missing = sorted(required - data.keys())
        if missing:
            raise BenchError(f"not a lappdeploy bench record: missing {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})  # newer fields are ignored

    @property
    def key(self) -> tuple:
        """What makes two records comparable (same conditions): runtime, provider, device, precision, batch."""
        return (self.runtime, self.provider, self.device_name, self.precision, self.batch, tuple(self.input_shape))


def read_records(path: str | os.PathLike[str]) -> list[BenchRecord]:
    """The records of a bench.jsonl file, or of BENCH_DIR/bench.jsonl."""
    path = Path(path)
    if path.is_dir():
        path = path / BENCH_FILE
    if not path.is_file():
        raise BenchError(f"{path} does not exist; run `lappdeploy bench RUN_DIR --out DIR` first")
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(BenchRecord.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, BenchError) as exc:
                raise BenchError(f"{path}:{number} is not a bench record ({exc})") from None
    return records


def append_records(path: str | os.PathLike[str], records: list[BenchRecord]) -> None:
    """Add records to a bench.jsonl, atomically (the file is rewritten through a temp file + rename, so a
    crash leaves either the old or the new file, never half a line)."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    new = "".join(json.dumps(r.to_dict(), sort_keys=False) + "\n" for r in records)
    atomic_write_text(path, old + new)
