"""Timing sessions of the runtimes that run a model here: torch (eager or compiled), ort (ONNX Runtime),
trt (a TensorRT engine); `lappdeploy.bench.runtimes` says which one a `--runtime` opens.

Each is a `Session` of the timing protocol (`lappdeploy.bench.protocol`): inputs are created once per
batch size, on the device the model runs on, so the timed calls contain the inference only. GPU
sessions time with CUDA events on a non-default stream and report the host's view separately; "fp32"
means fp32 on every runtime unless --tf32 (torch: cuDNN and matmul; ORT: its CUDA provider; TensorRT:
at build time), and `--runtime trt` launches as CUDA graphs or not as trtexec.sh does (--cuda-graph). The
fourth runtime, trtexec, times nothing here: `lappdeploy.bench.trtexec_results` reads what trtexec
measured on the target device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import torch
from torch import nn

from lappdeploy.bench.cuda_timing import back_to_back, event_timed
from lappdeploy.bench.ort_session import OrtSession, check_ort_provider, ort_provider_name
from lappdeploy.errors import BenchError, ExportError
from lappdeploy.export.tensorrt import check_engine_io, import_tensorrt, tensorrt_logger

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
        tf32: bool = False,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # process-wide switches: torch's defaults (TF32 convolutions on) would make "fp32" mean TF32
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
            torch.backends.cudnn.benchmark = True  # tuned convolution algorithms, as TensorRT and ORT choose theirs
        self.tf32 = bool(tf32) if self.device.type == "cuda" else None
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

    def _forward(self) -> None:
        with torch.inference_mode(), torch.cuda.stream(self.stream) if self.gpu else contextlib.nullcontext():
            self.model(self.x)

    def infer(self) -> tuple[float, float]:
        if not self.gpu:
            start = time.perf_counter()
            self._forward()
            ms = (time.perf_counter() - start) * 1e3
            return ms, ms
        return event_timed(self.stream, self._forward)

    def run_back_to_back(self, calls: int) -> float:
        return back_to_back(self.stream, self._forward, calls)


class TensorRTSession:
    """A serialized TensorRT engine through the name-based API of 8.5 to 11 (set_input_shape,
    set_tensor_address, execute_async_v3) on a non-default CUDA stream; latency from CUDA events. With
    `cuda_graph`, each batch size's enqueue is captured once and replayed, as trtexec --useCudaGraph does."""

    def __init__(self, engine_path: str | os.PathLike[str], *, seed: int = 0, cuda_graph: bool = True, trt=None):
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
        try:
            check_engine_io(self.trt, self.engine, engine_path.name)
        except ExportError as exc:
            raise BenchError(str(exc)) from None
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = "input", "logits"
        self.profile = self.engine.get_tensor_profile_shape(self.input_name, 0)  # (min, opt, max) shapes
        self.provider = f"tensorrt-{self.trt.__version__}"
        self.timing = "cuda-events"
        self.cuda_graph = bool(cuda_graph)
        self.graph: torch.cuda.CUDAGraph | None = None
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
        if not self.context.set_input_shape(self.input_name, shape):
            raise BenchError(f"TensorRT refused the input shape {shape}")
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self.y = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        for name, tensor in ((self.input_name, self.x), (self.output_name, self.y)):
            if not self.context.set_tensor_address(name, tensor.data_ptr()):
                raise BenchError(f"TensorRT refused the device address of {name!r}")
        torch.cuda.synchronize()
        self.graph = self._capture() if self.cuda_graph else None

    def _capture(self) -> torch.cuda.CUDAGraph:
        """One enqueue outside the capture first: TensorRT defers shape-dependent work to the first one."""
        self._enqueue()
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self._enqueue()
        torch.cuda.synchronize()
        return graph

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BenchError("TensorRT failed to enqueue the engine (see the TensorRT log above)")

    def _launch(self) -> None:
        if self.graph is None:
            self._enqueue()
        else:
            with torch.cuda.stream(self.stream):
                self.graph.replay()

    def infer(self) -> tuple[float, float]:
        return event_timed(self.stream, self._launch)

    def run_back_to_back(self, calls: int) -> float:
        return back_to_back(self.stream, self._launch, calls)
