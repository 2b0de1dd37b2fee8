"""`lappdeploy export`: checked ONNX (and TensorRT engines, or trtexec.sh) from a run or checkpoint."""

from __future__ import annotations

import click

from lappdeploy.cli.common import config_file_option, dataclass_options, format_count, stdout_console
from lappdeploy.config import ExportConfig

__all__ = ["export_command"]


@click.command("export")
@click.argument("target", type=click.Path())
@config_file_option
@dataclass_options(ExportConfig)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False),
    default=None,
    help="Export directory [default: RUN_DIR/export, or export/ next to a checkpoint file].",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it is an earlier export directory.")
def export_command(target: str, out: str | None, force: bool, **fields) -> None:
    """Export the model of TARGET (a run directory or a model.pt checkpoint) to a checked ONNX, and with
    --trt to a TensorRT engine.

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
    """
    from lappdeploy.export.run import export_run

    config = ExportConfig(**fields)
    report = export_run(target, config, out=out, force=force)
    print_export(report)


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
