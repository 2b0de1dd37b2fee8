"""A FAKE of the TensorRT Python API surface lappdeploy uses, for tests on machines without TensorRT or a GPU
(tests only: it builds no kernels, and what it runs, it runs with ONNX Runtime on the CPU). It says no where real
TensorRT says no, so tests can check lappdeploy's error paths, and it runs what it builds, so tests can check
`run_engine` and the TensorRT-vs-ONNX-Runtime parity check:

- The ONNX parser imports the operators of SUPPORTED_OPS (what lappdeploy's CNN exports and their FP16 / Q/DQ
  copies contain, plus the usual CNN operators) in the default ONNX domain, at the opsets of its family (OPSETS).
  Other nodes, other opsets, an implicit-batch network on 8.x and a DequantizeLinear of an int32 initializer
  make `parse` return False, with the errors in `num_errors` / `get_error(i)`: code(), desc(), node() (the node's
  index, -1 for the whole graph), and from 10.0 on node_name() / node_operator(). Unlike 8.x, which stops at the
  first bad node, the fake reports every bad node in every family.
- `build_serialized_network` returns None and logs why through the builder's logger, as real TensorRT does, with
  less than MIN_WORKSPACE_BYTES of workspace, for FP16 / INT8 (builder flag or graph) where the platform has no
  fast FP16 / INT8 (`fast_fp16` / `fast_int8`), or for a dynamic input without an optimization profile that fits.
- IBuilderConfig has the attributes of its family only (CONFIG_ATTRIBUTES): setting another raises
  AttributeError, as on the real pybind11 class (8.5 has no `builder_optimization_level`, 11 no calibrator).
- The serialized engine carries the ONNX it was built from and its I/O: names, dtypes from the graph (an FP16
  graph with fp16 inputs reports HALF), shapes and the profile. `deserialize_cuda_engine` returns None for other
  bytes and for an engine of another (fake) version, as real plan files are specific to their TensorRT version.
- An execution context computes the engine with ONNX Runtime: `set_input_shape` (False outside the profile),
  `set_tensor_address`, `execute_async_v3`. The addresses are HOST memory: the module says HOST_BUFFERS = True,
  which makes lappdeploy's `run_engine` allocate its buffers on the CPU instead of the GPU.

The families differ as the real API does:
  8.5: as 8.6, without IBuilderConfig.builder_optimization_level (added in 8.6);
  8.6: NetworkDefinitionCreationFlag.EXPLICIT_BATCH, BuilderFlag.FP16/INT8, IInt8EntropyCalibrator2,
       platform_has_fast_fp16/int8;
  10:  as 8.6 (EXPLICIT_BATCH deprecated, still present; explicit batch is the only mode); ParserError.node_name();
  11:  none of them: no precision flags, no calibrators, no platform_has_fast_* (strongly typed).

Each fake module gets its own subclasses of the classes below, bound to its `_FakeState` (version, call log, knobs,
BuilderFlag enum), so two fakes never share state. Knobs on `module.state`: `fast_fp16`, `fast_int8`,
`accept_timing_cache` (set_timing_cache's answer) and `weight_noise` (the builder perturbs the weights: an engine
that disagrees with its ONNX). `module.calls` records what was parsed, built and run.
"""

from __future__ import annotations

import ctypes
import enum
import json
import math
import types
from typing import Any, ClassVar

import numpy as np

from lappdeploy.optional import require

__all__ = [
    "CONFIG_ATTRIBUTES",
    "FAKE_ENGINE_MAGIC",
    "MIN_WORKSPACE_BYTES",
    "OPSETS",
    "SUPPORTED_OPS",
    "fake_tensorrt",
]

FAKE_ENGINE_MAGIC = b"FAKE-TENSORRT-ENGINE\n"  # the first bytes of every fake engine; what follows is JSON + ONNX
MIN_WORKSPACE_BYTES = 4 << 20  # the fake's tactics need 4 MiB of workspace: less and no implementation is found

SUPPORTED_OPS = frozenset(
    {
        *("Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization"),
        *("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum"),
        *("Gemm", "MatMul"),
        *("Relu", "LeakyRelu", "PRelu", "Elu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Clip"),
        *("Softmax", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Neg", "Abs", "Max", "Min"),
        *("Reshape", "Flatten", "Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "Gather"),
        *("Shape", "Expand", "Pad", "Resize", "Identity", "Constant", "ConstantOfShape", "Cast"),
        *("QuantizeLinear", "DequantizeLinear"),  # explicit quantization (Q/DQ graphs)
    }
)
# default-domain opsets each family's parser imports (8.5/8.6: up to 17, which legacy torch.onnx writes; the
# dynamo exporter's 18 needs 10.x or newer)
OPSETS = {"8.5": (7, 17), "8.6": (7, 17), "10": (9, 20), "11": (9, 25)}

_COMMON_CONFIG = {"avg_timing_iterations", "DLA_core", "default_device_type", "engine_capability", "flags"}
_COMMON_CONFIG |= {"profile_stream", "profiling_verbosity", "algorithm_selector", "int8_calibrator"}
_CONFIG_86 = _COMMON_CONFIG | {"builder_optimization_level", "hardware_compatibility_level", "max_aux_streams"}
CONFIG_ATTRIBUTES = {  # settable IBuilderConfig attributes per family (the ones lappdeploy could touch)
    "8.5": frozenset(_COMMON_CONFIG),
    "8.6": frozenset(_CONFIG_86),
    "10": frozenset(_CONFIG_86 | {"progress_monitor", "runtime_platform"}),
    "11": frozenset((_CONFIG_86 | {"progress_monitor", "runtime_platform"}) - {"int8_calibrator"}),
}

MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
ProfilingVerbosity = enum.Enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "DETAILED", "NONE"])
LayerInformationFormat = enum.Enum("LayerInformationFormat", ["ONELINE", "JSON"])
DataType = enum.Enum("DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "INT64", "BF16"])
TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
ErrorCode = enum.Enum(
    "ErrorCode",
    ["SUCCESS", "INTERNAL_ERROR", "MEM_ALLOC_FAILED", "MODEL_DESERIALIZE_FAILED", "INVALID_VALUE", "INVALID_GRAPH",
     "INVALID_NODE", "UNSUPPORTED_GRAPH", "UNSUPPORTED_NODE"],
)  # fmt: skip

# onnx.TensorProto element type -> DataType name, and the numpy dtype of each DataType the context can copy
_ONNX_DTYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 9: "BOOL", 2: "UINT8", 7: "INT64", 16: "BF16"}
_NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
                 "UINT8": np.uint8, "INT64": np.int64}  # fmt: skip
_INT32 = 6


class _FakeState:
    """What one fake `tensorrt` module knows: its version and family, its call log, its knobs, its enums."""

    def __init__(self, version: str, fast_fp16: bool, fast_int8: bool) -> None:
        self.version = version
        self.major, self.minor = (int(part) for part in version.split(".")[:2])
        self.family = "8.5" if (self.major, self.minor) < (8, 6) else "8.6" if self.major == 8 else str(self.major)
        self.calls: list[tuple[str, Any]] = []
        self.fast_fp16, self.fast_int8 = fast_fp16, fast_int8
        self.accept_timing_cache = True  # set_timing_cache's answer (False: a cache of another device)
        self.weight_noise = 0.0  # > 0: the builder scales every float weight by 1 + weight_noise * N(0, 1)
        weakly_typed = self.major < 11  # 11.x removed the precision flags, EXPLICIT_BATCH and calibrators
        flags = ["TF32"] + (["FP16", "INT8"] if weakly_typed else [])
        self.BuilderFlag = enum.IntEnum("BuilderFlag", {name: i for i, name in enumerate(flags)})
        creation_flags = (["EXPLICIT_BATCH"] if weakly_typed else []) + ["STRONGLY_TYPED"]
        self.NetworkDefinitionCreationFlag = enum.IntEnum(
            "NetworkDefinitionCreationFlag", {name: i for i, name in enumerate(creation_flags)}
        )


class _Bound:
    """Base of the classes that need their module's state (set on the per-module subclass)."""

    _fake: ClassVar[_FakeState]


class ILogger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, *args: Any) -> None:
        pass

    def log(self, severity: int, msg: str) -> None:
        pass


class Logger(ILogger):
    pass


def _log_error(logger: Any, msg: str) -> None:
    """Real TensorRT reports why a call failed through the ILogger it was given, at ERROR."""
    if logger is not None:
        logger.log(ILogger.ERROR, msg)


class IInt8EntropyCalibrator2:
    def __init__(self) -> None:
        pass


class Tensor:
    """A network input or output: its name, DataType and shape (-1 for a dynamic dimension)."""

    def __init__(self, name: str, dtype: DataType, shape: tuple[int, ...], dim_params: list[str | None]) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape
        self.dim_params = dim_params  # the ONNX dim_param of each dynamic dimension ("batch"), else None


class Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []
        self.onnx = b""  # the model the parser read (what a built engine runs)
        self.layers: list[str] = []  # "name (op)" of each node
        self.ops: set[str] = set()
        self.weight_types: set[str] = set()  # DataType names of the initializers

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_input(self, i: int) -> Tensor:
        return self.inputs[i]

    def get_output(self, i: int) -> Tensor:
        return self.outputs[i]


class ParserError:
    """One parser error, with the accessors of 8.x: code(), desc(), node() (-1: not a node), file/line/func."""

    def __init__(self, code: ErrorCode, text: str, node: int = -1, name: str = "", op: str = "") -> None:
        self._code, self._text, self._node, self._name, self._op = code, text, node, name, op

    def code(self) -> ErrorCode:
        return self._code

    def desc(self) -> str:
        return self._text

    def node(self) -> int:
        return self._node

    def file(self) -> str:
        return "fake_tensorrt.py"

    def line(self) -> int:
        return 0

    def func(self) -> str:
        return "parse"

    def __str__(self) -> str:  # what the parser logs, in 10.x's words
        where = f"In node {self._node} with name: {self._name} and operator: {self._op} " if self._node >= 0 else ""
        return f"{where}({self.func()}): {self._code.name}: {self._text}"


class ParserError10(ParserError):
    """10.0 added the node's name and operator to IParserError."""

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op


def _tensor(value_info: Any) -> Tensor:
    tensor_type = value_info.type.tensor_type
    dims = tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    params = [None if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
    return Tensor(value_info.name, DataType[_ONNX_DTYPES.get(tensor_type.elem_type, "FLOAT")], shape, params)


def _opset(model: Any) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


class OnnxParser(_Bound):
    _error_class: ClassVar[type[ParserError]]

    def __init__(self, network: Network, logger: Any) -> None:
        self.network, self.logger = network, logger
        self.errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> ParserError:
        return self.errors[i]

    def clear_errors(self) -> None:
        self.errors.clear()

    def supports_operator(self, op_name: str) -> bool:
        return op_name in SUPPORTED_OPS

    def parse_from_file(self, path: str) -> bool:
        with open(path, "rb") as handle:
            return self.parse(handle.read())

    def parse(self, model: bytes, path: str | None = None) -> bool:
        self.errors.clear()
        onnx = require("onnx", purpose="the fake TensorRT's ONNX parser")
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:  # protobuf's DecodeError and friends
            self._fail(ErrorCode.MODEL_DESERIALIZE_FAILED, f"Failed to parse ONNX model: {exc}")
            return False
        self._check_graph(proto)
        for index, node in enumerate(proto.graph.node):
            self._check_node(index, node, proto)
        if self.errors:
            return False
        self._define(proto, bytes(model))
        return True

    def _fail(self, code: ErrorCode, text: str, node: int = -1, name: str = "", op: str = "") -> None:
        error = self._error_class(code, text, node, name, op)
        self.errors.append(error)
        _log_error(self.logger, str(error))

    def _check_graph(self, proto: Any) -> None:
        fake = self._fake
        explicit = fake.NetworkDefinitionCreationFlag.__members__.get("EXPLICIT_BATCH")
        if fake.major == 8 and not self.network.flags & (1 << int(explicit)):
            self._fail(
                ErrorCode.INVALID_GRAPH, "The ONNX parser only supports networks with an explicit batch dimension"
            )
        low, high = OPSETS[fake.family]
        opset = _opset(proto)
        if opset is None or not low <= opset <= high:
            self._fail(
                ErrorCode.UNSUPPORTED_GRAPH,
                f"ONNX opset {opset} is not supported: TensorRT {fake.version}'s parser imports opsets {low} to {high}",
            )

    def _check_node(self, index: int, node: Any, proto: Any) -> None:
        where = (index, node.name, node.op_type)
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            self._fail(
                ErrorCode.UNSUPPORTED_NODE,
                f"No importer registered for op: {node.op_type}. Attempting to import as plugin. Plugin not found, "
                "are the plugin name, version, and namespace correct?",
                *where,
            )
        elif node.op_type == "DequantizeLinear" and _initializer_type(proto, node.input[0]) == _INT32:
            self._fail(ErrorCode.INVALID_NODE, "only activation types allowed as input to this layer", *where)

    def _define(self, proto: Any, model: bytes) -> None:
        weights = {i.name for i in proto.graph.initializer}
        self.network.inputs = [_tensor(i) for i in proto.graph.input if i.name not in weights]
        self.network.outputs = [_tensor(o) for o in proto.graph.output]
        self.network.onnx = model
        self.network.layers = [f"{n.name} ({n.op_type})" for n in proto.graph.node]
        self.network.ops = {n.op_type for n in proto.graph.node}
        self.network.weight_types = {_ONNX_DTYPES.get(i.data_type, "FLOAT") for i in proto.graph.initializer}
        graph = {
            "ops": sorted({n.op_type for n in proto.graph.node}),
            "initializer_types": sorted({i.data_type for i in proto.graph.initializer}),
            "input_types": [i.type.tensor_type.elem_type for i in proto.graph.input],
            "output_types": [o.type.tensor_type.elem_type for o in proto.graph.output],
            "opset": _opset(proto),
        }
        self._fake.calls.append(("parse", graph))


def _initializer_type(proto: Any, name: str) -> int | None:
    return next((i.data_type for i in proto.graph.initializer if i.name == name), None)


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, low, opt, high) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return b"fake-timing-cache"


class BuilderConfig(_Bound):
    """IBuilderConfig of one family: setting an attribute its real class lacks raises AttributeError."""

    _attributes: ClassVar[frozenset[str]]

    def __init__(self) -> None:
        self._flags = {self._fake.BuilderFlag.TF32}  # TF32 is on by default in TensorRT
        self._pool_limits: dict[Any, int] = {}
        self._profiles: list[OptimizationProfile] = []
        self._timing_cache: TimingCache | None = None
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        if "builder_optimization_level" in self._attributes:
            self.builder_optimization_level = 3
        if "int8_calibrator" in self._attributes:
            self.int8_calibrator = None

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in self._attributes:
            raise AttributeError(f"'tensorrt.tensorrt.IBuilderConfig' object has no attribute '{name}'")
        super().__setattr__(name, value)

    @property
    def flags(self) -> int:
        return sum(1 << int(flag) for flag in self._flags)

    @flags.setter
    def flags(self, mask: int) -> None:
        self._flags = {flag for flag in self._fake.BuilderFlag if mask >> int(flag) & 1}

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self._pool_limits[pool] = int(size)

    def get_memory_pool_limit(self, pool) -> int:
        return self._pool_limits.get(pool, 1 << 40)  # default: the device's memory

    def set_flag(self, flag) -> None:
        self._flags.add(flag)

    def clear_flag(self, flag) -> None:
        self._flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self._flags

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache(data)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        if not self._fake.accept_timing_cache and cache.data:
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        return self._timing_cache or TimingCache(b"")


class CalibratingBuilderConfig(BuilderConfig):
    """8.5 / 8.6 / 10: a config that also takes the profile an INT8 calibrator runs at."""

    def __init__(self) -> None:
        super().__init__()
        self._calibration_profile: OptimizationProfile | None = None

    def set_calibration_profile(self, profile: OptimizationProfile) -> None:
        self._calibration_profile = profile


def _calibrate(calibrator) -> int | None:
    """What TensorRT does with a calibrator: use its cache, else calibrate and write one; images served."""
    if calibrator is None:
        return None
    if calibrator.read_calibration_cache() is not None:
        return 0
    size, calibrated = calibrator.get_batch_size(), 0
    while calibrator.get_batch(["input"]) is not None:
        calibrated += size
    calibrator.write_calibration_cache(b"fake-calibration-cache")
    return calibrated


def _build_record(config: BuilderConfig) -> dict[str, Any]:
    """What a build was given, for tests to assert which branch ran."""
    return {
        "flags": sorted(flag.name for flag in config._flags),
        "workspace": config._pool_limits.get(MemoryPoolType.WORKSPACE),
        "opt_level": getattr(config, "builder_optimization_level", None),
        "verbosity": config.profiling_verbosity.name,
        "profiles": [p.shapes for p in config._profiles],
        "calibration_profile": getattr(getattr(config, "_calibration_profile", None), "shapes", None),
        "calibrated_images": _calibrate(getattr(config, "int8_calibrator", None)),
        "timing_cache_in": config._timing_cache.data if config._timing_cache else None,
    }


def _precision_refusal(fake: _FakeState, network: Network, config: BuilderConfig) -> str | None:
    """FP16 / INT8 asked for (builder flag, or the graph's types on any family) where the platform lacks them."""
    flags = {flag.name for flag in config._flags}
    wants_int8 = "INT8" in flags or "QuantizeLinear" in network.ops
    io_types = {t.dtype.name for t in network.inputs + network.outputs}
    wants_fp16 = "FP16" in flags or "HALF" in network.weight_types | io_types
    if wants_int8 and not fake.fast_int8:
        return "INT8 is not supported on this platform: no INT8 implementation for the quantized layers"
    if wants_fp16 and not fake.fast_fp16:
        return "FP16 is not supported on this platform: no FP16 implementation for the network's layers"
    return None


def _profile_refusal(network: Network, config: BuilderConfig) -> str | None:
    for tensor in network.inputs:
        if -1 not in tensor.shape:
            continue
        shapes = next((p.shapes[tensor.name] for p in config._profiles if tensor.name in p.shapes), None)
        if shapes is None:
            return "Network has dynamic or shape inputs, but no optimization profile has been defined."
        fits = all(
            len(s) == len(tensor.shape) and all(d in (-1, v) for d, v in zip(tensor.shape, s, strict=True))
            for s in shapes
        )
        ordered = all(a <= b <= c for a, b, c in zip(*shapes, strict=True)) if fits else False
        if not (fits and ordered):
            return f"optimization profile {shapes} of {tensor.name!r} does not fit its dimensions {tensor.shape}"
    return None


def _build_refusal(fake: _FakeState, network: Network, config: BuilderConfig) -> str | None:
    """Why the fake builder finds no engine (the real one says it in the log and returns None), or None."""
    if not network.outputs:
        return "Network must have at least one output"
    workspace = config._pool_limits.get(MemoryPoolType.WORKSPACE)
    if workspace is not None and workspace < MIN_WORKSPACE_BYTES:
        return (
            f"Could not find any implementation for node {network.layers[0]} due to insufficient workspace "
            f"({workspace} bytes; the fake's tactics need {MIN_WORKSPACE_BYTES})"
        )
    return _precision_refusal(fake, network, config) or _profile_refusal(network, config)


def _noisy_onnx(model: bytes, noise: float) -> bytes:
    """The ONNX with every float32 weight scaled by 1 + noise * N(0, 1): a wrong engine, for parity tests."""
    onnx = require("onnx", purpose="the fake TensorRT's builder")
    numpy_helper = require("onnx.numpy_helper", purpose="the fake TensorRT's builder")
    proto = onnx.load_from_string(model)
    rng = np.random.default_rng(0)
    for init in proto.graph.initializer:
        if init.data_type == 1:
            weights = numpy_helper.to_array(init)
            noisy = weights * (1 + noise * rng.standard_normal(weights.shape)).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy.astype(np.float32), init.name))
    return proto.SerializeToString()


def _io_record(tensor: Tensor, mode: str) -> dict[str, Any]:
    return {"name": tensor.name, "mode": mode, "dtype": tensor.dtype.name, "shape": list(tensor.shape),
            "dim_params": tensor.dim_params}  # fmt: skip


def _serialize(fake: _FakeState, network: Network, config: BuilderConfig) -> bytes:
    """MAGIC, one line of JSON (version, I/O, profile, layers), then the ONNX the engine runs."""
    profile = {name: [list(s) for s in shapes] for p in config._profiles[:1] for name, shapes in p.shapes.items()}
    header = {
        "version": fake.version,
        "io": [_io_record(t, "INPUT") for t in network.inputs] + [_io_record(t, "OUTPUT") for t in network.outputs],
        "profile": profile,
        "layers": network.layers,
    }
    model = _noisy_onnx(network.onnx, fake.weight_noise) if fake.weight_noise else network.onnx
    return FAKE_ENGINE_MAGIC + json.dumps(header).encode() + b"\n" + model


class HostMemory:
    """IHostMemory: what build_serialized_network returns; bytes(memory) is the plan."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


class Builder(_Bound):
    _config_class: ClassVar[type[BuilderConfig]]

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        if self._fake.major < 11:
            self.platform_has_fast_fp16 = self._fake.fast_fp16
            self.platform_has_fast_int8 = self._fake.fast_int8

    def create_network(self, flags: int = 0) -> Network:
        self._fake.calls.append(("create_network", flags))
        return Network(flags)

    def create_builder_config(self) -> BuilderConfig:
        return self._config_class()

    def create_optimization_profile(self) -> OptimizationProfile:
        return OptimizationProfile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> HostMemory | None:
        self._fake.calls.append(("build", _build_record(config)))
        refusal = _build_refusal(self._fake, network, config)
        if refusal:
            _log_error(self.logger, refusal)
            return None
        return HostMemory(_serialize(self._fake, network, config))


class EngineInspector:
    def __init__(self, layers: list[str], bindings: list[str]) -> None:
        self.layers, self.bindings = layers, bindings

    def get_engine_information(self, fmt) -> str:
        return json.dumps({"Layers": self.layers, "Bindings": self.bindings})


class Engine(_Bound):
    """A deserialized fake engine: its I/O and profile, and the ONNX it was built from (`onnx`), which its
    execution contexts run with ONNX Runtime on the CPU."""

    def __init__(self, header: dict[str, Any], model: bytes, logger: Any) -> None:
        self.onnx = model
        self.logger = logger
        self.io = {t["name"]: t for t in header["io"]}
        self.profile = {name: [tuple(s) for s in shapes] for name, shapes in header["profile"].items()}
        self.layers = header["layers"]
        self._session = None

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def get_tensor_name(self, i: int) -> str:
        return list(self.io)[i]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.io[name]["dtype"]]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self.io[name]["mode"]] if name in self.io else TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.io[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        """(min, opt, max) shapes of input `name` (a static input's shape thrice)."""
        shape = self.get_tensor_shape(name)
        return list(self.profile.get(name, [shape, shape, shape]))

    def create_execution_context(self) -> ExecutionContext:
        return ExecutionContext(self)

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self.layers, list(self.io))

    def session(self):
        """The ONNX Runtime session that stands in for the engine's kernels (made on first use)."""
        if self._session is None:
            ort = require("onnxruntime", purpose="the fake TensorRT's execution context")
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(self.onnx, options, providers=["CPUExecutionProvider"])
        return self._session


def _read_host(address: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A copy of the tensor at host `address` (the fake's 'device' memory is the host's)."""
    kind = np.dtype(_NUMPY_DTYPES[dtype])
    count = math.prod(shape)
    buffer = (ctypes.c_byte * (count * kind.itemsize)).from_address(address)
    return np.frombuffer(buffer, dtype=kind, count=count).reshape(shape).copy()


def _write_host(address: int, value: np.ndarray) -> None:
    value = np.ascontiguousarray(value)
    ctypes.memmove(address, value.ctypes.data, value.nbytes)


class ExecutionContext:
    """Name-based I/O as in 8.5 to 11: set_input_shape, set_tensor_address (host addresses), execute_async_v3."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def _inputs(self) -> list[str]:
        return [name for name, t in self.engine.io.items() if t["mode"] == "INPUT"]

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        if name not in self._inputs():
            _log_error(self.engine.logger, f"setInputShape: {name!r} is not an input tensor of the engine")
            return False
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(low) or not all(lo <= d <= hi for lo, d, hi in zip(low, shape, high, strict=True)):
            _log_error(self.engine.logger, f"setInputShape: {shape} of {name!r} is outside the profile {low}..{high}")
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """An input's set shape; an output's shape with the dynamic dimensions the inputs fix (-1 if unknown)."""
        tensor = self.engine.io[name]
        if tensor["mode"] == "INPUT":
            return self.shapes.get(name, tuple(tensor["shape"]))
        bound = {}
        for input_name in self._inputs():
            params = self.engine.io[input_name]["dim_params"]
            bound |= {p: d for p, d in zip(params, self.shapes.get(input_name, ()), strict=False) if p}
        return tuple(
            d if d >= 0 else bound.get(p, -1) for d, p in zip(tensor["shape"], tensor["dim_params"], strict=True)
        )

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.io or not address:
            _log_error(self.engine.logger, f"setTensorAddress: {name!r} is not an I/O tensor, or the address is null")
            return False
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        """Run the engine's ONNX on the inputs at their addresses and write the outputs to theirs; False (and an
        error in the log) when a shape or an address is missing or an output's shape differs from the bound one."""
        io, logger = self.engine.io, self.engine.logger
        missing = [n for n in io if n not in self.addresses] + [n for n in self._inputs() if n not in self.shapes]
        if missing:
            _log_error(logger, f"enqueueV3: no address or input shape set for {sorted(set(missing))}")
            return False
        feeds = {n: _read_host(self.addresses[n], self.shapes[n], io[n]["dtype"]) for n in self._inputs()}
        outputs = [n for n in io if io[n]["mode"] == "OUTPUT"]
        values = self.engine.session().run(outputs, feeds)
        for name, value in zip(outputs, values, strict=True):
            if value.shape != self.get_tensor_shape(name):
                _log_error(logger, f"enqueueV3: {name!r} has shape {value.shape}, not {self.get_tensor_shape(name)}")
                return False
            _write_host(self.addresses[name], value.astype(_NUMPY_DTYPES[io[name]["dtype"]]))
        self.engine._fake.calls.append(("execute", {n: self.shapes[n] for n in self._inputs()}))
        return True


class Runtime(_Bound):
    _engine_class: ClassVar[type[Engine]]

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
        data = bytes(data)
        if not data.startswith(FAKE_ENGINE_MAGIC):
            _log_error(
                self.logger, "Serialization assertion magicTagRead == kMAGIC_TAG failed. Magic tag does not match"
            )
            return None
        header_line, model = data[len(FAKE_ENGINE_MAGIC) :].split(b"\n", 1)
        header = json.loads(header_line)
        if header["version"] != self._fake.version:
            _log_error(
                self.logger,
                "The engine plan file is not compatible with this version of TensorRT, expecting library version "
                f"{self._fake.version} got {header['version']}, please rebuild.",
            )
            return None
        return self._engine_class(header, model, self.logger)


def fake_tensorrt(version: str = "10.3.0", *, fast_fp16: bool = True, fast_int8: bool = True) -> types.ModuleType:
    """A module-like FAKE `tensorrt` of `version` ('8.5.2', '8.6.1', '10.3.0', '11.1.0', ...)."""
    fake = _FakeState(version, fast_fp16, fast_int8)
    weakly_typed = fake.major < 11

    def bind(cls: type, **extra: Any) -> type:
        return type(cls.__name__, (cls,), {"_fake": fake, **extra})

    config_class = bind(
        CalibratingBuilderConfig if weakly_typed else BuilderConfig, _attributes=CONFIG_ATTRIBUTES[fake.family]
    )
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.calls = fake.calls
    module.state = fake  # tests set state.accept_timing_cache / weight_noise / fast_fp16 / fast_int8
    module.IS_FAKE = True
    module.HOST_BUFFERS = True  # run_engine allocates host buffers: the fake reads and writes host addresses
    names = {
        "ILogger": ILogger,
        "Logger": Logger,
        "Builder": bind(Builder, _config_class=config_class),
        "BuilderFlag": fake.BuilderFlag,
        "NetworkDefinitionCreationFlag": fake.NetworkDefinitionCreationFlag,
        "MemoryPoolType": MemoryPoolType,
        "ProfilingVerbosity": ProfilingVerbosity,
        "LayerInformationFormat": LayerInformationFormat,
        "DataType": DataType,
        "TensorIOMode": TensorIOMode,
        "ErrorCode": ErrorCode,
        "OnnxParser": bind(OnnxParser, _error_class=ParserError10 if fake.major >= 10 else ParserError),
        "Runtime": bind(Runtime, _engine_class=bind(Engine)),
    }
    if weakly_typed:
        names["IInt8EntropyCalibrator2"] = IInt8EntropyCalibrator2
    for name, value in names.items():
        setattr(module, name, value)
    return module
