"""`lappdeploy export` as a library call: a run directory or checkpoint in, an export directory out.

    OUT/model.onnx            checked, simplified, parity-tested ONNX (dynamic batch)
    OUT/export.json           what was exported and every check's numbers (exporter, opset, versions,
                              parity errors, file sizes, MACs/params counted from the ONNX, TensorRT build)
    OUT/model_<p>.engine      with --trt and TensorRT installed: the engine (+ layers_<p>.json, and for
                              11.x the FP16 / Q/DQ ONNX it was built from; calibration.cache for 8.6/10 INT8)
    OUT/trtexec.sh            with --trt and no TensorRT: the command to build on the target (exit code 3)

Everything that can be wrong with the input is checked before anything is written; the files are
produced in a hidden staging directory next to OUT and moved into place only when every check passed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lappdeploy.config import ExportConfig
from lappdeploy.errors import (
    ExportError,
    LappDeployError,
    MissingDependencyError,
    RunDirError,
    TensorRTUnavailableError,
)
from lappdeploy.io import atomic_write_json, atomic_write_text, can_create_in, give_default_permissions, read_json
from lappdeploy.rundir import EXPORT, calibration_images, check_new_output, check_writable, run_method

__all__ = ["EXPORT_FORMAT", "export_run"]

log = logging.getLogger(__name__)

EXPORT_FORMAT = "lappdeploy.export"


def _default_out(target: Path, checkpoint: Path) -> Path:
    return (target if target.is_dir() else checkpoint.parent) / "export"


def _check_out(out: Path, *, force: bool, reuse_onnx: bool) -> Path:
    """Validate the export directory without writing: a new one, an earlier export with --force, or (for
    --no-onnx) an earlier export holding model.onnx. The staging directory is made next to OUT, so OUT's
    parent must be writable too."""
    if reuse_onnx:
        out = check_writable(out)
        if not (out / "model.onnx").is_file():
            raise RunDirError(f"--no-onnx builds from {out / 'model.onnx'}, which does not exist; export it first")
    else:
        out = check_new_output(out, EXPORT, force=force)
    if out.exists() and not can_create_in(out.parent):
        raise RunDirError(f"cannot write to {out}: {out.parent} is not a writable directory; choose another --out")
    return out


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


def _versions(trt_version: str | None) -> dict[str, str | None]:
    from lappdeploy.environment import package_version, versions

    return {
        **versions(),
        **{name: package_version(name) for name in ("onnx", "onnxruntime", "onnxslim", "onnxscript")},
        "tensorrt": trt_version,
    }


def export_run(
    target: str | os.PathLike[str],
    config: ExportConfig,
    *,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export the model of run directory or checkpoint `target` into `out` (default TARGET/export) and
    return the report (as written to export.json, plus "out": the directory). Raises
    TensorRTUnavailableError (exit code 3) after writing trtexec.sh when --trt is asked for and TensorRT is
    not installed."""
    import torch

    from lappdeploy.export.onnx_export import check_onnx, to_onnx
    from lappdeploy.export.tensorrt import (
        TOLERANCE,
        build_engine,
        check_precision,
        cuda_device_name,
        engine_parity,
        import_tensorrt,
        trt_family,
    )
    from lappdeploy.export.trtexec import DEFAULT_FAMILY, trtexec_args, trtexec_script
    from lappdeploy.models import checkpoint_in, load_model
    from lappdeploy.surgery.history import recorded_plans
    from lappdeploy.surgery.plan import plan_id

    # 1. validate everything (no writes)
    target = Path(target).expanduser()
    if not target.exists():
        raise LappDeployError(f"{target} does not exist; expected a run directory or a model.pt checkpoint")
    checkpoint = checkpoint_in(target)
    out = Path(out).expanduser() if out is not None else _default_out(target, checkpoint)
    out = _check_out(out, force=force, reuse_onnx=not config.onnx)
    loaded = load_model(checkpoint)
    card = loaded.card
    input_shape = tuple(int(s) for s in card.input_shape)

    trt = None
    trt_version = None
    if config.trt:
        try:
            trt = import_tensorrt()
        except MissingDependencyError:
            trt = None
        if trt is not None:
            trt_version = str(trt.__version__)
            family = trt_family(trt_version)
            _, capability = cuda_device_name()
            check_precision(trt, config.precision, capability=capability)
            if config.trt_version and config.trt_version != family:
                raise ExportError(
                    f"--trt-version {config.trt_version} names another family than the installed TensorRT "
                    f"{trt_version}; drop it (it is for trtexec.sh where TensorRT is not installed)"
                )
        else:
            family = config.trt_version or DEFAULT_FAMILY
    calibration = None
    needs_calibration = config.trt and config.precision == "int8"
    if needs_calibration:
        calibration = calibration_images(target, card, config.calib_images, data_dir=config.data_dir)
    if not config.onnx:
        check_onnx(out / "model.onnx")  # a corrupt or foreign file stops here

    # 2. produce everything in a staging directory
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    give_default_permissions(staging)
    report: dict[str, Any] = {}
    try:
        if config.onnx:
            generator = torch.Generator().manual_seed(config.seed)
            example = torch.randn((2, *input_shape), generator=generator)
            record = to_onnx(
                loaded.model,
                example,
                staging / "model.onnx",
                opset=config.opset,
                dynamic_batch=True,
                exporter=config.exporter,
                simplify=config.simplify,
                fallback=config.fallback,
                parity_batches=config.batch,
                seed=config.seed,
            )
            onnx_section = {**record.to_dict(), "path": "model.onnx"}
            onnx_path = staging / "model.onnx"
        else:
            previous = read_json(out / "export.json") if (out / "export.json").is_file() else {}
            onnx_section = previous.get("onnx", {"path": "model.onnx", "note": "reused from an earlier export"})
            onnx_path = out / "model.onnx"

        trt_section = None
        if config.trt and trt is not None:
            if (out / "calibration.cache").is_file() and not config.onnx:
                shutil.copy2(out / "calibration.cache", staging / "calibration.cache")  # reuse its scales
            build = build_engine(
                onnx_path,
                staging,
                precision=config.precision,
                batches=config.batch,
                input_shape=input_shape,
                workspace_mib=config.workspace_mib,
                opt_level=config.opt_level,
                calibration=calibration,
                timing_cache_dir=config.timing_cache_dir,
                trt=trt,
            )
            profile = (build.profile["min"], build.profile["max"])
            build.parity = engine_parity(
                staging / build.engine, onnx_path, input_shape, profile, config.precision, seed=config.seed, trt=trt
            )
            build.parity_tolerance = TOLERANCE[config.precision]
            trt_section = {"status": "built", **build.to_dict()}
        elif config.trt:
            from lappdeploy.export.precision import to_fp16_onnx, to_int8_qdq_onnx
            from lappdeploy.export.trtexec import onnx_for

            needed = onnx_for(family, config.precision)
            calibrated = None
            if needed == "model_fp16.onnx":
                to_fp16_onnx(onnx_path, staging / needed)
            elif needed == "model_int8_qdq.onnx":
                calibrated = to_int8_qdq_onnx(onnx_path, staging / needed, calibration)
            options = {
                "input_shape": input_shape,
                "batches": config.batch,
                "workspace_mib": config.workspace_mib,
                "opt_level": config.opt_level,
            }
            script = trtexec_script(family, config.precision, model=card.architecture, **options)
            atomic_write_text(staging / "trtexec.sh", script)
            (staging / "trtexec.sh").chmod(0o755)
            trt_section = {
                "status": "trtexec.sh written (TensorRT Python package not installed here)",
                "family": family,
                "precision": config.precision,
                "script": "trtexec.sh",
                "onnx": needed,
                "trtexec_args": trtexec_args(family, config.precision, **options),
                "calibration_images": calibrated,
            }

        report = {
            "format": EXPORT_FORMAT,
            "source": str(checkpoint),
            "model": card.architecture,
            "plan_id": plan_id(recorded_plans(loaded.model)),
            "method": run_method(checkpoint.parent),
            "dataset": card.dataset,
            "input_shape": list(input_shape),
            "mean": list(card.mean),
            "std": list(card.std),
            "class_names": card.class_names,
            "config": config.to_dict(),
            "onnx": onnx_section,
            "tensorrt": trt_section,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(trt_version),
        }
        atomic_write_json(staging / "export.json", report)
        _commit(staging, out, replace=config.onnx)
        log.info("export written to %s", out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        raise

    if config.trt and trt is None:
        raise TensorRTUnavailableError(
            f"the tensorrt Python package is not installed here, so no engine was built; wrote {out / 'trtexec.sh'} "
            f"for the TensorRT {family} family: copy {out} to the target and run `bash trtexec.sh` there "
            "(or install lappdeploy[trt] and re-run)"
        )
    return {**report, "out": str(out)}
