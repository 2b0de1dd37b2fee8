"""ONNX Runtime as a timing session (`--runtime ort`), on the CPU or on a GPU, never CPU numbers labelled GPU.

GPU providers are registered as ONNX Runtime wants them: [TensorRT, CUDA] or [CUDA], without
`session.disable_cpu_ep_fallback` (the CUDA provider deliberately runs shape subgraphs such as
Shape->Gather->Concat on the CPU, and that option refuses any such session). What matters is checked
instead: a profiled run must show every Conv/Gemm/MatMul on a GPU provider, else BenchError.

GPU timing follows the other GPU runtimes: inputs and outputs bound on the device (I/O binding), the
CUDA and TensorRT providers running on our own non-default stream (`user_compute_stream`), latency from
CUDA events recorded on that stream around each run, the host's view separately; throughput runs enqueue
without ONNX Runtime's per-run synchronisation; TF32 per `--tf32` (the TensorRT provider through
NVIDIA_TF32_OVERRIDE, having no option of its own); cuDNN's exhaustive algorithm search as
`cudnn.benchmark` does for torch.
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lappdeploy.bench.cuda_timing import back_to_back, event_timed
from lappdeploy.errors import BenchError, first_line
from lappdeploy.optional import require

__all__ = [
    "GPU_PROVIDERS",
    "OrtSession",
    "check_gpu_placement",
    "check_ort_provider",
    "kernel_ms_per_run",
    "ort_provider_name",
]

_ORT_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],  # TensorRT, CUDA for what it rejects
}
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})
_WEIGHTED_OPS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose")


def ort_provider_name(provider: str) -> str:
    return _ORT_PROVIDERS[provider][0]


def check_ort_provider(provider: str):
    """onnxruntime, after checking it has `provider` (cpu, cuda, tensorrt): without it, ONNX Runtime would
    quietly run the model on the CPU."""
    ort = require("onnxruntime", purpose="timing with ONNX Runtime (--runtime ort)")
    available = ort.get_available_providers()
    missing = [name for name in _ORT_PROVIDERS[provider] if name not in available]
    if missing:
        raise BenchError(
            f"ONNX Runtime {ort.__version__} here has no {', '.join(missing)} (it has {', '.join(available)}), so it "
            "would silently run on the CPU; install lappdeploy[ort-gpu] (onnxruntime-gpu built for this CUDA, never "
            "together with onnxruntime), or time with --device cpu"
        )
    return ort


def check_gpu_placement(profile_path: str | os.PathLike[str], what: str) -> dict[str, int]:
    """Node counts per provider of the weighted ops (Conv, Gemm, MatMul) in an ONNX Runtime profile (the
    JSON of `SessionOptions.enable_profiling`); raises BenchError when one ran on the CPU."""
    events = json.loads(Path(profile_path).read_text())
    placed: dict[str, set[str]] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and args.get("op_name") in _WEIGHTED_OPS and "provider" in args:
            placed.setdefault(args["provider"], set()).add(event.get("name", ""))
    on_cpu = sorted(placed.keys() - GPU_PROVIDERS)
    if on_cpu:
        count = sum(len(placed[p]) for p in on_cpu)
        raise BenchError(
            f"ONNX Runtime ran {count} Conv/Gemm/MatMul node(s) of {what} on {', '.join(on_cpu)}, not on the GPU: "
            "refusing to report CPU numbers as GPU ones (check the CUDA/cuDNN libraries onnxruntime-gpu needs)"
        )
    return {provider: len(nodes) for provider, nodes in placed.items()}


LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput"})  # NCHW <-> blocked-layout conversions of the CPU provider


def kernel_ms_per_run(profile_path: str | os.PathLike[str]) -> list[float]:
    """Per run of an ONNX Runtime profile (the JSON of `SessionOptions.enable_profiling`), in run order, the
    summed kernel time (ms) of its nodes except layout conversions (`LAYOUT_OPS`): a graph's own work without
    the session's per-call overhead and the conversions at its edges."""
    events = json.loads(Path(profile_path).read_text())
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    starts = [start for start, _ in runs]
    totals = [0.0] * len(runs)
    for event in events:
        op = (event.get("args") or {}).get("op_name")
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or op in LAYOUT_OPS:
            continue
        index = bisect.bisect_right(starts, event["ts"]) - 1
        if index >= 0 and event["ts"] <= runs[index][1]:
            totals[index] += event["dur"] / 1e3  # the profile's times are in microseconds
    return totals


def _remove(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _provider_options(provider: str, *, tf32: bool, stream: torch.cuda.Stream | None) -> list[Any]:
    """Provider entries for InferenceSession: names, with options for the CUDA provider."""
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    cuda = {
        "device_id": "0",
        "use_tf32": "1" if tf32 else "0",  # ORT's CUDA provider uses TF32 by default; fp32 means fp32
        "cudnn_conv_algo_search": "EXHAUSTIVE",  # what cudnn.benchmark is for torch
        "has_user_compute_stream": "1",
        "user_compute_stream": str(stream.cuda_stream),  # our stream: CUDA events bracket ORT's kernels
    }
    entries: list[Any] = [("CUDAExecutionProvider", cuda)]
    if provider == "tensorrt":
        on_our_stream = {key: cuda[key] for key in ("device_id", "has_user_compute_stream", "user_compute_stream")}
        entries.insert(0, ("TensorrtExecutionProvider", on_our_stream))
    return entries


def _tensorrt_fp32_without_tf32(provider: str, tf32: bool) -> None:
    """ONNX Runtime's TensorRT provider has no TF32 option, and TensorRT's builder allows TF32 by default;
    NVIDIA_TF32_OVERRIDE=0 makes TensorRT (and cuBLAS / cuDNN) refuse it. Set before the session builds its
    engines; in a bench process every model is timed with the same rule."""
    if provider == "tensorrt" and not tf32:
        os.environ["NVIDIA_TF32_OVERRIDE"] = "0"


class OrtSession:
    """ONNX Runtime on one execution provider; see the module docstring for the GPU rules."""

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        *,
        provider: str = "cpu",
        threads: int,
        seed: int = 0,
        tf32=False,
        kernel_profile: bool = False,
    ):
        """`kernel_profile` (CPU only) records ONNX Runtime's profile of every run, read by `kernel_ms`."""
        if kernel_profile and provider != "cpu":
            raise BenchError("kernel profiling times CPU kernels only: a GPU provider's profile times kernel launches")
        ort = check_ort_provider(provider)
        self.ort, self.gpu = ort, provider != "cpu"
        self.stream = torch.cuda.Stream() if self.gpu else None
        self.options = _provider_options(provider, tf32=tf32, stream=self.stream)
        _tensorrt_fp32_without_tf32(provider, tf32)
        prefix, self._remove_profile = "", None
        if kernel_profile:  # the folder goes after `kernel_ms`, or with the session if dropped before (an error)
            folder = tempfile.mkdtemp(prefix="lappdeploy-ort-kernels-")
            prefix, self._remove_profile = os.path.join(folder, "profile"), weakref.finalize(self, _remove, folder)
        self.session = self._open(onnx_path, threads, profile=kernel_profile, prefix=prefix)
        name = ort_provider_name(provider)
        active = self.session.get_providers()
        if not active or active[0] != name:
            raise BenchError(
                f"ONNX Runtime fell back from {name} to {', '.join(active)} (missing CUDA/TensorRT libraries?); "
                "refusing to report CPU numbers as GPU ones: fix the GPU install or time with --device cpu"
            )
        self.provider, self.threads, self.tf32 = name, threads, bool(tf32) if self.gpu else None
        self.timing = "cuda-events" if self.gpu else "host-clock"
        self.input = self.session.get_inputs()[0]
        self.output_name = self.session.get_outputs()[0].name
        self.rng = np.random.default_rng(seed)
        self.feed: dict[str, Any] = {}
        self.binding = None
        self.placement = self._check_placement(onnx_path, threads) if self.gpu else None

    def _open(self, onnx_path, threads: int, *, profile: bool, prefix: str = ""):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = prefix
        try:
            return self.ort.InferenceSession(os.fspath(onnx_path), options, providers=self.options)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            first = first_line(exc)
            raise BenchError(f"ONNX Runtime cannot run {onnx_path} on {self.options}: {first}") from None

    def _check_placement(self, onnx_path, threads: int) -> dict[str, int]:
        """One profiled run in a separate session (profiling would slow the timed one)."""
        with tempfile.TemporaryDirectory(prefix="lappdeploy-ort-profile-") as scratch:
            probe = self._open(onnx_path, threads, profile=True, prefix=os.path.join(scratch, "profile"))
            shape = [1, *(int(d) for d in self.input.shape[1:])]
            dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32
            probe.run(None, {self.input.name: np.zeros(shape, dtype)})
            return check_gpu_placement(probe.end_profiling(), Path(onnx_path).name)

    @property
    def kernel_profiled(self) -> bool:
        """Whether this session records kernel times (opened with `kernel_profile`, not yet read)."""
        return self._remove_profile is not None and self._remove_profile.alive

    def kernel_ms(self) -> list[float]:
        """Per run so far, the kernel time of the graph without its layout conversions (`kernel_ms_per_run`);
        ends the profile (a session opened with `kernel_profile`)."""
        if not self.kernel_profiled:
            raise BenchError("this session was opened without kernel_profile: it has no kernel times")
        try:
            return kernel_ms_per_run(self.session.end_profiling())
        finally:
            self._remove_profile()

    def typical_kernel_ms(self, last: int) -> float:
        """The median kernel time (ms) of the last `last` runs (`kernel_ms`, which this ends)."""
        return float(np.median(self.kernel_ms()[-last:]))

    def set_batch(self, batch: int) -> None:
        dtype = np.float16 if self.input.type == "tensor(float16)" else np.float32
        shape = [batch, *(int(d) for d in self.input.shape[1:])]
        x = self.rng.standard_normal(shape).astype(dtype)
        if self.gpu:
            value = self.ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            self.binding = self.session.io_binding()
            self.binding.bind_ortvalue_input(self.input.name, value)
            self.binding.bind_output(self.output_name, "cuda")
            self._keep_alive = value
            torch.cuda.synchronize()
        else:
            self.feed = {self.input.name: x}

    def _run(self, options=None) -> None:
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding, options)
        else:
            self.session.run([self.output_name], self.feed, options)

    def infer(self) -> tuple[float, float]:
        if not self.gpu:
            start = time.perf_counter()
            self._run()
            ms = (time.perf_counter() - start) * 1e3
            return ms, ms
        return event_timed(self.stream, self._run)  # ORT's run waits for its kernels on self.stream

    def run_back_to_back(self, calls: int) -> float:
        if not self.gpu:
            return back_to_back(None, self._run, calls)
        # ONNX Runtime waits for the GPU at the end of every run by default: for throughput with the pipeline
        # full the runs only enqueue, and back_to_back synchronises the stream once at the end
        options = self.ort.RunOptions()
        options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        return back_to_back(self.stream, lambda: self._run(options), calls)
