"""Real latency of compressed models: runtimes (torch, ONNX Runtime, TensorRT, trtexec results), an
honest timing protocol (warm-up by time, interleaved sessions, percentiles, full-pipeline throughput),
flat records in bench.jsonl, Jetson power. Reports and plots live in `lappdeploy.report`.

Names resolve lazily (PEP 562), so `lappdeploy.bench.jetson` imports without torch (tools/jetson_power.py).
"""

from __future__ import annotations

from lappdeploy.optional import lazy_exports

_LAZY_EXPORTS = {
    "BENCH_FILE": "lappdeploy.bench.records",
    "BenchRecord": "lappdeploy.bench.records",
    "append_records": "lappdeploy.bench.records",
    "plan_id": "lappdeploy.bench.records",
    "read_records": "lappdeploy.bench.records",
    "LatencyStats": "lappdeploy.bench.protocol",
    "Timing": "lappdeploy.bench.protocol",
    "TimingPolicy": "lappdeploy.bench.protocol",
    "measure_batch": "lappdeploy.bench.protocol",
    "bench_runs": "lappdeploy.bench.run",
    "RUNTIMES": "lappdeploy.bench.runtimes",
}

__all__ = sorted(_LAZY_EXPORTS)


__getattr__ = lazy_exports(globals(), __name__, _LAZY_EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
