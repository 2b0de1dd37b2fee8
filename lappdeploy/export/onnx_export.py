"""ONNX export that verifies itself: fold, export, check, simplify, compare with PyTorch, count MACs.

    record = to_onnx(model, example_inputs, "model.onnx", exporter="legacy", dynamic_batch=True)

The caller's model is never changed: a copy is put in eval mode and its bypass blocks and conv->BN
pairs are folded (the deploy form whose MACs `count_macs` reports). The file appears at `path` only
after every check passed; a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import inspect
import io
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lappdeploy.config import DEFAULT_OPSET, resolve_opset
from lappdeploy.environment import package_version
from lappdeploy.errors import ConfigError, ExportError, first_line
from lappdeploy.export.onnx_macs import count_onnx_macs
from lappdeploy.io import give_default_permissions
from lappdeploy.models import count_macs, unwrap
from lappdeploy.optional import require
from lappdeploy.surgery import SurgeryError, fold_bn_, fold_bypass_, has_bypass, surgery_steps

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "PARITY_TOLERANCE",
    "OnnxExport",
    "check_onnx",
    "deploy_copy",
    "ort_session",
    "save_checked",
    "sort_topologically_",
    "to_onnx",
]

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PARITY_TOLERANCE = 1e-3  # max |ORT - PyTorch| / max |PyTorch logits|, fp32
_MAX_DYNAMIC_BATCH = 4096  # upper bound declared to torch.export for the batch dimension
_VERSION_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxslim", "onnxscript")


@dataclass
class OnnxExport:
    """What was exported and what the checks measured (written to export.json)."""

    path: str
    exporter: str  # the exporter that produced the file
    requested_exporter: str
    fallback_reason: str | None  # why the first exporter tried was replaced (auto, or dynamo with fallback)
    opset: int
    dynamic_batch: bool
    simplified: bool
    input_shape: list[int]  # per sample, C, H, W
    input_name: str
    output_name: str
    parity: list[dict[str, float]]  # per batch size: max abs error, logit scale, relative error
    parity_tolerance: float
    ort_threads: int
    file_bytes: int
    macs: int  # per sample, counted from the ONNX graph
    params: int  # counted from the ONNX graph
    torch_macs: int  # per sample, count_macs of the folded PyTorch model
    torch_params: int
    zero_bias_adds_dropped: int  # per sample: bias adds of all-zero biases the exporter removed as no-ops
    export_s: float  # wall time of the exporter itself
    total_s: float  # export + checks
    versions: dict[str, str | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy_copy(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module:
    """An eval-mode copy of `model` with every bypass block and conv->BN pair folded (the caller's model
    is untouched). BN folding is skipped when the model records it was already folded."""
    deploy = copy.deepcopy(unwrap(model)).eval()
    if has_bypass(deploy):
        fold_bypass_(deploy)
    already_folded = any(step["op"] == "fold_bn" for step in surgery_steps(deploy))
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deploy.modules())
    if has_bn and not already_folded:
        try:
            fold_bn_(deploy, example_inputs)  # finds conv->BN pairs by tracing; needs autograd enabled
        except SurgeryError as exc:
            # where torch-pruning cannot trace a model (an op it cannot map channels through), torch.fx
            # finds the same conv->BN pairs if the model is symbolically traceable
            from torch.fx.experimental.optimization import fuse

            try:
                deploy = fuse(deploy)
            except Exception as fx_exc:
                raise ExportError(
                    f"cannot fold the BatchNorms of {type(deploy).__name__}: {exc}; torch.fx: {fx_exc}"
                ) from None
            log.debug("BN folded with torch.fx (%s)", exc)
    return deploy.eval()


def _forward_arg_name(model: nn.Module) -> str:
    params = [p for p in inspect.signature(model.forward).parameters.values() if p.kind != p.VAR_KEYWORD]
    return params[0].name if params else "x"


def _run_exporter(model, example, path: Path, *, exporter: str, opset: int, dynamic_batch: bool) -> None:
    """Call torch.onnx.export; its progress prints and deprecation warnings go to the debug log."""
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "dynamo": exporter == "dynamo",
    }
    if exporter == "dynamo":
        kwargs["external_data"] = False  # weights inside the one .onnx file
        kwargs["verbose"] = False
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=_MAX_DYNAMIC_BATCH)
            kwargs["dynamic_shapes"] = {_forward_arg_name(model): {0: batch}}
    else:
        kwargs["do_constant_folding"] = True
        if dynamic_batch:
            kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with (
        warnings.catch_warnings(record=True) as caught,
        _fd_output_to_debug(f"torch.onnx ({exporter})"),
        torch.no_grad(),
    ):
        warnings.simplefilter("always")
        torch.onnx.export(model, (example,), str(path), **kwargs)
    for warning in caught:
        log.debug("torch.onnx (%s): %s", exporter, warning.message)


@contextlib.contextmanager
def _fd_output_to_debug(what: str) -> Iterator[None]:
    """Send everything written to stdout/stderr meanwhile, by Python or by C++ (the legacy exporter prints
    its whole TorchScript graph from C++ before raising), to the debug log instead of the terminal."""
    with tempfile.TemporaryFile(mode="w+b") as sink, contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        saved = []
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                ctypes.CDLL(None).fflush(None)  # C stdio buffers still holding exporter output
            for fd, copy_fd in saved:
                os.dup2(copy_fd, fd)
                os.close(copy_fd)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                log.debug("%s output:\n%s", what, text)


def check_onnx(path: str | os.PathLike[str]):
    """onnx.checker full check (types and shapes too) of the file at `path`; returns the loaded model."""
    onnx = require("onnx", purpose="checking ONNX models")
    try:
        onnx.checker.check_model(os.fspath(path), full_check=True)
        return onnx.load(os.fspath(path))
    except Exception as exc:  # ValidationError, DecodeError, InferenceError ...
        first = first_line(exc)
        raise ExportError(f"{path} is not a valid ONNX model: {first}") from None


def sort_topologically_(graph) -> None:
    """Reorder `graph.node` so every node comes after the producers of its inputs (stable otherwise)."""
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [node for node in pending if all(name in available for name in node.input)]
        if not ready:
            raise ExportError("the ONNX graph has a cycle or an input no node produces")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(node) for node in ready}
        pending = [node for node in pending if id(node) not in ready_ids]
    copies = [type(node)() for node in ordered]
    for copy_, node in zip(copies, ordered, strict=True):
        copy_.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def save_checked(model, dst: str | os.PathLike[str]) -> Path:
    """Save `model` to `dst` atomically, after the full checker passed on the written file."""
    onnx = require("onnx", purpose="saving ONNX models")
    dst = Path(dst)
    with _temporary_next_to(dst) as tmp:
        onnx.save(model, os.fspath(tmp))
        check_onnx(tmp)
        give_default_permissions(tmp)
        os.replace(tmp, dst)
    return dst


def ort_session(path: str | os.PathLike[str], threads: int | None = None):
    """A CPU ONNX Runtime session with an explicit thread count (recorded with every number)."""
    ort = require("onnxruntime", purpose="checking ONNX exports")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def _parity_batches(example_batch: int, dynamic_batch: bool, batches: tuple[int, ...] | None) -> list[int]:
    if not dynamic_batch:
        return [example_batch, example_batch]  # two independent draws at the one batch size
    if batches:
        low, high = min(batches), max(batches)
        return [low, high] if high > low else [low, low + 1]
    return [1, 3]


def _parity(session, reference: nn.Module, input_shape, batches: list[int], seed: int) -> list[dict[str, float]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for batch in batches:
        x = torch.randn((batch, *input_shape), generator=generator)
        with torch.no_grad():
            expected = reference(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch's {expected.shape} at batch {batch}")
        error = float(abs(got - expected).max())
        scale = float(abs(expected).max()) or 1.0
        rows.append({"batch": batch, "max_abs_error": error, "logit_scale": scale, "relative_error": error / scale})
    return rows


def _check_macs(onnx_cost, deploy: nn.Module, input_shape) -> tuple[Any, int]:
    """Compare the MACs counted in the ONNX graph with `count_macs` of the folded PyTorch model; returns
    PyTorch's count and the bias adds the export dropped.

    The multiply-accumulates must be equal exactly. Bias adds must be equal too, except for biases that
    are exactly zero (fresh layers, BN folded at initialisation): exporters remove those adds as no-ops.
    """
    torch_cost = count_macs(deploy, input_shape)
    all_bias, zero_bias = 0, 0
    for layer in torch_cost.layers:
        bias = getattr(deploy.get_submodule(layer.name), "bias", None)
        if bias is None:
            continue
        adds = math.prod(layer.output_shape) * layer.calls
        all_bias += adds
        if not bool(bias.detach().any()):
            zero_bias += adds
    onnx_bias = sum(layer.bias_adds for layer in onnx_cost.layers)
    products = (onnx_cost.macs - onnx_bias, torch_cost.macs - all_bias)
    if products[0] != products[1] or not all_bias - zero_bias <= onnx_bias <= all_bias:
        raise ExportError(
            f"MACs counted in the ONNX graph ({onnx_cost.macs:,}: {products[0]:,} multiply-accumulates + "
            f"{onnx_bias:,} bias adds) differ from PyTorch's ({torch_cost.macs:,}: {products[1]:,} + {all_bias:,}); "
            "the exported graph is not the model that was costed"
        )
    return torch_cost, all_bias - onnx_bias


def _versions() -> dict[str, str | None]:
    return {name: package_version(name) for name in _VERSION_PACKAGES}


def _deploy_inputs(model: nn.Module, example_inputs: torch.Tensor, dynamic_batch: bool):
    """(example batch on the CPU, fp32 eval copy of the model as reference, its folded deploy copy)."""
    if example_inputs.dim() != 4:
        raise ConfigError(f"example_inputs must be one (N, C, H, W) batch (got shape {tuple(example_inputs.shape)})")
    example = example_inputs.detach().float().cpu()
    if dynamic_batch and example.shape[0] < 2:
        # torch.export specialises a dimension of size 1 to a constant; batch 2 keeps it symbolic
        example = example.expand(2, *example.shape[1:]).contiguous()
    reference = copy.deepcopy(unwrap(model)).float().cpu().eval()
    return example, reference, deploy_copy(reference, example)


@contextlib.contextmanager
def _temporary_next_to(path: Path) -> Iterator[Path]:
    """A temporary file in `path`'s directory (so a rename can move it into place), deleted on failure."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _export(deploy, example, tmp: Path, *, exporter: str, opset: int, dynamic_batch: bool, fallback: bool):
    """Run the exporter; "auto" is the legacy one, then dynamo where legacy fails; with `fallback`, a
    dynamo failure retries with legacy. Returns the exporter used, why it replaced the first one tried,
    the opset and the exporters' wall time (s)."""
    start = time.perf_counter()
    first_try = "legacy" if exporter == "auto" else exporter
    try:
        _run_exporter(deploy, example, tmp, exporter=first_try, opset=opset, dynamic_batch=dynamic_batch)
        return first_try, None, opset, time.perf_counter() - start
    except Exception as exc:
        first = first_line(exc)
        if not (exporter == "auto" or (fallback and exporter == "dynamo")):
            hint = {
                "dynamo": "; retry with --exporter legacy (or --fallback)",
                "legacy": "; retry with --exporter auto",
            }
            raise ExportError(
                f"the {exporter} ONNX exporter failed: {type(exc).__name__}: {first}{hint[exporter]}"
            ) from exc
        reason = f"{type(exc).__name__}: {first}"
    second = "dynamo" if first_try == "legacy" else "legacy"
    opset = max(opset, DEFAULT_OPSET[second]) if second == "dynamo" else DEFAULT_OPSET[second]
    log.warning(
        "the %s exporter cannot export this model (%s); exporting with %s, opset %d", first_try, reason, second, opset
    )
    try:
        _run_exporter(deploy, example, tmp, exporter=second, opset=opset, dynamic_batch=dynamic_batch)
    except Exception as exc:
        first = first_line(exc)
        raise ExportError(f"neither ONNX exporter can export this model: {reason}; {second}: {first}") from exc
    return second, reason, opset, time.perf_counter() - start


def _checked_graph(tmp: Path, simplify: bool):
    """The exported graph after the full checker (and onnxslim, checked again), with our I/O names."""
    onnx_model = check_onnx(tmp)
    if simplify:
        onnxslim = require("onnxslim", purpose="simplifying ONNX models")
        onnx = require("onnx", purpose="saving ONNX models")
        with contextlib.redirect_stdout(io.StringIO()):
            onnx_model = onnxslim.slim(onnx_model)
        onnx.save(onnx_model, str(tmp))
        onnx_model = check_onnx(tmp)
    names = ([i.name for i in onnx_model.graph.input], [o.name for o in onnx_model.graph.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(f"exported graph has inputs/outputs {names}, expected ['{INPUT_NAME}'] / ['{OUTPUT_NAME}']")
    return onnx_model


def _verify(tmp: Path, onnx_model, reference, deploy, input_shape, batches: list[int], seed: int, exporter: str):
    """ONNX Runtime vs PyTorch at `batches`, and ONNX vs PyTorch MACs; the OnnxExport fields they fill."""
    session = ort_session(tmp)
    parity = _parity(session, reference, input_shape, batches, seed)
    worst = max(row["relative_error"] for row in parity)
    if worst > PARITY_TOLERANCE:
        raise ExportError(
            f"ONNX Runtime and PyTorch disagree: max error {worst:.2e} of the logit scale "
            f"(tolerance {PARITY_TOLERANCE:g}) with the {exporter} exporter"
        )
    onnx_cost = count_onnx_macs(onnx_model)
    torch_cost, zero_bias_adds = _check_macs(onnx_cost, deploy, input_shape)
    return {
        "parity": parity,
        "parity_tolerance": PARITY_TOLERANCE,
        "ort_threads": session.get_session_options().intra_op_num_threads,
        "macs": onnx_cost.macs,
        "params": onnx_cost.params,
        "torch_macs": torch_cost.macs,
        "torch_params": torch_cost.params,
        "zero_bias_adds_dropped": zero_bias_adds,
    }


def to_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    exporter: str = "auto",
    simplify: bool = True,
    fallback: bool = False,
    parity_batches: tuple[int, ...] | None = None,
    seed: int = 0,
) -> OnnxExport:
    """Export `model` (bypass and BN folded, on a copy) to `path` and verify it.

    `example_inputs` is one (N, C, H, W) batch. With `dynamic_batch` the batch dimension is symbolic.
    `exporter` is "legacy" (TorchScript, opset 17 by default), "dynamo" (opset >= 18, weights embedded)
    or "auto" (legacy, and dynamo where legacy cannot export the model, e.g. VGG/AlexNet below 224 px);
    with `fallback`, a dynamo failure retries with the legacy exporter. A replacement is logged once
    and recorded (`exporter`, `fallback_reason`). Checks: onnx.checker (full), ONNX Runtime vs PyTorch
    at two batch sizes (taken from `parity_batches`, else 1 and 3), and ONNX-counted MACs equal to
    PyTorch's (up to the adds of all-zero biases, which exporters drop). Raises ExportError.
    """
    opset = resolve_opset(exporter, opset)
    start, path = time.perf_counter(), Path(path)
    example, reference, deploy = _deploy_inputs(model, example_inputs, dynamic_batch)
    input_shape = tuple(int(s) for s in example.shape[1:])
    with _temporary_next_to(path) as tmp:
        used, reason, opset, export_s = _export(
            deploy, example, tmp, exporter=exporter, opset=opset, dynamic_batch=dynamic_batch, fallback=fallback
        )
        onnx_model = _checked_graph(tmp, simplify)
        batches = _parity_batches(example.shape[0], dynamic_batch, parity_batches)
        checks = _verify(tmp, onnx_model, reference, deploy, input_shape, batches, seed, used)
        give_default_permissions(tmp)
        os.replace(tmp, path)
    record = OnnxExport(
        path=str(path),
        exporter=used,
        requested_exporter=exporter,
        fallback_reason=reason,
        opset=opset,
        dynamic_batch=dynamic_batch,
        simplified=simplify,
        input_shape=list(input_shape),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        file_bytes=path.stat().st_size,
        export_s=round(export_s, 3),
        total_s=round(time.perf_counter() - start, 3),
        versions=_versions(),
        **checks,
    )
    _log_export(record)
    return record


def _log_export(record: OnnxExport) -> None:
    log.debug(
        "exported %s (%s exporter, opset %d, %.1f MB): parity %.1e, %s MACs",
        record.path,
        record.exporter,
        record.opset,
        record.file_bytes / 1e6,
        max(row["relative_error"] for row in record.parity),
        f"{record.macs:,}",
    )
