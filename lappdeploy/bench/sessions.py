"""Timing sessions of the runtimes that run a model here: torch (eager or compiled), ort (ONNX Runtime),
trt (a TensorRT engine); `lappdeploy.bench.runtimes` says which one a `--runtime` opens.

Each is a `Session` of the timing protocol (`lappdeploy.bench.protocol`): inputs are created once per
batch size, on the device the model runs on, so the timed calls contain the inference only. GPU
sessions time with CUDA events on a non-default stream and report the host's view separately. The
fourth runtime, trtexec, times nothing here: `lappdeploy.bench.trtexec_results` reads what trtexec
measured on the target device.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lappdeploy.errors import BenchError
from lappdeploy.export.tensorrt import import_tensorrt, tensorrt_logger
from lappdeploy.optional import require

__all__ = ["OrtSession", "TensorRTSession", "TorchSession", "check_ort_provider", "ort_provider_name"]

log = logging.getLogger(__name__)


class TorchSession:
    """PyTorch eager (or torch.compile'd) inference under `inference_mode`."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.eval().to(self.device, self.dtype, memory_format=self.memory_format)
        self.model = torch.compile(model) if compile else model
        self.provider = f"torch-{'compile' if compile else 'eager'}{'-channels_last' if channels_last else ''}"
        self.input_shape = tuple(input_shape)
        self.generator = torch.Generator().manual_seed(seed)
        self.gpu = self.device.type == "cuda"
        self.timing = "cuda-events" if self.gpu else "host-clock"
        self.stream = torch.cuda.Stream(self.device) if self.gpu else None
        self.x: torch.Tensor | None = None

    def set_batch(self, batch: int) -> None:
        x = torch.randn((batch, *self.input_shape), generator=self.generator)
        self.x = x.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
        if self.gpu:
            torch.cuda.synchronize(self.device)

    def infer(self) -> tuple[float, float]:
        with torch.inference_mode():
            if not self.gpu:
                start = time.perf_counter()
                self.model(self.x)
                ms = (time.perf_counter() - start) * 1e3
                return ms, ms
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start = time.perf_counter()
            with torch.cuda.stream(self.stream):
                begin.record(self.stream)
                self.model(self.x)
                end.record(self.stream)
            end.synchronize()
            return begin.elapsed_time(end), (time.perf_counter() - start) * 1e3

    def run_back_to_back(self, calls: int) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            if self.gpu:
                with torch.cuda.stream(self.stream):
                    for _ in range(calls):
                        self.model(self.x)
                self.stream.synchronize()
            else:
                for _ in range(calls):
                    self.model(self.x)
            return time.perf_counter() - start


_ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def ort_provider_name(provider: str) -> str:
    return _ORT_PROVIDERS[provider]


def check_ort_provider(provider: str):
    """onnxruntime, after checking it has `provider` (cpu, cuda, tensorrt): without it, ONNX Runtime would
    quietly run the model on the CPU."""
    ort = require("onnxruntime", purpose="timing with ONNX Runtime (--runtime ort)")
    name = ort_provider_name(provider)
    available = ort.get_available_providers()
    if name not in available:
        raise BenchError(
            f"ONNX Runtime {ort.__version__} here has no {name} (it has {', '.join(available)}), so it would "
            "silently run on the CPU; install onnxruntime-gpu built for this CUDA (never together with "
            "onnxruntime), or time with --device cpu"
        )
    return ort


class OrtSession:
    """ONNX Runtime on one execution provider, refusing a silent fall-back to the CPU.

    CPU: an explicit intra-op thread count (recorded). CUDA / TensorRT: the input lives on the GPU and
    the output is bound there (I/O binding), so no host<->device copy is timed; ONNX Runtime's run is
    synchronous, so latency is the host clock around it."""

    def __init__(self, onnx_path: str | os.PathLike[str], *, provider: str = "cpu", threads: int, seed: int = 0):
        ort = check_ort_provider(provider)
        self.ort = ort
        name = ort_provider_name(provider)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if provider != "cpu":
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        try:
            self.session = ort.InferenceSession(os.fspath(onnx_path), options, providers=[name])
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BenchError(f"ONNX Runtime cannot run {onnx_path} on {name}: {first}") from None
        active = self.session.get_providers()
        if not active or active[0] != name:
            raise BenchError(
                f"ONNX Runtime fell back from {name} to {', '.join(active)} (missing CUDA/TensorRT libraries?); "
                "refusing to report CPU numbers as GPU ones: fix the GPU install or time with --device cpu"
            )
        self.provider = name
        self.timing = "host-clock"
        self.gpu = provider != "cpu"
        self.threads = threads
        self.input = self.session.get_inputs()[0]
        self.output_name = self.session.get_outputs()[0].name
        self.rng = np.random.default_rng(seed)
        self.feed: dict[str, Any] = {}
        self.binding = None

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
        else:
            self.feed = {self.input.name: x}

    def _run(self) -> None:
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)
        else:
            self.session.run([self.output_name], self.feed)

    def infer(self) -> tuple[float, float]:
        start = time.perf_counter()
        self._run()
        ms = (time.perf_counter() - start) * 1e3
        return ms, ms

    def run_back_to_back(self, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            self._run()
        return time.perf_counter() - start


class TensorRTSession:
    """A serialized TensorRT engine through the name-based API of 8.6 / 10 / 11 (set_input_shape,
    set_tensor_address, execute_async_v3) on a non-default CUDA stream; latency from CUDA events."""

    def __init__(self, engine_path: str | os.PathLike[str], *, seed: int = 0, trt=None) -> None:
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise BenchError(f"no TensorRT engine at {engine_path}; build it with `lappdeploy export RUN --trt`")
        self.trt = trt or import_tensorrt()
        if not torch.cuda.is_available():
            raise BenchError("--runtime trt needs a CUDA GPU, and none is visible here")
        self._logger = tensorrt_logger(self.trt)
        self.engine = self.trt.Runtime(self._logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BenchError(
                f"{engine_path} does not load with TensorRT {self.trt.__version__} on this GPU (engines are "
                "specific to the GPU model and TensorRT version): rebuild it here with `lappdeploy export --trt`"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BenchError(f"{engine_path} has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.profile = self.engine.get_tensor_profile_shape(self.input_name, 0)  # (min, opt, max) shapes
        self.provider = f"tensorrt-{self.trt.__version__}"
        self.timing = "cuda-events"
        self.stream = torch.cuda.Stream()
        self.generator = torch.Generator().manual_seed(seed)

    def set_batch(self, batch: int) -> None:
        low, high = int(self.profile[0][0]), int(self.profile[2][0])
        if not low <= batch <= high:
            raise BenchError(
                f"batch {batch} is outside the engine's optimization profile {low}..{high}; rebuild with "
                f"`lappdeploy export --trt --batch {min(low, batch)},{max(high, batch)}`"
            )
        shape = (batch, *(int(d) for d in self.profile[1][1:]))
        self.x = torch.randn(shape, generator=self.generator).cuda()
        self.context.set_input_shape(self.input_name, shape)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self.y = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, self.x.data_ptr())
        self.context.set_tensor_address(self.output_name, self.y.data_ptr())
        torch.cuda.synchronize()

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BenchError("TensorRT failed to enqueue the engine (see the TensorRT log above)")

    def infer(self) -> tuple[float, float]:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start = time.perf_counter()
        begin.record(self.stream)
        self._enqueue()
        end.record(self.stream)
        end.synchronize()
        return begin.elapsed_time(end), (time.perf_counter() - start) * 1e3

    def run_back_to_back(self, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            self._enqueue()
        self.stream.synchronize()
        return time.perf_counter() - start
