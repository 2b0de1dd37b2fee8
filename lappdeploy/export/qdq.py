"""INT8 as TensorRT wants it: a Q/DQ ONNX graph (explicit quantization), the one INT8 of every family.

    to_int8_qdq_onnx("model.onnx", "model_int8_qdq.onnx", calibration_batches)

1. Q/DQ placement and activation scales: NVIDIA ModelOpt's ONNX PTQ
   (`modelopt.onnx.quantization.quantize`, int8, entropy calibration on ONNX Runtime's CPU provider),
   which follows TensorRT's rules: inputs of Conv/Gemm quantized, weights per-channel symmetric as fp32
   initializers behind a Q/DQ pair, biases left in fp32 (TensorRT's parser rejects a DequantizeLinear
   of int32), no quantized outputs, layers TensorRT has no INT8 kernel for (odd small channel counts,
   GEMV) kept in fp32, the rest of the graph in fp32 (`high_precision_dtype="fp32"`).
2. What ModelOpt leaves shared or open, fixed here: a Q/DQ pair feeding several consumers is split into
   one pair per consumer (TensorRT wants dedicated pairs), and every residual Add input but the one INT8
   Conv/Gemm output TensorRT fuses the Add into (the larger kernel where both are) gets a pair, with the
   scale the tensor already has elsewhere, else its max |value| on the calibration images.
3. ModelOpt raises the opset to 19 (for fp16 scales, unused here); it is set back to the source graph's
   opset when no node's schema differs, so TensorRT 8.5 reads the same graph as 11.
4. `qdq_violations` checks the result against these rules; the file is written only when none is found.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from lappdeploy.errors import ExportError, first_line
from lappdeploy.export.onnx_export import save_checked, sort_topologically_
from lappdeploy.optional import require

__all__ = ["follow_tensorrt_rules_", "qdq_nodes", "qdq_violations", "quiet_tool_output", "to_int8_qdq_onnx"]

log = logging.getLogger(__name__)

_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@contextlib.contextmanager
def quiet_tool_output() -> Iterator[None]:
    """ModelOpt and ONNX Runtime's calibrator print progress bars and INFO lines: keep them for -v."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        yield
    if captured.getvalue().strip():
        log.debug("quantizer output:\n%s", captured.getvalue().rstrip())


def _stacked(calibration: Iterable[np.ndarray]) -> np.ndarray:
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in (calibration or ())]
    if not batches:
        raise ExportError("INT8 needs calibration images; give --calib-images N and a run with a dataset")
    return np.concatenate(batches)


def _ranges(model, names: list[str], images: np.ndarray, input_name: str) -> dict[str, float]:
    """Max |value| of the tensors `names` over the calibration images (ONNX Runtime, CPU): the scales of the
    few residual inputs ModelOpt left without a Q/DQ pair."""
    onnx, ort = require("onnx", purpose="Q/DQ"), require("onnxruntime", purpose="INT8 calibration")
    probe = type(model)()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    peaks = np.zeros(len(names))
    for start in range(0, len(images), 32):
        outputs = session.run(names, {input_name: images[start : start + 32]})
        peaks = np.maximum(peaks, [float(np.abs(o).max()) for o in outputs])
    return {name: max(peak, 1e-8) / 127.0 for name, peak in zip(names, peaks, strict=True)}


def _modelopt_qdq(src: Path, images: np.ndarray, input_name: str, out: Path) -> None:
    quantization = require("modelopt.onnx.quantization", purpose="INT8 Q/DQ quantization")
    quantization.quantize(
        os.fspath(src),
        quantize_mode="int8",
        calibration_data={input_name: images},
        calibration_method="entropy",
        calibration_eps=["cpu"],  # the same scales with onnxruntime or onnxruntime-gpu, GPU or not
        high_precision_dtype="fp32",  # the rest of the graph stays fp32 (no FP16 surprise on 8.5-10)
        direct_io_types=False,  # float32 input and logits
        log_level="ERROR",
        output_path=os.fspath(out),
    )


def to_int8_qdq_onnx(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    calibration: Iterable[np.ndarray],
    *,
    input_name: str = "input",
) -> int:
    """Write the Q/DQ INT8 copy of the fp32 ONNX at `src` to `dst` (atomically; see the module docstring).
    `calibration` yields float32 batches normalised as the model expects. Returns the images used."""
    onnx = require("onnx", purpose="INT8 Q/DQ quantization")
    src, dst = Path(src), Path(dst)
    images = _stacked(calibration)
    with tempfile.TemporaryDirectory(prefix=".qdq-", dir=dst.parent) as scratch:
        try:
            with quiet_tool_output():
                _modelopt_qdq(src, images, input_name, Path(scratch) / "qdq.onnx")
        except Exception as exc:  # ModelOpt and ONNX Runtime raise their own types
            first = first_line(exc)
            raise ExportError(f"INT8 Q/DQ quantization failed: {type(exc).__name__}: {first}") from None
        model = onnx.load(os.fspath(Path(scratch) / "qdq.onnx"))
    source_opset = _opset(onnx.load(os.fspath(src), load_external_data=False))
    try:
        follow_tensorrt_rules_(model, lambda names: _ranges(model, names, images, input_name), opset=source_opset)
    except ExportError:
        raise
    except Exception as exc:  # ONNX Runtime running the calibration graph
        raise ExportError(f"INT8 Q/DQ: measuring residual ranges failed: {first_line(exc)}") from None
    problems = qdq_violations(model)
    if problems:
        raise ExportError(f"the Q/DQ graph breaks TensorRT's rules: {'; '.join(problems[:3])}")
    save_checked(model, dst)
    log.debug("INT8 Q/DQ model %s calibrated on %d images", dst, len(images))
    return len(images)


# --------------------------------------------------------------------------------------------------
# graph rules


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _producers(graph) -> dict[str, object]:
    return {name: node for node in graph.node for name in node.output}


def follow_tensorrt_rules_(model, scales_of: Callable[[list[str]], dict[str, float]], *, opset: int) -> None:
    """Quantized residual inputs, dedicated Q/DQ pairs, the source opset where possible (in place).
    `scales_of(names)` gives the scales of tensors that have none in the graph yet."""
    _quantize_residual_inputs_(model.graph, scales_of)
    _dedicate_pairs_(model.graph)
    _restore_opset_(model, opset)
    sort_topologically_(model.graph)


def _copy_node(node, suffix: str, rename: dict[str, str]):
    copy = type(node)()
    copy.CopyFrom(node)
    copy.name = f"{node.name}{suffix}"
    for i, name in enumerate(copy.input):
        copy.input[i] = rename.get(name, name)
    for i, name in enumerate(copy.output):
        rename[name] = copy.output[i] = f"{name}{suffix}"
    return copy


def _dedicate_pairs_(graph) -> None:
    """Give every consumer of a DequantizeLinear its own Q/DQ pair (copies share the scale initializers)."""
    producers, consumers = _producers(graph), _consumers(graph)
    added = []
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        users = consumers.get(dq.output[0], [])
        q = producers.get(dq.input[0])
        own_q = q is not None and q.op_type == "QuantizeLinear" and len(consumers.get(q.output[0], [])) == 1
        for k, user in enumerate(users[1:], start=1):
            rename: dict[str, str] = {}
            suffix = f"_dedicated{k}"
            if own_q:
                added.append(_copy_node(q, suffix, rename))
            added.append(_copy_node(dq, suffix, rename))
            for i, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[i] = rename[name]
    graph.node.extend(added)


def _quantized_branch(node, producers) -> bool:
    """A Conv/Gemm whose data input is dequantized: TensorRT fuses a following Add into its INT8 kernel."""
    if node is None or node.op_type not in _WEIGHTED_OPS:
        return False
    source = producers.get(node.input[0])
    return source is not None and source.op_type == "DequantizeLinear"


def _residual_adds(graph, producers) -> list:
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n for n in graph.node if n.op_type == "Add" and not constants & set(n.input)]


def _kernel_area(node, inits) -> int:
    weight = inits.get(node.input[1]) if len(node.input) > 1 else None
    return int(np.prod(weight.dims[2:])) if weight is not None and len(weight.dims) > 2 else 1


def _unquantized_residual_inputs(graph) -> list[tuple[object, int]]:
    """(Add, input index) of every residual Add input TensorRT would run in high precision: not dequantized,
    and not the one INT8 Conv/Gemm output it fuses the Add into (one per Add: in a projection block both
    inputs are conv outputs, and the shortcut, the smaller kernel, then needs its own Q/DQ pair)."""
    producers = _producers(graph)
    inits = {i.name: i for i in graph.initializer}
    found = []
    for add in _residual_adds(graph, producers):
        sources = [producers.get(name) for name in add.input]
        fusable = [i for i, src in enumerate(sources) if _quantized_branch(src, producers)]
        fused = max(fusable, key=lambda i: _kernel_area(sources[i], inits), default=None)
        for i, src in enumerate(sources):
            if i != fused and not (src is not None and src.op_type == "DequantizeLinear"):
                found.append((add, i))
    return found


def _quantize_residual_inputs_(graph, scales_of: Callable[[list[str]], dict[str, float]]) -> None:
    """Put a Q/DQ pair on every unquantized residual Add input, sharing the tensor's existing scale."""
    numpy_helper = require("onnx.numpy_helper", purpose="Q/DQ")
    open_inputs = _unquantized_residual_inputs(graph)
    existing = {n.input[0]: (n.input[1], n.input[2]) for n in graph.node if n.op_type == "QuantizeLinear"}
    missing = sorted({add.input[i] for add, i in open_inputs} - existing.keys())
    for name, scale in (scales_of(missing) if missing else {}).items():
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{name}_residual_scale"),
                numpy_helper.from_array(np.array(0, dtype=np.int8), f"{name}_residual_zero_point"),
            ]
        )
        existing[name] = (f"{name}_residual_scale", f"{name}_residual_zero_point")
    for add, i in open_inputs:
        name = add.input[i]
        stem = f"{name}_{add.name}_{i}"
        graph.node.extend(qdq_nodes(name, *existing[name], stem))
        add.input[i] = f"{stem}_dq"


def qdq_nodes(tensor: str, scale: str, zero_point: str, stem: str, **attributes) -> list:
    """A QuantizeLinear / DequantizeLinear pair on `tensor` (named `{stem}_Q` / `{stem}_DQ`, writing `{stem}_q` and
    `{stem}_dq`) with the initializers `scale` and `zero_point`; `attributes`: e.g. `axis` for per-channel."""
    helper = require("onnx.helper", purpose="Q/DQ")
    return [
        helper.make_node("QuantizeLinear", [tensor, scale, zero_point], [f"{stem}_q"], name=f"{stem}_Q", **attributes),
        helper.make_node("DequantizeLinear", [f"{stem}_q", scale, zero_point], [f"{stem}_dq"], name=f"{stem}_DQ",
                         **attributes),
    ]  # fmt: skip


def _restore_opset_(model, opset: int) -> None:
    """Lower the default-domain opset to `opset` when every node means the same there (Q/DQ: int8 with
    float32 scales, valid since opset 13)."""
    defs = require("onnx.defs", purpose="Q/DQ")
    current = _opset(model)
    if current <= opset:
        return
    floats = {i.name for i in model.graph.initializer if i.data_type == 1}  # TensorProto.FLOAT
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            return
        if node.op_type in _QDQ:
            if node.input[1] not in floats or any(a.name not in ("axis",) for a in node.attribute):
                return
        elif defs.get_schema(node.op_type, opset).since_version != defs.get_schema(node.op_type, current).since_version:
            log.debug("Q/DQ graph keeps opset %d: %s differs at opset %d", current, node.op_type, opset)
            return
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset


# --------------------------------------------------------------------------------------------------
# the check


def qdq_violations(model) -> list[str]:
    """TensorRT's explicit-quantization rules that `model` breaks (empty when it follows all of them)."""
    graph = model.graph
    producers, consumers = _producers(graph), _consumers(graph)
    inits = {i.name: i for i in graph.initializer}
    problems = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear":
            source = inits.get(node.input[0])
            if source is not None and source.data_type != 3:  # TensorProto.INT8
                problems.append(f"DequantizeLinear {node.name} reads a non-int8 initializer (int32 bias?)")
            if len(consumers.get(node.output[0], [])) > 1:
                problems.append(f"the Q/DQ pair of {node.input[0]} feeds {len(consumers[node.output[0]])} nodes")
        if node.op_type == "QuantizeLinear" and len(consumers.get(node.output[0], [])) > 1:
            problems.append(f"QuantizeLinear {node.name} feeds several DequantizeLinear nodes")
    for add, i in _unquantized_residual_inputs(graph):
        problems.append(f"input {add.input[i]} of the residual Add {add.name} is not quantized")
    for output in graph.output:
        source = producers.get(output.name)
        if source is not None and source.op_type in _QDQ:
            problems.append(f"graph output {output.name} is quantized")
    return problems + _weight_violations(graph, producers, inits)


def _weight_violations(graph, producers, inits) -> list[str]:
    numpy_helper = require("onnx.numpy_helper", purpose="Q/DQ")
    problems = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        dq = producers.get(node.input[1])
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            # a layer ModelOpt keeps in high precision (channels TensorRT has no INT8 kernel for, GEMV)
            # is fine; one with an INT8 input and float weights is not
            if _quantized_branch(node, producers):
                problems.append(f"{node.op_type} {node.name} has a quantized input but float weights")
            continue
        scale = numpy_helper.to_array(inits[q.input[1]])
        zero = numpy_helper.to_array(inits[q.input[2]]) if len(q.input) > 2 else np.zeros(1, np.int8)
        if node.op_type == "Conv" and scale.size != inits[q.input[0]].dims[0]:
            problems.append(f"the weights of Conv {node.name} are not quantized per output channel")
        if zero.any() or zero.dtype != np.int8:
            problems.append(f"the weights of {node.op_type} {node.name} are not symmetric int8")
    return problems
