"""A FAKE of the small TensorRT Python API surface lappdeploy uses, for testing the 8.6 / 10 / 11 branches
on machines without TensorRT or a GPU. It builds nothing: `build_serialized_network` returns a few
bytes, and every call is recorded in `fake.calls` so tests can assert which branch ran.

What differs between the fake families mirrors the real API:
  8.5: as 8.6, without IBuilderConfig.builder_optimization_level (added in 8.6);
  8.6: NetworkDefinitionCreationFlag.EXPLICIT_BATCH, BuilderFlag.FP16/INT8, IInt8EntropyCalibrator2,
       platform_has_fast_fp16/int8;
  10:  as 8.6 (EXPLICIT_BATCH deprecated, still present);
  11:  none of them: no precision flags, no calibrators, no platform_has_fast_* (strongly typed).
The ONNX parser is real in the sense that it loads the file with `onnx` and records its op types and
initializer dtypes, so tests see which graph (fp32, FP16, Q/DQ) a build was given.

Each fake module gets its own subclasses of the classes below, bound to its `_FakeState` (version, call
log, fast-precision answers, BuilderFlag enum), so two fakes never share a call log.
"""

from __future__ import annotations

import enum
import json
import types
from typing import Any, ClassVar

from lappdeploy.optional import require

__all__ = ["FAKE_ENGINE_BYTES", "fake_tensorrt"]

FAKE_ENGINE_BYTES = b"fake-tensorrt-engine"

MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE"])
ProfilingVerbosity = enum.Enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "DETAILED", "NONE"])
LayerInformationFormat = enum.Enum("LayerInformationFormat", ["ONELINE", "JSON"])
DataType = enum.Enum("DataType", ["FLOAT", "HALF", "INT8", "INT32"])
TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])


class _FakeState:
    """What one fake `tensorrt` module knows: its major version, its call log and its version's enums."""

    def __init__(self, version: str, fast_fp16: bool, fast_int8: bool) -> None:
        self.major, self.minor = (int(part) for part in version.split(".")[:2])
        self.calls: list[tuple[str, Any]] = []
        self.fast_fp16, self.fast_int8 = fast_fp16, fast_int8
        self.accept_timing_cache = True  # set_timing_cache's answer (False: a cache of another device)
        self.io_dtypes = {"input": DataType.FLOAT, "logits": DataType.FLOAT}  # what built engines report
        weakly_typed = self.major < 11  # 11.x removed the precision flags, EXPLICIT_BATCH and calibrators
        self.BuilderFlag = enum.Enum("BuilderFlag", ["TF32"] + (["FP16", "INT8"] if weakly_typed else []))
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


class Logger(ILogger):
    pass


class IInt8EntropyCalibrator2:
    def __init__(self) -> None:
        pass


class Tensor:
    def __init__(self, name: str) -> None:
        self.name = name


class Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[Tensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> Tensor:
        return self.inputs[i]


class ParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def desc(self) -> str:
        return self.text


class OnnxParser(_Bound):
    def __init__(self, network: Network, logger: Any) -> None:
        self.network = network
        self.errors: list[ParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> ParserError:
        return self.errors[i]

    def parse(self, data: bytes) -> bool:
        onnx = require("onnx", purpose="the fake TensorRT's ONNX parser")
        try:
            model = onnx.load_from_string(data)
        except Exception as exc:
            self.errors.append(ParserError(f"cannot read the ONNX: {exc}"))
            return False
        self.network.inputs = [Tensor(i.name) for i in model.graph.input]
        graph = {
            "ops": sorted({n.op_type for n in model.graph.node}),
            "initializer_types": sorted({i.data_type for i in model.graph.initializer}),
            "input_types": [i.type.tensor_type.elem_type for i in model.graph.input],
            "output_types": [o.type.tensor_type.elem_type for o in model.graph.output],
        }
        self._fake.calls.append(("parse", graph))
        return True


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
    def __init__(self) -> None:
        self.flags = {self._fake.BuilderFlag.TF32}  # TF32 is on by default in TensorRT
        self.pool_limits: dict[Any, int] = {}
        self.builder_optimization_level = 3
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self.profiles: list[OptimizationProfile] = []
        self.timing_cache: TimingCache | None = None

    def set_memory_pool_limit(self, pool, size: int) -> None:
        self.pool_limits[pool] = size

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag) -> None:
        self.flags.discard(flag)

    def add_optimization_profile(self, profile: OptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache(data)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        if not self._fake.accept_timing_cache and cache.data:
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        return self.timing_cache or TimingCache(b"")


class BuilderConfig85(BuilderConfig):
    """8.5: no builder optimization levels (setting the attribute fails as on the real pybind class)."""

    def __init__(self) -> None:
        super().__init__()
        del self.__dict__["builder_optimization_level"]
        self.__dict__["_sealed"] = True

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "builder_optimization_level" and self.__dict__.get("_sealed"):
            raise AttributeError("'tensorrt.IBuilderConfig' object has no attribute 'builder_optimization_level'")
        super().__setattr__(name, value)


class CalibratingBuilderConfig(BuilderConfig):
    """8.6 / 10: a config that takes an INT8 calibrator and its profile."""

    def __init__(self) -> None:
        super().__init__()
        self.int8_calibrator = None
        self.calibration_profile = None

    def set_calibration_profile(self, profile: OptimizationProfile) -> None:
        self.calibration_profile = profile


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


class Builder(_Bound):
    _config_class: ClassVar[type[BuilderConfig]]

    def __init__(self, logger: Any) -> None:
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

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
        calibrated = _calibrate(getattr(config, "int8_calibrator", None))
        build = {
            "flags": sorted(f.name for f in config.flags),
            "workspace": config.pool_limits.get(MemoryPoolType.WORKSPACE),
            "opt_level": getattr(config, "builder_optimization_level", None),
            "verbosity": config.profiling_verbosity.name,
            "profiles": [p.shapes for p in config.profiles],
            "calibration_profile": getattr(getattr(config, "calibration_profile", None), "shapes", None),
            "calibrated_images": calibrated,
            "timing_cache_in": config.timing_cache.data if config.timing_cache else None,
        }
        self._fake.calls.append(("build", build))
        return FAKE_ENGINE_BYTES


class EngineInspector:
    def get_engine_information(self, fmt) -> str:
        return json.dumps({"Layers": ["fake layer"], "Bindings": ["input", "logits"]})


class Engine(_Bound):
    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector()

    @property
    def num_io_tensors(self) -> int:
        return len(self._fake.io_dtypes)

    def get_tensor_name(self, i: int) -> str:
        return list(self._fake.io_dtypes)[i]

    def get_tensor_dtype(self, name: str):
        return self._fake.io_dtypes[name]

    def get_tensor_mode(self, name: str):
        return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT


class Runtime(_Bound):
    def __init__(self, logger: Any) -> None:
        pass

    def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
        return self._engine_class() if bytes(data) == FAKE_ENGINE_BYTES else None


def fake_tensorrt(version: str = "10.3.0", *, fast_fp16: bool = True, fast_int8: bool = True) -> types.ModuleType:
    """A module-like FAKE `tensorrt` of `version` ('8.6.1', '10.3.0', '11.1.0', ...)."""
    fake = _FakeState(version, fast_fp16, fast_int8)
    weakly_typed = fake.major < 11

    def bind(cls: type, **extra: Any) -> type:
        return type(cls.__name__, (cls,), {"_fake": fake, **extra})

    config_class = bind(CalibratingBuilderConfig if weakly_typed else BuilderConfig)
    if (fake.major, fake.minor) < (8, 6):
        config_class = bind(type("BuilderConfig", (BuilderConfig85, CalibratingBuilderConfig), {}))
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    module.calls = fake.calls
    module.state = fake  # tests set state.accept_timing_cache / state.io_dtypes
    module.IS_FAKE = True
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
        "OnnxParser": bind(OnnxParser),
        "Runtime": bind(Runtime, _engine_class=bind(Engine)),
    }
    if weakly_typed:
        names["IInt8EntropyCalibrator2"] = IInt8EntropyCalibrator2
    for name, value in names.items():
        setattr(module, name, value)
    return module
