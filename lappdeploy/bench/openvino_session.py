"""OpenVINO on the CPU as a benchmark runtime: an ONNX graph compiled for fp32, bf16 (the inference precision
hint: Intel's AMX tiles or AVX-512 BF16 where the CPU has them) or int8 (the Q/DQ graph `lappdeploy export`
writes, run by OpenVINO's low-precision kernels: VNNI / AMX-INT8 where present).

A precision the CPU cannot run natively is refused, never timed as something else: OpenVINO would run a bf16
hint as f32 on a CPU without bf16 support. The CPU's matrix features are recorded with every record.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lappdeploy.bench.cuda_timing import back_to_back
from lappdeploy.errors import BenchError
from lappdeploy.optional import require

__all__ = ["LAYOUT_NODES", "MATRIX_FEATURES", "OpenVinoSession", "cpu_matrix_features"]

# /proc/cpuinfo flags of the CPU's matrix and dot-product units (what bf16 and int8 inference run on)
MATRIX_FEATURES = ("amx_tile", "amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f")
_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8 comes from the graph's Q/DQ nodes, not a hint
# performance-counter node types that are not the graph's own work: its edges and the conversions between NCHW and
# the blocked layouts the CPU plugin's kernels run in (inside a whole model they happen once, at its edges)
LAYOUT_NODES = frozenset({"Parameter", "Result", "Reorder"})


def cpu_matrix_features(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str]:
    """The MATRIX_FEATURES this CPU has (empty where /proc/cpuinfo is not readable)."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return []
    return [name for name in MATRIX_FEATURES if name in flags]


def _import_openvino():
    return require("openvino", purpose="--runtime openvino")


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO for the CPU at one precision, latency hint, one stream; latency by
    the host clock around a synchronous inference. With `kernel_profile`, OpenVINO's performance counters are on
    and its executed nodes without LAYOUT_NODES are timed (`typical_kernel_ms`). A graph with an int8 input (a
    layer timed as it reads its producer's int8 output) is fed random int8 values."""

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        precision: str = "fp32",
        threads: int | None = None,
        seed: int = 0,
        kernel_profile: bool = False,
    ):
        ov = _import_openvino()
        core = ov.Core()
        capabilities = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        self.cpu_features = cpu_matrix_features()
        if precision == "bf16" and "BF16" not in capabilities:
            raise BenchError(
                f"this CPU has no native bf16 (OpenVINO's CPU capabilities: {', '.join(sorted(capabilities))}; "
                f"matrix features: {', '.join(self.cpu_features) or 'none'}): OpenVINO would run bf16 as fp32; "
                "bench fp32 or int8 here, or bf16 on a CPU with AMX or AVX-512 BF16"
            )
        if precision == "int8" and "INT8" not in capabilities:
            raise BenchError(
                f"this CPU has no int8 kernels in OpenVINO (its CPU capabilities: {', '.join(sorted(capabilities))}): "
                "bench fp32 here"
            )
        config = {"INFERENCE_PRECISION_HINT": _HINT[precision], "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if kernel_profile:
            config["PERF_COUNT"] = "YES"
        self.compiled = core.compile_model(str(onnx_path), "CPU", config)
        effective = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if precision == "bf16" and "bf16" not in effective:
            raise BenchError(f"OpenVINO compiled the model at {effective}, not bf16, on this CPU: refused")
        self.request = self.compiled.create_infer_request()
        self.input_shape = tuple(int(d) for d in self.compiled.input(0).get_partial_shape()[1:].to_shape())
        self.input_dtype = np.dtype(self.compiled.input(0).get_element_type().to_dtype())
        self.provider = f"openvino-{ov.__version__.split('-')[0]}-cpu-{precision}"
        self.timing = "host-clock"
        self.threads = threads
        self.rng = np.random.default_rng(seed)
        self.x: np.ndarray | None = None
        # after the n-th run, the sum over counted nodes of OpenVINO's counter: each node's mean time (whole us)
        # over every run since compilation, which is all OpenVINO keeps (no per-run times, no reset)
        self._counter_means_us: list[int] | None = [0] if kernel_profile else None
        self._executed = ov.ProfilingInfo.Status.EXECUTED

    def set_batch(self, batch: int) -> None:
        shape = (batch, *self.input_shape)
        if self.input_dtype == np.int8:
            self.x = self.rng.integers(-127, 128, size=shape, dtype=np.int8)
        else:
            self.x = self.rng.standard_normal(shape).astype(np.float32)

    def _run(self) -> None:
        self.request.infer({0: self.x})

    def infer(self) -> tuple[float, float]:
        start = time.perf_counter()
        self._run()
        ms = (time.perf_counter() - start) * 1e3
        if self._counter_means_us is not None:
            self._counter_means_us.append(self._counted_mean_us())
        return ms, ms

    @property
    def kernel_profiled(self) -> bool:
        """Whether this session records its nodes' times (opened with `kernel_profile`)."""
        return self._counter_means_us is not None

    def typical_kernel_ms(self, last: int) -> float:
        """The mean time (ms) of the nodes executed except LAYOUT_NODES over the last `last` runs of `infer`. Taken
        from the counters' running means before and after those runs (n runs at mean m_n, n - last at m_(n-last)).
        OpenVINO truncates each run's time to whole microseconds and floors the mean: about 1 us low per node.
        A mean, not a median: a run slowed by other load counts in full."""
        means = self._counter_means_us
        if means is None:
            raise BenchError("this session was opened without kernel_profile: it has no performance counters")
        runs = len(means) - 1
        if not 0 < last <= runs:
            raise BenchError(f"asked for the last {last} runs' kernel time of a session that ran {runs}")
        # a node of about a microsecond can come out a fraction of one below zero by the truncation
        return max(0.0, (runs * means[runs] - (runs - last) * means[runs - last]) / last / 1e3)

    def _counted_mean_us(self) -> int:
        counters = self.request.get_profiling_info()
        return sum(round(c.real_time.total_seconds() * 1e6) for c in counters
                   if c.status == self._executed and c.node_type not in LAYOUT_NODES)  # fmt: skip

    def run_back_to_back(self, calls: int) -> float:
        if self.kernel_profiled:  # runs outside `infer` would count in OpenVINO's means but not in the snapshots
            raise BenchError("a kernel-profiled OpenVINO session is timed by single runs (infer), not back to back")
        return back_to_back(None, self._run, calls)
