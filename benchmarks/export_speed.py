"""ONNX export time and file size on full-size networks: dense vs a uniform 50%-MACs plan, legacy vs
dynamo exporter, on the CPU at 224x224. Export time is the exporter alone; "checked" adds onnx.checker,
onnxslim, ONNX Runtime parity at two batch sizes and the ONNX MACs count. Weights are random (the
numbers do not depend on them); BN is folded before export, as `lappdeploy export` does.

    python benchmarks/export_speed.py
    python benchmarks/export_speed.py --models resnet50 --exporters legacy --size 160
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from lappdeploy.environment import write_benchmark
from lappdeploy.export import to_onnx
from lappdeploy.models import create_model
from lappdeploy.surgery import analyze, fold_bn_, remove_channels_, uniform_plan


def prepared(name: str, size: int, macs_ratio: float | None) -> tuple[torch.nn.Module, torch.Tensor]:
    """`name` with BN folded, pruned by a uniform plan at `macs_ratio` of the dense MACs (None: dense)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).eval()
    x = torch.randn(2, 3, size, size)
    groups = analyze(model, x)
    if macs_ratio is not None:
        remove_channels_(model, uniform_plan(groups, macs_ratio), x, groups=groups)
    fold_bn_(model, pairs=list(groups.bn_after_conv.items()))  # once here, not once per exporter
    return model, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet50,mobilenet_v2")
    parser.add_argument("--exporters", default="legacy,dynamo")
    parser.add_argument("--size", type=int, default=224, help="input height and width (px)")
    parser.add_argument("--macs-ratio", type=float, default=0.5)
    parser.add_argument("--out", default="benchmarks/results/export_speed.json")
    args = parser.parse_args()

    from rich.table import Table

    from lappdeploy.cli.common import stdout_console

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            for plan, ratio in (("dense", None), (f"uniform {args.macs_ratio:g}", args.macs_ratio)):
                model, x = prepared(name, args.size, ratio)
                for exporter in args.exporters.split(","):
                    record = to_onnx(model, x, Path(scratch) / "model.onnx", exporter=exporter)
                    rows.append(
                        {
                            "model": name,
                            "plan": plan,
                            "exporter": exporter,
                            "opset": record.opset,
                            "input": [3, args.size, args.size],
                            "export_s": record.export_s,
                            "checked_s": record.total_s,
                            "file_mb": round(record.file_bytes / 1e6, 3),
                            "macs": record.macs,
                            "params": record.params,
                            "parity": max(r["relative_error"] for r in record.parity),
                        }
                    )
                    print(rows[-1], flush=True)
    title = f"ONNX export on the CPU, {args.size}x{args.size} ({torch.get_num_threads()} threads)"
    table = Table(title=title)
    for column in ("model", "plan", "exporter"):
        table.add_column(column)
    for column in ("opset", "export s", "checked s", "file MB", "GMACs", "M params", "parity"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            r["model"],
            r["plan"],
            r["exporter"],
            str(r["opset"]),
            f"{r['export_s']:.2f}",
            f"{r['checked_s']:.2f}",
            f"{r['file_mb']:.1f}",
            f"{r['macs'] / 1e9:.3f}",
            f"{r['params'] / 1e6:.2f}",
            f"{r['parity']:.1e}",
        )
    stdout_console().print(table)
    write_benchmark("export_speed", rows, args.out)


if __name__ == "__main__":
    main()
