"""`lappdeploy export` as a library call: a run directory or checkpoint in, an export directory out.

    OUT/model.onnx            checked, simplified, parity-tested ONNX (dynamic batch)
    OUT/export.json           what was exported and every check's numbers (exporter, opset, versions,
                              parity errors, file sizes, MACs/params counted from the ONNX, TensorRT build)
    OUT/model_<p>.engine      with --trt and TensorRT installed: the engine (+ layers_<p>.json, and the
                              Q/DQ ONNX of INT8 / the FP16 ONNX of 11.x it was built from)
    OUT/trtexec.sh            with --trt and no TensorRT: the command to build on the target (exit code 3)
    OUT/model.xml, model.bin  with --openvino: OpenVINO IR, parity-checked on its CPU plugin at fp32

Everything that can be wrong with the input is checked before anything is written; the files are
produced in a hidden staging directory next to OUT and moved into place only when every check passed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lappdeploy.config import ExportConfig
from lappdeploy.environment import package_version, versions
from lappdeploy.errors import (
    ExportError,
    LappDeployError,
    MissingDependencyError,
    RunDirError,
    TensorRTUnavailableError,
)
from lappdeploy.export.onnx_export import _parity_batches, check_onnx, to_onnx
from lappdeploy.export.openvino_ir import write_openvino_ir
from lappdeploy.export.precision import write_precision_onnx
from lappdeploy.export.tensorrt import (
    build_engine,
    check_precision,
    cuda_device_name,
    engine_parity,
    import_tensorrt,
    trt_family,
)
from lappdeploy.export.trt_recipes import FAMILIES, FP32_ONNX, TrtRecipe, trt_recipe
from lappdeploy.export.trtexec import AUTO, DEFAULT_FAMILY, trtexec_args, trtexec_script
from lappdeploy.io import atomic_write_json, atomic_write_text, can_create_in, give_default_permissions, read_json
from lappdeploy.models import checkpoint_in
from lappdeploy.optional import require
from lappdeploy.rundir import EXPORT, EXPORT_FILE, calibration_images, check_new_output, check_writable, run_method
from lappdeploy.surgery import LoadedModel, load_model, save_model
from lappdeploy.surgery.history import recorded_plans
from lappdeploy.surgery.plan import plan_id

__all__ = ["EXPORT_FORMAT", "export_run"]

log = logging.getLogger(__name__)

EXPORT_FORMAT = "lappdeploy.export"
TRTEXEC_SCRIPT = "trtexec.sh"


@dataclass(frozen=True)
class _Export:
    """One export, resolved and checked before anything is written."""

    config: ExportConfig
    checkpoint: Path | None  # None for a model given in memory (`model=`): its model.pt is written with the export
    out: Path
    loaded: LoadedModel
    input_shape: tuple[int, ...]  # per sample: C, H, W
    trt: Any  # the tensorrt module, or None (then trtexec.sh is written for `recipe.family`)
    recipe: TrtRecipe | None  # None without --trt
    calibration: list[np.ndarray] | None  # INT8: normalised float32 batches of training images


def export_run(
    target: str | os.PathLike[str],
    config: ExportConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    model: LoadedModel | None = None,
) -> dict[str, Any]:
    """Export the model of run directory or checkpoint `target` into `out` (default TARGET/export) and
    return the report (as written to export.json, plus "out": the directory). With `model` (a dense model
    built from a spec, `target` then names it) that model is exported, its model.pt written next to the ONNX
    (default out: exports/NAME). Raises TensorRTUnavailableError (exit code 3) after writing trtexec.sh when
    --trt is asked for and TensorRT is not installed."""
    if model is not None:
        export = _resolve_model(str(target), model, config, out, force=force)
    else:
        export = _resolve(Path(target).expanduser(), config, out, force=force)
    staging = _staging_dir(export.out)
    try:
        report = _stage(export, staging)
        _commit(staging, export.out, replace=config.onnx)
        log.info("export written to %s", export.out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        raise
    if export.recipe is not None and export.trt is None:
        raise TensorRTUnavailableError(
            f"the tensorrt Python package is not installed here, so no engine was built; wrote "
            f"{export.out / TRTEXEC_SCRIPT} for {_family_words(export.config.trt_version)}: copy {export.out} to "
            "the target and run `bash trtexec.sh` there (or install lappdeploy[trt] and re-run)"
        )
    return {**report, "out": str(export.out)}


def _family_words(trt_version: str | None) -> str:
    if trt_version == AUTO:
        return "TensorRT 8.5 to 11 (the script picks the family from trtexec's version)"
    return f"the TensorRT {trt_version or DEFAULT_FAMILY} family"


# --------------------------------------------------------------------------------------------------
# resolve: every check, no writes


def _default_out(target: Path, checkpoint: Path) -> Path:
    return (target if target.is_dir() else checkpoint.parent) / "export"


def _check_out(out: Path, *, force: bool, reuse_onnx: bool) -> Path:
    """Validate the export directory without writing: a new one, an earlier export with --force, or (for
    --no-onnx) an earlier export holding model.onnx. The staging directory is made next to OUT, so OUT's
    parent must be writable too."""
    if reuse_onnx:
        out = check_writable(out)
        if not (out / FP32_ONNX).is_file():
            raise RunDirError(f"--no-onnx builds from {out / FP32_ONNX}, which does not exist; export it first")
    else:
        out = check_new_output(out, EXPORT, force=force)
    if out.exists() and not can_create_in(out.parent):
        raise RunDirError(f"cannot write to {out}: {out.parent} is not a writable directory; choose another --out")
    return out


def _resolve_tensorrt(config: ExportConfig) -> tuple[Any, TrtRecipe]:
    """The installed tensorrt module (or None) and the recipe of its family, or of the --trt-version family
    trtexec.sh is written for, after checking this GPU can build the precision."""
    try:
        trt = import_tensorrt()
    except MissingDependencyError:
        family = config.trt_version or DEFAULT_FAMILY
        if family != AUTO:
            trt_recipe(family, config.precision).cuda_graph_flags(config.cuda_graph)  # 11 has no --no-cuda-graph
        # auto: every family's INT8 is the same Q/DQ graph, so any recipe says what needs calibrating
        return None, trt_recipe(DEFAULT_FAMILY if family == AUTO else family, config.precision)
    family = trt_family(trt.__version__)
    _, capability = cuda_device_name()
    check_precision(trt, config.precision, capability=capability)
    if config.trt_version not in (None, AUTO, family):
        raise ExportError(
            f"--trt-version {config.trt_version} names another family than the installed TensorRT "
            f"{trt.__version__}; drop it (it is for trtexec.sh where TensorRT is not installed)"
        )
    return trt, trt_recipe(family, config.precision)


def _resolve(target: Path, config: ExportConfig, out: str | os.PathLike[str] | None, *, force: bool) -> _Export:
    if not target.exists():
        raise LappDeployError(f"{target} does not exist; expected a run directory or a model.pt checkpoint")
    checkpoint = checkpoint_in(target)
    out = _check_out(
        Path(out).expanduser() if out is not None else _default_out(target, checkpoint),
        force=force,
        reuse_onnx=not config.onnx,
    )
    loaded = load_model(checkpoint)
    if config.openvino:
        require("openvino", purpose="export --openvino")
    trt, recipe = _resolve_tensorrt(config) if config.trt else (None, None)
    calibration = None
    if recipe is not None and recipe.needs_calibration:
        calibration = calibration_images(target, loaded.card, config.calib_images, data_dir=config.data_dir)
    if not config.onnx:
        check_onnx(out / FP32_ONNX)  # a corrupt or foreign file stops here
    input_shape = tuple(int(s) for s in loaded.card.input_shape)
    return _Export(config, checkpoint, out, loaded, input_shape, trt, recipe, calibration)


def _resolve_model(name: str, loaded: LoadedModel, config: ExportConfig, out, *, force: bool) -> _Export:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    out = _check_out(Path(out).expanduser() if out is not None else Path("exports") / slug, force=force,
                     reuse_onnx=not config.onnx)  # fmt: skip
    if config.openvino:
        require("openvino", purpose="export --openvino")
    trt, recipe = _resolve_tensorrt(config) if config.trt else (None, None)
    calibration = None
    if recipe is not None and recipe.needs_calibration:
        calibration = calibration_images(out, loaded.card, config.calib_images, data_dir=config.data_dir)
    if not config.onnx:
        check_onnx(out / FP32_ONNX)
    input_shape = tuple(int(s) for s in loaded.card.input_shape)
    return _Export(config, None, out, loaded, input_shape, trt, recipe, calibration)


# --------------------------------------------------------------------------------------------------
# stage: every file, in a hidden directory next to OUT


def _staging_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    give_default_permissions(staging)
    return staging


def _stage(export: _Export, staging: Path) -> dict[str, Any]:
    """Write the ONNX, the engine or trtexec.sh, and export.json into `staging`; returns the report."""
    onnx_section, onnx_path = _stage_onnx(export, staging)
    openvino_section = _stage_openvino(export, staging, onnx_path) if export.config.openvino else None
    trt_section = None
    if export.recipe is not None and export.trt is not None:
        trt_section = _stage_engine(export, staging, onnx_path)
    elif export.recipe is not None:
        trt_section = _stage_trtexec_script(export, staging, onnx_path)
    report = _report(export, onnx_section, trt_section)
    report["openvino"] = openvino_section
    if export.checkpoint is None:  # a model given in memory: the export carries its portable checkpoint
        save_model(export.loaded.model, staging / "model.pt", export.loaded.card)
    atomic_write_json(staging / EXPORT_FILE, report)
    return report


def _stage_onnx(export: _Export, staging: Path) -> tuple[dict[str, Any], Path]:
    """(export.json's onnx section, the fp32 ONNX to build from): a fresh export, or with --no-onnx the
    earlier one in OUT."""
    config = export.config
    if not config.onnx:
        previous = read_json(export.out / EXPORT_FILE) if (export.out / EXPORT_FILE).is_file() else {}
        section = previous.get("onnx", {"path": FP32_ONNX, "note": "reused from an earlier export"})
        return section, export.out / FP32_ONNX
    example = torch.randn((2, *export.input_shape), generator=torch.Generator().manual_seed(config.seed))
    record = to_onnx(
        export.loaded.model,
        example,
        staging / FP32_ONNX,
        opset=config.opset,
        dynamic_batch=True,
        exporter=config.exporter,
        simplify=config.simplify,
        fallback=config.fallback,
        parity_batches=config.batch,
        seed=config.seed,
    )
    return {**record.to_dict(), "path": FP32_ONNX}, staging / FP32_ONNX


def _stage_openvino(export: _Export, staging: Path, onnx_path: Path) -> dict[str, Any]:
    """OpenVINO IR converted from the fp32 ONNX and parity-checked on the ONNX check's batch sizes."""
    batches = _parity_batches(2, True, export.config.batch)
    return write_openvino_ir(onnx_path, staging, export.loaded.model, export.input_shape, batches, export.config.seed)


def _stage_engine(export: _Export, staging: Path, onnx_path: Path) -> dict[str, Any]:
    config = export.config
    build = build_engine(
        onnx_path,
        staging,
        precision=config.precision,
        batches=config.batch,
        input_shape=export.input_shape,
        workspace_mib=config.workspace_mib,
        opt_level=config.opt_level,
        calibration=export.calibration,
        timing_cache_dir=config.timing_cache_dir,
        trt=export.trt,
        tf32=config.tf32,
    )
    profile = (build.profile["min"], build.profile["max"])
    build.parity = engine_parity(
        staging / build.engine,
        onnx_path,
        export.input_shape,
        profile,
        config.precision,
        seed=config.seed,
        trt=export.trt,
    )
    build.parity_tolerance = export.recipe.parity_tolerance
    return {"status": "built", **build.to_dict()}


def _stage_trtexec_script(export: _Export, staging: Path, onnx_path: Path) -> dict[str, Any]:
    """trtexec.sh for the target, with the FP16 / Q/DQ graph it reads where the recipe (of any family,
    for --trt-version auto) needs one."""
    config, family = export.config, export.config.trt_version or DEFAULT_FAMILY
    families = FAMILIES if family == AUTO else (family,)
    reduced = {}
    for variant in dict.fromkeys(trt_recipe(f, config.precision).trtexec_onnx for f in families):
        if variant != FP32_ONNX:
            reduced[variant] = write_precision_onnx(variant, onnx_path, staging / variant, export.calibration)
    options = {
        "input_shape": export.input_shape,
        "batches": config.batch,
        "workspace_mib": config.workspace_mib,
        "opt_level": config.opt_level,
        "cuda_graph": config.cuda_graph,
        "tf32": config.tf32,
    }
    script = trtexec_script(family, config.precision, model=export.loaded.card.architecture, **options)
    atomic_write_text(staging / TRTEXEC_SCRIPT, script)
    (staging / TRTEXEC_SCRIPT).chmod(0o755)
    args = {f: trtexec_args(f, config.precision, **options) for f in families if config.cuda_graph or f != "11"}
    return {
        "status": "trtexec.sh written (TensorRT Python package not installed here)",
        "family": family,
        "precision": config.precision,
        "script": TRTEXEC_SCRIPT,
        "cuda_graph": config.cuda_graph,
        "onnx": {f: trt_recipe(f, config.precision).trtexec_onnx for f in families},
        "trtexec_args": args[family] if family != AUTO else args,
        "reduced_onnx": reduced or None,
        "calibration_images": next(
            (r["calibration_images"] for r in reduced.values() if "calibration_images" in r), None
        ),
    }


def _versions(trt_version: str | None) -> dict[str, str | None]:
    return {
        **versions(),
        **{name: package_version(name) for name in ("onnx", "onnxruntime", "onnxslim", "onnxscript")},
        "tensorrt": trt_version,
    }


def _report(export: _Export, onnx_section: dict[str, Any], trt_section: dict[str, Any] | None) -> dict[str, Any]:
    card = export.loaded.card
    init = card.extra.get("init_from") or {}
    return {
        "format": EXPORT_FORMAT,
        "source": str(export.checkpoint)
        if export.checkpoint
        else f"{card.architecture}, {init.get('source', 'random')} weights",
        "model": card.architecture,
        "plan_id": plan_id(recorded_plans(export.loaded.model)),
        "method": run_method(export.checkpoint.parent) if export.checkpoint else None,
        "dataset": card.dataset,
        "input_shape": list(export.input_shape),
        "mean": list(card.mean),
        "std": list(card.std),
        "class_names": card.class_names,
        "config": export.config.to_dict(),
        "onnx": onnx_section,
        "tensorrt": trt_section,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(str(export.trt.__version__) if export.trt is not None else None),
    }


# --------------------------------------------------------------------------------------------------
# commit


def _commit(staging: Path, out: Path, *, replace: bool) -> None:
    """Move the staged files into `out`: as a whole directory (a new export, or --force), or file by file
    into an existing export (--no-onnx)."""
    if not replace:
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        staging.rmdir()
        return
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
