"""TensorRT engines from a checked ONNX with the real TensorRT Python API, for TensorRT 8.5, 8.6, 10.x, 11.x.

The module imports without TensorRT; `tensorrt` is imported when an engine is built (or passed in as
`trt`, which is how the tests drive the version branches through `lappdeploy.testing.fake_tensorrt`).
What differs between the families is one table, `lappdeploy.export.trt_recipes` (docs/deployment.md#tensorrt).

Every build sets a dynamic-batch optimization profile (min/opt/max), the workspace limit, the builder
optimization level (8.6+) and a timing cache kept per device and TensorRT version, saves the engine
inspector's layer information as JSON, and (where CUDA is present) compares the engine with ONNX
Runtime on the parity inputs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lappdeploy.errors import ExportError, first_line
from lappdeploy.export.onnx_export import INPUT_NAME, OUTPUT_NAME, ort_session
from lappdeploy.export.precision import write_precision_onnx
from lappdeploy.export.trt_recipes import (
    FAMILIES,
    FP32_ONNX,
    PRECISIONS,
    TOLERANCE,
    TrtRecipe,
    engine_file,
    layer_info_file,
    trt_recipe,
)
from lappdeploy.io import atomic_open, atomic_write_text, cache_root
from lappdeploy.optional import require

__all__ = [
    "FAMILIES",
    "PRECISIONS",
    "TOLERANCE",
    "EngineBuild",
    "EngineProfile",
    "build_engine",
    "check_engine_io",
    "check_precision",
    "engine_parity",
    "import_tensorrt",
    "run_engine",
    "tensorrt_logger",
    "timing_cache_path",
    "trt_family",
]

log = logging.getLogger(__name__)

# smallest compute capability with fast FP16 / INT8 kernels (used where TensorRT no longer says: 11.x)
_MIN_CAPABILITY = {"fp16": (5, 3), "int8": (6, 1)}


def import_tensorrt():
    return require("tensorrt", purpose="building TensorRT engines")


def trt_family(version: str) -> str:
    """'8.5.2' -> '8.5', '8.6.1' -> '8.6', '10.3.0' -> '10', '11.1.0' -> '11'; others raise ExportError."""
    match = re.match(r"(\d+)\.(\d+)", str(version))
    if match:
        major, minor = int(match.group(1)), int(match.group(2))
        if major == 8 and minor >= 5:
            return "8.6" if minor >= 6 else "8.5"
        if major in (10, 11):
            return str(major)
    raise ExportError(
        f"TensorRT {version} is not supported; lappdeploy builds engines with TensorRT 8.5, 8.6, 10.x or 11.x "
        "(JetPack 5.1 or newer)"
    )


@dataclass(frozen=True)
class EngineProfile:
    """The optimization profile of the batch dimension (images per call)."""

    min: int
    opt: int
    max: int

    @classmethod
    def from_batches(cls, batches: Sequence[int]) -> EngineProfile:
        """--batch 1,8,32 -> min 1, opt 8, max 32; two values: opt = max; one value: a fixed batch."""
        values = sorted(int(b) for b in batches)
        if not values or values[0] < 1:
            raise ExportError(f"batch sizes must be >= 1 (got {list(batches)})")
        middle = values[1] if len(values) == 3 else values[-1]
        return cls(values[0], middle, values[-1])

    def shapes(self, input_shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        return tuple((b, *input_shape) for b in (self.min, self.opt, self.max))


@dataclass
class EngineBuild:
    """One engine build, as recorded in export.json."""

    engine: str  # file name in the export directory
    trt_version: str
    family: str
    precision: str
    precision_mode: str  # how the precision was obtained (builder flag, FP16 ONNX, Q/DQ ONNX)
    onnx: str  # the ONNX the parser read
    profile: dict[str, int]
    input_shape: list[int]
    workspace_mib: int
    opt_level: int | None  # None on 8.5, which has no optimization levels
    device: str
    timing_cache: str
    timing_cache_hit: bool  # the cache existed before this build
    layer_info: str
    engine_bytes: int
    build_s: float
    calibration_images: int | None = None
    reduced_onnx: dict[str, Any] | None = None  # the FP16 / Q/DQ graph built from: converter, parity vs fp32
    io_dtypes: dict[str, str] = field(default_factory=dict)  # engine tensor name -> dtype
    parity: list[dict[str, float]] = field(default_factory=list)
    parity_tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timing_cache_path(cache_dir: str | os.PathLike[str], device: str, trt_version: str) -> Path:
    """One timing cache per GPU model and TensorRT version: kernels timed on one never mislead another."""
    tag = re.sub(r"[^A-Za-z0-9.]+", "-", device).strip("-").lower() or "gpu"
    return Path(cache_dir).expanduser() / f"{tag}-trt{trt_version}.timing-cache"


def default_timing_cache_dir() -> Path:
    return cache_root() / "tensorrt"


def cuda_device_name() -> tuple[str, tuple[int, int] | None]:
    """(GPU name with compute capability, capability) of CUDA device 0, or ('no CUDA device', None)."""
    if not torch.cuda.is_available():
        return "no CUDA device", None
    capability = torch.cuda.get_device_capability(0)
    return f"{torch.cuda.get_device_name(0)} sm{capability[0]}{capability[1]}", capability


def check_precision(trt, precision: str, *, capability: tuple[int, int] | None = None, builder=None) -> str:
    """Raise ExportError unless the installed TensorRT (and GPU) can build `precision`; returns the family."""
    family = trt_family(trt.__version__)
    recipe = trt_recipe(family, precision)
    if precision == "fp32":
        return family
    if not recipe.strongly_typed:
        try:
            builder = builder or trt.Builder(trt.Logger(trt.Logger.WARNING))
        except Exception as exc:  # TensorRT raises a RuntimeError/TypeError when it finds no usable GPU
            raise ExportError(
                f"TensorRT {trt.__version__} cannot create a builder here (no GPU?): {first_line(exc)}"
            ) from None
        fast = builder.platform_has_fast_fp16 if precision == "fp16" else builder.platform_has_fast_int8
        if not fast:
            raise ExportError(
                f"TensorRT {trt.__version__} reports no fast {precision.upper()} on this GPU "
                f"(platform_has_fast_{precision} is False); use --precision fp32"
                + (" or fp16" if precision == "int8" else "")
            )
    elif capability is not None and capability < _MIN_CAPABILITY[precision]:
        need = ".".join(map(str, _MIN_CAPABILITY[precision]))
        raise ExportError(
            f"{precision.upper()} needs a GPU of compute capability >= {need} "
            f"(this one is {capability[0]}.{capability[1]}); use --precision fp32"
        )
    return family


def tensorrt_logger(trt):
    """A `trt.ILogger` that routes TensorRT's messages to the `lappdeploy.export.tensorrt` logger."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # TensorRT's pybind11 base class needs its own __init__ called

        def log(self, severity, msg) -> None:
            level = {
                trt.ILogger.INTERNAL_ERROR: logging.ERROR,
                trt.ILogger.ERROR: logging.ERROR,
                trt.ILogger.WARNING: logging.WARNING,
                trt.ILogger.INFO: logging.DEBUG,
            }.get(severity, logging.DEBUG)
            log.log(level, "TensorRT: %s", msg)

    return Logger()


def _parse(trt, network, logger_obj, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger_obj)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ExportError(
            f"TensorRT's ONNX parser rejected {onnx_path.name}: {'; '.join(errors[:3]) or 'no details'}{more}"
        )
    network_input = network.get_input(0)
    if network.num_inputs != 1 or network_input.name != INPUT_NAME:
        raise ExportError(f"{onnx_path.name} must have one input named {INPUT_NAME!r}")


def _parser_error(error) -> str:
    """One parser error on one line, naming the node: its name where the parser gives it (node_name(), 10.0+),
    else its index; none for an error about the whole graph (index -1)."""
    desc = " ".join(str(error.desc()).split())
    index = int(error.node())
    if index < 0:
        return desc
    name = error.node_name() if hasattr(error, "node_name") else ""
    return f"node {index}{f' ({name})' if name else ''}: {desc}"


def _builder_onnx(recipe: TrtRecipe, onnx_path: Path, out_dir: Path, calibration) -> tuple[Path, dict | None]:
    """The graph the builder parses: the fp32 ONNX, or its FP16 / Q/DQ copy written to `out_dir` (with
    what export.json records of it)."""
    if recipe.onnx_variant == FP32_ONNX:
        return onnx_path, None
    source = out_dir / recipe.onnx_variant
    batches = calibration if recipe.needs_calibration else None  # the quantizer checks there are images
    return source, write_precision_onnx(recipe.onnx_variant, onnx_path, source, batches)


def _network_flags(trt, recipe: TrtRecipe) -> int:
    return sum(1 << int(getattr(trt.NetworkDefinitionCreationFlag, name)) for name in recipe.network_flags)


def _define_network(trt, logger_obj, recipe: TrtRecipe, source: Path, shapes, *, workspace_mib, opt_level, tf32):
    """The builder, the network parsed from `source` and the builder config of `recipe` (no calibrator)."""
    builder = trt.Builder(logger_obj)
    network = builder.create_network(_network_flags(trt, recipe))
    _parse(trt, network, logger_obj, source)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)  # MiB -> bytes
    if recipe.has_opt_level:
        config.builder_optimization_level = int(opt_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names, precisions, tactics
    if recipe.clears_tf32 and not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *shapes)
    config.add_optimization_profile(opt_profile)
    for name in recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    return builder, network, config


def _load_timing_cache(trt, config, cache_dir, device: str) -> tuple[Path, bool]:
    """Give the builder the timing cache of this device and TensorRT version: (its file, whether it existed)."""
    cache_file = timing_cache_path(cache_dir or default_timing_cache_dir(), device, trt.__version__)
    hit = cache_file.is_file()
    timing_cache = config.create_timing_cache(cache_file.read_bytes() if hit else b"")
    if not config.set_timing_cache(timing_cache, False):  # False: refuse a cache from another device
        log.warning("TensorRT refused the timing cache %s (another device or version); building without it", cache_file)
        if not config.set_timing_cache(config.create_timing_cache(b""), False):
            raise ExportError(f"TensorRT {trt.__version__} refused even an empty timing cache")
        hit = False
    return cache_file, hit


def _build_and_save(trt, logger_obj, builder, network, config, source: Path, out_dir: Path, precision: str, cache_file):
    """Build the engine; write it, the updated timing cache and the engine inspector's layer information.
    Returns the engine's size in bytes and its I/O dtypes."""
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT {trt.__version__} could not build a {precision} engine from {source.name} "
            "(re-run with -v for the builder log)"
        )
    engine_bytes = bytes(serialized)
    engine = trt.Runtime(logger_obj).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise ExportError(f"TensorRT {trt.__version__} cannot load the {precision} engine it has just built")
    io_dtypes = check_engine_io(trt, engine, source.name)
    with atomic_open(out_dir / engine_file(precision), "wb") as handle:
        handle.write(engine_bytes)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(cache_file, "wb") as handle:
        handle.write(bytes(config.get_timing_cache().serialize()))
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    atomic_write_text(out_dir / layer_info_file(precision), json.dumps(json.loads(info), indent=1) + "\n")
    return len(engine_bytes), io_dtypes


def check_engine_io(trt, engine, what: str) -> dict[str, str]:
    """The engine's tensor dtypes by name, after checking it has one float32 input and one float32 output
    (what every runner here binds); raises ExportError otherwise."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    dtypes = {name: str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1] for name in names}
    wanted = {INPUT_NAME: "FLOAT", OUTPUT_NAME: "FLOAT"}
    if dtypes != wanted:
        raise ExportError(f"the engine of {what} has I/O {dtypes}; expected {wanted} (float32 input and logits)")
    return dtypes


def build_engine(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    precision: str = "fp32",
    batches: Sequence[int] = (1, 8, 32),
    input_shape: Sequence[int],
    workspace_mib: int = 1024,
    opt_level: int = 3,
    calibration: Iterable[np.ndarray] | None = None,
    timing_cache_dir: str | os.PathLike[str] | None = None,
    trt=None,
    device: str | None = None,
    capability: tuple[int, int] | None = None,
    tf32: bool = False,
) -> EngineBuild:
    """Build `model_<precision>.engine` (+ `layers_<precision>.json`) in `out_dir` from the fp32 ONNX at
    `onnx_path`. INT8 quantizes a Q/DQ copy with float32 `calibration` batches (normalised images).
    `trt`, `device` and `capability` default to the installed TensorRT and CUDA device 0."""
    trt = trt or import_tensorrt()
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if device is None:
        device, capability = cuda_device_name()
    recipe = trt_recipe(check_precision(trt, precision, capability=capability), precision)
    profile = EngineProfile.from_batches(batches)
    start = time.perf_counter()
    source, reduced = _builder_onnx(recipe, onnx_path, out_dir, calibration)
    logger_obj = tensorrt_logger(trt)
    shapes = profile.shapes(input_shape)
    builder, network, config = _define_network(
        trt, logger_obj, recipe, source, shapes, workspace_mib=workspace_mib, opt_level=opt_level, tf32=tf32
    )
    cache_file, cache_hit = _load_timing_cache(trt, config, timing_cache_dir, device)
    size, io_dtypes = _build_and_save(trt, logger_obj, builder, network, config, source, out_dir, precision, cache_file)
    build = EngineBuild(
        engine=engine_file(precision),
        trt_version=str(trt.__version__),
        family=recipe.family,
        precision=precision,
        precision_mode=recipe.precision_mode,
        onnx=source.name,
        profile=asdict(profile),
        input_shape=list(input_shape),
        workspace_mib=int(workspace_mib),
        opt_level=int(opt_level) if recipe.has_opt_level else None,
        device=device,
        timing_cache=str(cache_file),
        timing_cache_hit=cache_hit,
        layer_info=layer_info_file(precision),
        engine_bytes=size,
        build_s=round(time.perf_counter() - start, 3),
        calibration_images=(reduced or {}).get("calibration_images"),
        reduced_onnx=reduced,
        io_dtypes=io_dtypes,
    )  # fmt: skip
    _log_build(build)
    return build


def _log_build(build: EngineBuild) -> None:
    log.info(
        "built %s with TensorRT %s (%s) in %.1f s: %.1f MB",
        build.engine,
        build.trt_version,
        build.precision_mode,
        build.build_s,
        build.engine_bytes / 1e6,
    )


def run_engine(engine_path: str | os.PathLike[str], inputs: Sequence[np.ndarray], *, trt=None) -> list[np.ndarray]:
    """Run a serialized engine on CUDA device 0 for each float32 input batch (name-based I/O,
    execute_async_v3 on a non-default stream; the API of 8.5 to 11)."""
    trt = trt or import_tensorrt()
    device = "cpu" if _host_buffers(trt) else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("running a TensorRT engine needs a CUDA GPU")
    logger_obj = tensorrt_logger(trt)
    engine = trt.Runtime(logger_obj).deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise ExportError(f"{engine_path} is not an engine this TensorRT ({trt.__version__}) and GPU can load")
    check_engine_io(trt, engine, Path(engine_path).name)
    context = engine.create_execution_context()
    stream = torch.cuda.Stream() if device == "cuda" else None
    outputs = []
    for batch in inputs:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device)
        if not context.set_input_shape(INPUT_NAME, tuple(x.shape)):  # False outside the optimization profile
            raise ExportError(f"{Path(engine_path).name} refuses the input shape {tuple(x.shape)} (see its profile)")
        y = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.float32, device=device)
        context.set_tensor_address(INPUT_NAME, x.data_ptr())
        context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
        if not _execute(context, stream):
            raise ExportError(f"TensorRT failed to run {engine_path} at batch {x.shape[0]}")
        outputs.append(y.cpu().numpy())
    return outputs


def _host_buffers(trt) -> bool:
    """Whether `trt` runs engines on host memory. Only the FAKE TensorRT of lappdeploy.testing does (it computes
    engines with ONNX Runtime on the CPU, so tests run run_engine and engine_parity without a GPU); real TensorRT
    has no HOST_BUFFERS attribute and gets CUDA buffers and a CUDA stream."""
    return bool(getattr(trt, "HOST_BUFFERS", False))


def _execute(context, stream) -> bool:
    """execute_async_v3 on `stream` once the input's copy (queued on the current stream) is done, then wait for
    it; `stream` None: host buffers (the FAKE TensorRT), computed before the call returns."""
    if stream is None:
        return bool(context.execute_async_v3(0))
    stream.wait_stream(torch.cuda.current_stream())
    done = context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return bool(done)


def engine_parity(
    engine_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    input_shape: Sequence[int],
    batches: Sequence[int],
    precision: str,
    *,
    seed: int = 0,
    trt=None,
    runner: Callable[..., list[np.ndarray]] = run_engine,
) -> list[dict[str, float]]:
    """Compare the engine with ONNX Runtime (CPU, fp32 ONNX) on random inputs at each batch size; raise
    ExportError above the precision's tolerance. Records top-1 agreement too (informative for INT8)."""
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal((b, *input_shape), dtype=np.float32) for b in batches]
    session = ort_session(onnx_path)
    expected = [session.run([OUTPUT_NAME], {INPUT_NAME: x})[0] for x in inputs]
    got = runner(engine_path, inputs, trt=trt)
    rows = []
    for batch, ref, out in zip(batches, expected, got, strict=True):
        error = float(np.abs(out - ref).max())
        scale = float(np.abs(ref).max()) or 1.0
        rows.append(
            {
                "batch": int(batch),
                "max_abs_error": error,
                "logit_scale": scale,
                "relative_error": error / scale,
                "top1_agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
            }
        )
    worst = max(r["relative_error"] for r in rows)
    if worst > TOLERANCE[precision]:
        raise ExportError(
            f"the {precision} TensorRT engine disagrees with ONNX Runtime: max error {worst:.2e} of the logit "
            f"scale (tolerance {TOLERANCE[precision]:g})"
        )
    return rows
