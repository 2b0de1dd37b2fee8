"""How each TensorRT family builds each precision: one table, read by the engine builder
(`tensorrt.build_engine`), by trtexec.sh (`trtexec`), by `lappdeploy export` and by `lappdeploy bench`.

    family  where                    network flags       fp16                     int8 (explicit quantization)
    8.5     JetPack 5.1              EXPLICIT_BATCH      BuilderFlag.FP16         Q/DQ ONNX + BuilderFlag.INT8
    8.6     JetPack 6.0              EXPLICIT_BATCH      BuilderFlag.FP16         Q/DQ ONNX + BuilderFlag.INT8
    10      JetPack 6.x, desktop     0 (explicit batch)  BuilderFlag.FP16         Q/DQ ONNX + BuilderFlag.INT8
    11      desktop                  0 (strongly typed)  an FP16 ONNX, fp32 I/O   Q/DQ ONNX

INT8 is the same Q/DQ graph (`lappdeploy.export.qdq`) on every family, in the Python builder and in
trtexec.sh alike: no implicit calibrator, so `--precision int8` never yields two different engines.
fp32 clears TF32 everywhere. 8.5 has no builder optimization level (API or trtexec flag). 11.x removed
trtexec's precision flags and turned CUDA graphs, spin-wait and no-data-transfer timing on by default,
so older families get those as explicit flags and the numbers of all families mean the same thing.
Pure data: no onnx, no tensorrt.
"""

from __future__ import annotations

from dataclasses import dataclass

from lappdeploy.errors import ConfigError, ExportError, LappDeployError

__all__ = [
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

_FAMILIES = {  # family: (network creation flags, strongly typed, builder optimization level exists)
    "8.5": (("EXPLICIT_BATCH",), False, False),  # JetPack 5.1; optimization levels came with 8.6
    "8.6": (("EXPLICIT_BATCH",), False, True),
    "10": ((), False, True),  # explicit batch is the only mode (the flag is deprecated)
    "11": ((), True, True),
}
FAMILIES = tuple(_FAMILIES)
PRECISIONS = ("fp32", "fp16", "int8")
FP32_ONNX = "model.onnx"
FP16_ONNX = "model_fp16.onnx"  # FP16 weights and activations, float32 inputs and outputs
QDQ_ONNX = "model_int8_qdq.onnx"  # QuantizeLinear/DequantizeLinear pairs (explicit INT8)
# max |TensorRT - ONNX Runtime fp32| / max |logits| accepted after a build. fp32 builds clear TF32.
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 2.5e-1}
# trtexec 11.x defaults, spelled out for 8.5/8.6/10 (CUDA graphs: per --cuda-graph, see trtexec_args)
_TRTEXEC_11_DEFAULTS = ("--noDataTransfers", "--useSpinWait", "--separateProfileRun")


@dataclass(frozen=True)
class TrtRecipe:
    """What one (family, precision) pair needs from the builder and from trtexec."""

    family: str
    precision: str
    onnx_variant: str  # the graph the Python builder parses (FP32_ONNX, FP16_ONNX or QDQ_ONNX)
    trtexec_onnx: str  # the graph trtexec.sh reads
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names, OR-ed into create_network()
    builder_flags: tuple[str, ...]  # BuilderFlag names to set
    trtexec_flags: tuple[str, ...]  # appended to the shape, pool, timing and export flags
    precision_mode: str  # how the precision is obtained, as recorded in export.json
    strongly_typed: bool  # 11.x: no precision flags or platform_has_fast_*; the ONNX carries the types
    has_opt_level: bool  # builder_optimization_level / --builderOptimizationLevel exist (8.6+)

    @property
    def clears_tf32(self) -> bool:
        return self.precision == "fp32"  # fp32 means fp32: TF32 would cost ~1e-3 relative accuracy

    @property
    def needs_calibration(self) -> bool:
        """INT8 needs calibration images for the Q/DQ graph's scales."""
        return QDQ_ONNX in (self.onnx_variant, self.trtexec_onnx)

    @property
    def parity_tolerance(self) -> float:
        return TOLERANCE[self.precision]

    def cuda_graph_flags(self, cuda_graph: bool) -> tuple[str, ...]:
        """trtexec flags that launch the timed inferences as a CUDA graph, or not (--cuda-graph)."""
        if not self.strongly_typed:
            return ("--useCudaGraph",) if cuda_graph else ()
        if not cuda_graph:  # 11.x made CUDA graphs trtexec's default and documents no switch to turn them off
            raise ConfigError("trtexec of TensorRT 11 always times with CUDA graphs; drop --no-cuda-graph")
        return ()


_INT8_MODE = "explicit: Q/DQ ONNX (ModelOpt, entropy calibration)"
_ROWS = (
    # family, precision, builder parses, trtexec reads, builder flags, trtexec flags, precision mode
    *(
        row
        for family in ("8.5", "8.6", "10")
        for row in (
            (family, "fp32", FP32_ONNX, FP32_ONNX, (), ("--noTF32",), "fp32 (TF32 off)"),
            (family, "fp16", FP32_ONNX, FP32_ONNX, ("FP16",), ("--fp16",), "BuilderFlag.FP16"),
            (family, "int8", QDQ_ONNX, QDQ_ONNX, ("INT8",), ("--int8",), f"{_INT8_MODE} + BuilderFlag.INT8"),
        )
    ),
    ("11", "fp32", FP32_ONNX, FP32_ONNX, (), ("--noTF32",), "fp32 (TF32 off)"),
    ("11", "fp16", FP16_ONNX, FP16_ONNX, (), (), "strongly typed: FP16 ONNX (ModelOpt AutoCast), fp32 I/O"),
    ("11", "int8", QDQ_ONNX, QDQ_ONNX, (), (), f"strongly typed, {_INT8_MODE}"),
)


def _recipe(family, precision, onnx_variant, trtexec_onnx, builder_flags, trtexec_flags, mode) -> TrtRecipe:
    network_flags, strongly_typed, has_opt_level = _FAMILIES[family]
    defaults = () if strongly_typed else _TRTEXEC_11_DEFAULTS
    return TrtRecipe(
        family=family,
        precision=precision,
        onnx_variant=onnx_variant,
        trtexec_onnx=trtexec_onnx,
        network_flags=network_flags,
        builder_flags=builder_flags,
        trtexec_flags=(*defaults, *trtexec_flags),
        precision_mode=mode,
        strongly_typed=strongly_typed,
        has_opt_level=has_opt_level,
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
