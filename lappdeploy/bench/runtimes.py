"""The benchmark runtimes, one registry entry each (`lappdeploy list runtimes`): what --device auto picks,
what must hold before anything is timed or written, and how a target is timed: a `Session` opened here
(torch, ort, trt) or results read from the target device (trtexec).

The names are `lappdeploy.config.RUNTIMES`, the choices of --runtime (checked below to be the same);
BenchConfig checks each runtime's options when it is made. Importing this module imports neither
onnxruntime nor tensorrt.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lappdeploy.bench.openvino_session import OpenVinoSession
from lappdeploy.bench.protocol import Session, Timing
from lappdeploy.bench.sessions import OrtSession, TensorRTSession, TorchSession, check_ort_provider, ort_provider_name
from lappdeploy.bench.targets import BenchTarget
from lappdeploy.bench.trtexec_results import read_trtexec
from lappdeploy.config import RUNTIMES as RUNTIME_NAMES
from lappdeploy.config import BenchConfig
from lappdeploy.errors import BenchError
from lappdeploy.export.onnx_export import to_onnx
from lappdeploy.export.precision import to_fp16_onnx
from lappdeploy.export.trt_recipes import FP32_ONNX, QDQ_ONNX, engine_file
from lappdeploy.io import read_json
from lappdeploy.optional import require
from lappdeploy.registry import Registry
from lappdeploy.rundir import EXPORT_FILE

__all__ = [
    "RUNTIMES",
    "OrtSession",
    "RecordedTiming",
    "RuntimeSpec",
    "TensorRTSession",
    "TorchSession",
    "check_ort_provider",
    "ort_provider_name",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecordedTiming:
    """A timing measured on the target device by another program (trtexec), as a bench record needs it."""

    measured: Timing
    provider: str  # what ran the model, e.g. "trtexec-10.3.0"
    timing: str  # how latency was measured (BenchRecord.timing)
    device_name: str
    tf32: bool | None = None
    cuda_graph: bool | None = None


OpenSession = Callable[[BenchTarget, BenchConfig, str, int, Path], Session]  # target, config, device, threads, workdir
ReadResults = Callable[[list[BenchTarget], BenchConfig], list[RecordedTiming]]


def _cuda() -> str:
    return "cuda"


def _no_device_check(config: BenchConfig, device: str) -> None:
    pass


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    description: str
    needs: str  # what must be installed / present
    gpu_only: bool = False
    auto_device: Callable[[], str] = _cuda  # the device of --device auto
    check_device: Callable[[BenchConfig, str], None] = _no_device_check  # BenchError if it cannot run there
    open_session: OpenSession | None = None  # times a target here
    read_results: ReadResults | None = None  # reads timings made on the target device instead


# --------------------------------------------------------------------------------------------------
# torch


def _torch_auto_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_torch_device(config: BenchConfig, device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError(
            "--device cuda asked for, but no CUDA GPU is visible here (torch.cuda.is_available() is False)"
        )


def _open_torch(target: BenchTarget, config: BenchConfig, device: str, threads: int, workdir: Path) -> Session:
    if target.model is None:
        raise BenchError(f"--runtime torch needs the run's checkpoint; {target.source} is an export directory")
    return TorchSession(
        target.model,
        target.input_shape,
        device=device,
        precision=config.precision,
        channels_last=config.channels_last,
        compile=config.compile,
        seed=config.seed,
        tf32=config.tf32,
    )


# --------------------------------------------------------------------------------------------------
# ort


def _ort_provider(config: BenchConfig, device: str) -> str:
    return config.ort_provider or ("cuda" if device == "cuda" else "cpu")


def _ort_auto_device() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    with contextlib.suppress(Exception):
        if "CUDAExecutionProvider" in require("onnxruntime", purpose="--runtime ort").get_available_providers():
            return "cuda"
    return "cpu"


def _check_ort_device(config: BenchConfig, device: str) -> None:
    check_ort_provider(_ort_provider(config, device))


def _onnx_for(target: BenchTarget, precision: str, workdir: Path) -> Path:
    """The ONNX graph ONNX Runtime times: the run's checked export when there is one, else exported here
    (checked and parity-tested the same way) into OUT/onnx/."""
    exported = target.export_dir / FP32_ONNX if target.export_dir else None
    if precision == "int8":
        qdq = target.export_dir / QDQ_ONNX if target.export_dir else None
        if qdq is None or not qdq.is_file():
            raise BenchError(
                f"int8 on ONNX Runtime times the Q/DQ graph of `lappdeploy export {target.source} --trt --precision "
                f"int8` (it writes {QDQ_ONNX} even without TensorRT); none exists yet"
            )
        return qdq
    if exported is None or not exported.is_file():
        if target.model is None:
            raise BenchError(f"{target.source} has no {FP32_ONNX}; export it with `lappdeploy export`")
        workdir.mkdir(parents=True, exist_ok=True)
        exported = workdir / f"{target.slug}.onnx"
        # exported afresh every time (a few seconds): a file left by an earlier bench may be another model
        log.info("exporting %s to %s", target.label, exported)
        example = torch.randn((2, *target.input_shape), generator=torch.Generator().manual_seed(0))
        to_onnx(target.model, example, exported, dynamic_batch=True)
    if precision == "fp16":
        fp16 = workdir / f"{target.slug}_fp16.onnx"
        workdir.mkdir(parents=True, exist_ok=True)
        to_fp16_onnx(exported, fp16)
        return fp16
    return exported


def _open_ort(target: BenchTarget, config: BenchConfig, device: str, threads: int, workdir: Path) -> Session:
    onnx = _onnx_for(target, config.precision, workdir)
    return OrtSession(onnx, provider=_ort_provider(config, device), threads=threads, seed=config.seed, tf32=config.tf32)


# --------------------------------------------------------------------------------------------------
# openvino


def _cpu() -> str:
    return "cpu"


def _open_openvino(target: BenchTarget, config: BenchConfig, device: str, threads: int, workdir: Path) -> Session:
    # bf16 is a compile-time hint on the fp32 graph; int8 is the Q/DQ graph of the export
    onnx = _onnx_for(target, "int8" if config.precision == "int8" else "fp32", workdir)
    return OpenVinoSession(onnx, precision=config.precision, threads=threads, seed=config.seed)


# --------------------------------------------------------------------------------------------------
# trt and trtexec


def _open_trt(target: BenchTarget, config: BenchConfig, device: str, threads: int, workdir: Path) -> Session:
    if target.twin_of is not None:
        raise BenchError(
            "--vs-dense with --runtime trt needs an engine of the dense model: export a dense run with "
            "`lappdeploy export RUN --trt` and bench both directories instead"
        )
    engine = target.export_dir / engine_file(config.precision) if target.export_dir else None
    if engine is None or not engine.is_file():
        raise BenchError(
            f"no {config.precision} TensorRT engine for {target.label} (looked for {engine or 'an export directory'}); "
            f"build it with `lappdeploy export {target.source} --trt --precision {config.precision}`"
        )
    built = _export_section(target).get("tf32", False)  # exports before --tf32 existed cleared TF32 for fp32
    if config.precision == "fp32" and bool(built) != config.tf32:
        raise BenchError(
            f"the fp32 engine of {target.label} was built {'with' if built else 'without'} TF32 but --"
            f"{'' if config.tf32 else 'no-'}tf32 was asked for: TensorRT fixes TF32 at build time, so rebuild with "
            f"`lappdeploy export {target.source} --trt {'--tf32' if config.tf32 else '--no-tf32'}` or drop the flag"
        )
    session = TensorRTSession(engine, seed=config.seed, cuda_graph=config.cuda_graph)
    session.tf32 = bool(built) if config.precision == "fp32" else None
    return session


def _export_section(target: BenchTarget) -> dict:
    """The tensorrt section of the target's export.json ({} where there is none)."""
    path = target.export_dir / EXPORT_FILE if target.export_dir else None
    if path is None or not path.is_file():
        return {}
    export = read_json(path)
    return (export.get("tensorrt") or {}) | {"tf32": (export.get("config") or {}).get("tf32")}


def _read_trtexec(targets: list[BenchTarget], config: BenchConfig) -> list[RecordedTiming]:
    if config.vs_dense:
        raise BenchError(
            "--vs-dense cannot time anything with --runtime trtexec (it reads results); run the dense model's "
            "trtexec.sh on the target too and bench both export directories"
        )
    results = []
    for target in targets:
        if target.export_dir is None:
            raise BenchError(f"{target.source} has no export directory; `lappdeploy export --trt` writes trtexec.sh")
        result = read_trtexec(target.export_dir, config.precision)
        timing = Timing(
            batch=result.batch,
            latency=result.latency,
            host_latency=result.host_latency,
            measured_s=result.measured_s,
            throughput_ips=result.throughput_ips,
            warmup_s=0.0,
            warmup_calls=0,
        )
        provider = f"trtexec-{result.trt_version or 'unknown'}"
        section = _export_section(target)
        graphs = section.get("cuda_graph", True)  # trtexec.sh before --cuda-graph: --useCudaGraph / 11's default
        results.append(
            RecordedTiming(
                timing, provider, "trtexec-gpu-compute", result.device_name or "unknown GPU",
                tf32=bool(section.get("tf32")) if config.precision == "fp32" else None, cuda_graph=graphs,
            )
        )  # fmt: skip
    return results


# --------------------------------------------------------------------------------------------------
# the registry

RUNTIMES: Registry[RuntimeSpec] = Registry("runtime")
for _spec in (
    RuntimeSpec(
        "torch",
        "PyTorch eager or torch.compile, CPU or CUDA",
        "torch",
        auto_device=_torch_auto_device,
        check_device=_check_torch_device,
        open_session=_open_torch,
    ),
    RuntimeSpec(
        "ort",
        "ONNX Runtime, CPU / CUDA / TensorRT providers",
        "lappdeploy[onnx,ort] (CPU) or lappdeploy[onnx,ort-gpu]",
        auto_device=_ort_auto_device,
        check_device=_check_ort_device,
        open_session=_open_ort,
    ),
    RuntimeSpec("trt", "a serialized TensorRT engine", "tensorrt + CUDA", gpu_only=True, open_session=_open_trt),
    RuntimeSpec(
        "openvino",
        "OpenVINO's CPU plugin: fp32, bf16 (AMX / AVX-512 BF16), int8 (Q/DQ graph)",
        "lappdeploy[onnx,openvino]",
        auto_device=_cpu,
        open_session=_open_openvino,
    ),
    RuntimeSpec(
        "trtexec",
        "results of trtexec --exportTimes run on the target",
        "trtexec's JSON",
        gpu_only=True,
        read_results=_read_trtexec,
    ),
):
    RUNTIMES.add(_spec.name, _spec)
if set(RUNTIMES.names()) != set(RUNTIME_NAMES):
    raise RuntimeError(
        f"the runtime registry ({', '.join(RUNTIMES.names())}) and lappdeploy.config.RUNTIMES "
        f"({', '.join(RUNTIME_NAMES)}) must name the same runtimes"
    )
