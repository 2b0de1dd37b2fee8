"""How each TensorRT family builds each precision: one table, read by the engine builder
(`tensorrt.build_engine`), by trtexec.sh (`trtexec`), by `lappdeploy export` and by `lappdeploy bench`.

    family  network flags         fp16                         int8
    8.6     EXPLICIT_BATCH        BuilderFlag.FP16             BuilderFlag.INT8 + IInt8EntropyCalibrator2
    10      0 (explicit batch)    BuilderFlag.FP16             BuilderFlag.INT8 + IInt8EntropyCalibrator2
    11      0 (strongly typed)    an FP16 ONNX, fp32 I/O       a Q/DQ ONNX calibrated on the same images

fp32 clears TF32 everywhere. trtexec.sh builds INT8 from the Q/DQ ONNX on every family (explicit
quantization: no calibration cache to carry to the target), and 11.x removed trtexec's precision flags
and turned CUDA graphs, spin-wait and no-data-transfer timing on by default, so 8.6/10 get those as
explicit flags and the numbers of all families mean the same thing. Pure data: no onnx, no tensorrt.
"""

from __future__ import annotations

from dataclasses import dataclass

from lappdeploy.errors import ExportError, LappDeployError

__all__ = [
    "CALIBRATION_CACHE",
    "FAMILIES",
    "FP16_ONNX",
    "FP32_ONNX",
    "PRECISIONS",
    "QDQ_ONNX",
    "RECIPES",
    "TOLERANCE",
    "TrtRecipe",
    "engine_file",
    "layer_info_file",
    "trt_recipe",
    "trtexec_log_file",
    "trtexec_times_file",
]

_FAMILIES = {  # family: (network creation flags, strongly typed)
    "8.6": (("EXPLICIT_BATCH",), False),
    "10": ((), False),  # explicit batch is the only mode (the flag is deprecated)
    "11": ((), True),
}
FAMILIES = tuple(_FAMILIES)
PRECISIONS = ("fp32", "fp16", "int8")
FP32_ONNX = "model.onnx"
FP16_ONNX = "model_fp16.onnx"  # FP16 weights and activations, float32 inputs and outputs
QDQ_ONNX = "model_int8_qdq.onnx"  # QuantizeLinear/DequantizeLinear pairs (explicit INT8)
CALIBRATION_CACHE = "calibration.cache"  # the entropy calibrator's scales (8.6/10 INT8), reused when present
# max |TensorRT - ONNX Runtime fp32| / max |logits| accepted after a build. fp32 builds clear TF32.
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 2.5e-1}
# trtexec 11.x defaults, spelled out for 8.6/10
_TRTEXEC_11_DEFAULTS = ("--useCudaGraph", "--noDataTransfers", "--useSpinWait", "--separateProfileRun")


@dataclass(frozen=True)
class TrtRecipe:
    """What one (family, precision) pair needs from the builder and from trtexec."""

    family: str
    precision: str
    onnx_variant: str  # the graph the Python builder parses (FP32_ONNX, FP16_ONNX or QDQ_ONNX)
    trtexec_onnx: str  # the graph trtexec.sh reads
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names, OR-ed into create_network()
    builder_flags: tuple[str, ...]  # BuilderFlag names to set
    calibrator: bool  # IInt8EntropyCalibrator2 on the fp32 graph (+ calibration profile and cache)
    trtexec_flags: tuple[str, ...]  # appended to the shape, pool, timing and export flags
    precision_mode: str  # how the precision is obtained, as recorded in export.json
    strongly_typed: bool  # 11.x: no precision flags or platform_has_fast_*; the ONNX carries the types

    @property
    def clears_tf32(self) -> bool:
        return self.precision == "fp32"  # fp32 means fp32: TF32 would cost ~1e-3 relative accuracy

    @property
    def needs_calibration(self) -> bool:
        """INT8 needs calibration images on every path (calibrator, or the Q/DQ graph's scales)."""
        return self.calibrator or QDQ_ONNX in (self.onnx_variant, self.trtexec_onnx)

    @property
    def parity_tolerance(self) -> float:
        return TOLERANCE[self.precision]


_ROWS = (
    # family, precision, builder parses, trtexec reads, builder flags, calibrator, trtexec flags, precision mode
    ("8.6", "fp32", FP32_ONNX, FP32_ONNX, (), False, ("--noTF32",), "fp32 (TF32 off)"),
    ("8.6", "fp16", FP32_ONNX, FP32_ONNX, ("FP16",), False, ("--fp16",), "BuilderFlag.FP16"),
    ("8.6", "int8", FP32_ONNX, QDQ_ONNX, ("INT8",), True, ("--int8",), "BuilderFlag.INT8 + IInt8EntropyCalibrator2"),
    ("10", "fp32", FP32_ONNX, FP32_ONNX, (), False, ("--noTF32",), "fp32 (TF32 off)"),
    ("10", "fp16", FP32_ONNX, FP32_ONNX, ("FP16",), False, ("--fp16",), "BuilderFlag.FP16"),
    ("10", "int8", FP32_ONNX, QDQ_ONNX, ("INT8",), True, ("--int8",), "BuilderFlag.INT8 + IInt8EntropyCalibrator2"),
    ("11", "fp32", FP32_ONNX, FP32_ONNX, (), False, ("--noTF32",), "fp32 (TF32 off)"),
    ("11", "fp16", FP16_ONNX, FP16_ONNX, (), False, (), "strongly typed: FP16 ONNX, fp32 I/O"),
    ("11", "int8", QDQ_ONNX, QDQ_ONNX, (), False, (), "strongly typed: Q/DQ ONNX (entropy calibration)"),
)


def _recipe(family, precision, onnx_variant, trtexec_onnx, builder_flags, calibrator, trtexec_flags, mode) -> TrtRecipe:
    network_flags, strongly_typed = _FAMILIES[family]
    defaults = () if strongly_typed else _TRTEXEC_11_DEFAULTS
    return TrtRecipe(
        family=family,
        precision=precision,
        onnx_variant=onnx_variant,
        trtexec_onnx=trtexec_onnx,
        network_flags=network_flags,
        builder_flags=builder_flags,
        calibrator=calibrator,
        trtexec_flags=(*defaults, *trtexec_flags),
        precision_mode=mode,
        strongly_typed=strongly_typed,
    )


RECIPES: dict[tuple[str, str], TrtRecipe] = {(row[0], row[1]): _recipe(*row) for row in _ROWS}


def trt_recipe(family: str, precision: str, *, error: type[LappDeployError] = ExportError) -> TrtRecipe:
    """The recipe of `family` and `precision`; an unknown one raises `error` naming the valid values."""
    if family not in FAMILIES:
        raise error(f"TensorRT family must be one of {', '.join(FAMILIES)} (got {family!r})")
    if precision not in PRECISIONS:
        raise error(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    return RECIPES[(family, precision)]


def engine_file(precision: str) -> str:
    """The engine's file name in an export directory (the builder and trtexec.sh write the same)."""
    return f"model_{precision}.engine"


def layer_info_file(precision: str) -> str:
    return f"layers_{precision}.json"


def trtexec_times_file(precision: str) -> str:
    """trtexec --exportTimes output: one entry per timed inference (what `lappdeploy bench` reads)."""
    return f"times_{precision}.json"


def trtexec_log_file(precision: str) -> str:
    """trtexec.sh's copy of trtexec's console log (TensorRT version, device, throughput)."""
    return f"trtexec_{precision}.log"
