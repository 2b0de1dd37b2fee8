"""`lappdeploy export`: checked ONNX (and TensorRT engines, or trtexec.sh) from a run or checkpoint."""

from __future__ import annotations

import click

from lappdeploy.cli.common import config_file_option, dataclass_options, format_count, stdout_console
from lappdeploy.cli.model_source import SOURCE_OPTIONS, model_from_name, model_source_options
from lappdeploy.config import ExportConfig
from lappdeploy.errors import LappDeployError

__all__ = ["export_command"]


@click.command("export")
@click.argument("target", type=click.Path(), required=False)
@config_file_option
@dataclass_options(ExportConfig)
@model_source_options(model_option=True, data_dir=False)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Export directory [default: RUN_DIR/export, or export/ next to a checkpoint file].",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it is an earlier export directory.")
def export_command(target: str | None, out: str | None, force: bool, model_name: str | None, **fields) -> None:
    """Export the model of TARGET (a run directory or a model.pt checkpoint), or a dense model given with
    --model (and its weights with --init-from, no run needed), to a checked ONNX, and with --trt to a
    TensorRT engine.

    Every export verifies itself: onnx.checker (full), ONNX Runtime vs PyTorch at two batch sizes,
    MACs counted from the ONNX graph equal to PyTorch's, and TensorRT vs ONNX Runtime after a build.
    Results go to OUT/export.json. Without the tensorrt package, --trt writes OUT/trtexec.sh, the exact
    command to build the engine on the target device, and exits with code 3.

    \b
    Examples:
      lappdeploy export runs/r20
      lappdeploy export runs/r20 --exporter dynamo --batch 1,16,64 --out exports/r20-dynamo
      lappdeploy export runs/r20 --trt --precision fp16
      lappdeploy export runs/r20 --trt --precision int8 --calib-images 1024 --trt-version 8.6
      lappdeploy export --model resnet18 --init-from r18.pth --dataset fashion-mnist --out exports/r18-dense
    """
    from lappdeploy.export.run import export_run

    source = {name: fields.pop(name) for name in SOURCE_OPTIONS if name in fields and name != "data_dir"}
    config = ExportConfig(**fields)
    if (target is None) == (model_name is None):
        raise LappDeployError("give either TARGET (a run directory or model.pt) or --model SPEC, not both or neither")
    if model_name is None:
        _refuse_source_options(source)
        report = export_run(target, config, out=out, force=force)
    else:
        loaded, _ = model_from_name(model_name, data_dir=config.data_dir, **source)
        report = export_run(model_name, config, out=out, force=force, model=loaded)
    print_export(report)


def _refuse_source_options(source: dict) -> None:
    given = [name for name, value in source.items() if value not in (None, False)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise LappDeployError(f"{flag} describes a model given with --model; a run directory or model.pt has its own")


def print_export(report: dict) -> None:
    from rich.table import Table

    onnx = report["onnx"]
    table = Table(title=f"{report['model']} export", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [("source", report["source"])]
    if "parity" in onnx:
        worst = max(row["relative_error"] for row in onnx["parity"])
        rows += [
            ("ONNX", f"{onnx['path']} ({onnx['file_bytes'] / 1e6:.2f} MB, opset {onnx['opset']}, {onnx['exporter']})"),
            (
                "ORT parity",
                f"{worst:.1e} of the logit scale at batch {', '.join(str(r['batch']) for r in onnx['parity'])}",
            ),
            ("MACs / image", f"{format_count(onnx['macs'])} (ONNX graph = PyTorch)"),
            ("params", format_count(onnx["params"])),
        ]
    trt = report.get("tensorrt")
    if trt and trt.get("status") == "built":
        worst = max(row["relative_error"] for row in trt["parity"])
        rows += [
            ("engine", f"{trt['engine']} ({trt['engine_bytes'] / 1e6:.2f} MB, TensorRT {trt['trt_version']})"),
            ("precision", f"{trt['precision']}: {trt['precision_mode']}"),
            ("TRT parity", f"{worst:.1e} of the logit scale (tolerance {trt['parity_tolerance']:g})"),
        ]
    rows.append(("directory", report["out"]))
    for key, value in rows:
        table.add_row(key, value)
    stdout_console().print(table)
